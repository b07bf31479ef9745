"""`sandbox sweep`: an Optuna study over real runs (tiny, 10 steps) that resumes, runs
trials side by side without duplicates, and writes trials.csv / best.toml / sweep.png;
simulated trials with the grid sampler and a failing trial; the pruner stopping a run;
one line per problem in SWEEP.toml."""

import csv
import json
import subprocess
import sys
import time

import pytest

from sandbox.cli import main
from tests.helpers.cli import one_line

optuna = pytest.importorskip("optuna")

TINY = """[model]
preset = "tiny"
[cluster]
preset = "localhost"
[parallel]
dp = 1
global_batch = 8
micro_batch = 2
[train]
steps = 10
"""
SWEEP = """plan = "tiny.toml"
objective = "val_loss"
sampler = "random"
pruner = "none"
seed = 3
[space]
"train.lr" = { low = 1e-4, high = 1e-2, log = true }
"parallel.micro_batch" = [1, 2, 4]
"""


def _overlap(trials) -> int:
    """Most trials running at one instant."""
    edges = sorted([(t.datetime_start, 1) for t in trials] +
                   [(t.datetime_complete, -1) for t in trials], key=lambda e: (e[0], e[1]))
    most = now = 0
    for _, d in edges:
        now += d
        most = max(most, now)
    return most


def test_random_sweep_of_tiny_resumes_with_two_workers(tmp_path, cli):
    (tmp_path / "tiny.toml").write_text(TINY)
    (tmp_path / "sweep.toml").write_text(SWEEP)
    out = tmp_path / "out"
    first = cli("sweep", str(tmp_path / "sweep.toml"), "--out", str(out), "--trials", "4",
                "--workers", "2", timeout=300)
    assert first.returncode == 0, first.stderr
    for name in ("study.db", "trials.csv", "best.toml", "sweep.png"):
        assert (out / name).stat().st_size > 0, name
    url = f"sqlite:///{out / 'study.db'}"
    study = optuna.load_study(study_name="sweep", storage=url)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(done) == 4
    assert _overlap(done) == 2  # two at a time, never three
    second = cli("sweep", str(tmp_path / "sweep.toml"), "--out", str(out), "--trials", "2",
                 "--workers", "2", "--json", timeout=300)
    assert second.returncode == 0, second.stderr
    study = optuna.load_study(study_name="sweep", storage=url)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(done) == 6 and json.loads(second.stdout)["complete"] == 6
    assert sorted(t.number for t in done) == list(range(6))
    params = {(t.params["train.lr"], t.params["parallel.micro_batch"]) for t in done}
    assert len(params) == 6  # the resumed sampler drew new values, no trial ran twice
    for t in done:  # each trial is its own run, and its value is that run's eval loss
        summary = json.loads((out / "trials" / str(t.number) / "summary.json").read_text())
        assert t.value == pytest.approx(summary["eval_loss"])
        assert summary["parallel"]["micro_batch"] == t.params["parallel.micro_batch"]
    with open(out / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["number"]) for r in rows] == list(range(6))
    best = min(done, key=lambda t: t.value)
    assert float(min(rows, key=lambda r: float(r["val_loss"]))["val_loss"]) == pytest.approx(
        best.value)
    info = cli("info", str(out / "best.toml"), "--json")
    assert info.returncode == 0, info.stderr
    import sandbox

    plan = sandbox.load(out / "best.toml")
    assert plan.train.lr == pytest.approx(best.params["train.lr"])
    assert plan.parallel.micro_batch == best.params["parallel.micro_batch"]


def test_simulated_grid_sweep_records_a_failed_trial(tmp_path, capsys):
    (tmp_path / "tiny.toml").write_text(TINY)
    (tmp_path / "sweep.toml").write_text(
        'plan = "tiny.toml"\nmode = "simulate"\nobjective = "tokens_per_s"\n'
        'sampler = "grid"\n[space]\n"parallel.micro_batch" = [1, 3, 4]\n')
    out = tmp_path / "out"
    assert main(["sweep", str(tmp_path / "sweep.toml"), "--out", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert (res["complete"], res["failed"]) == (2, 1)  # 3 does not divide 8 sequences
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{out / 'study.db'}")
    assert study.direction.name == "MAXIMIZE"
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    assert failed[0].params["parallel.micro_batch"] == 3
    assert "micro_batch" in failed[0].user_attrs["error"]
    for t in study.trials:
        if t.state.name == "COMPLETE":
            sim = json.loads((out / "trials" / str(t.number) / "simulate.json").read_text())
            assert t.value == pytest.approx(sim["tokens_per_s"])
    # the grid is spent: another call runs nothing and keeps the files
    assert main(["sweep", str(tmp_path / "sweep.toml"), "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ran_now"] == 0


def test_pruner_stops_a_worse_run(tmp_path):
    """`watch` feeds each step's loss to the pruner and stops the process it prunes."""
    from sandbox.sweep_trial import watch

    study = optuna.create_study(pruner=optuna.pruners.MedianPruner(n_startup_trials=1))
    good = study.ask()
    for step in range(1, 6):
        good.report(1.0, step)
    study.tell(good, 1.0)
    metrics = tmp_path / "metrics.jsonl"
    writer = ("import json, sys, time\n"
              "for s in range(1, 200):\n"
              "    open(sys.argv[1], 'a').write(json.dumps({'step': s, 'loss': 9.0}) + '\\n')\n"
              "    time.sleep(0.1)\n")
    proc = subprocess.Popen([sys.executable, "-c", writer, str(metrics)],
                            start_new_session=True)
    trial = study.ask()
    start = time.perf_counter()
    with pytest.raises(optuna.TrialPruned):
        watch(proc, metrics, trial)
    assert proc.poll() is not None and time.perf_counter() - start < 15
    assert trial.storage.get_trial(trial._trial_id).intermediate_values


@pytest.mark.parametrize("text, words", [
    ('objective = "val_loss"\n[space]\n"train.lr" = [1e-3]\n', ["plan: missing"]),
    ('plan = "tiny.toml"\nobjective = "val_los"\n[space]\n"train.lr" = [1e-3]\n',
     ["objective", "val_loss"]),
    ('plan = "tiny.toml"\nobjective = "breakdown_s.compute"\n[space]\n"train.lr" = [1e-3]\n',
     ["objective", "mode = \"simulate\""]),
    ('plan = "tiny.toml"\nobjective = "val_loss"\nsampler = "bayes"\n[space]\n'
     '"train.lr" = [1e-3]\n', ["sampler", "grid, random, tpe"]),
    ('plan = "tiny.toml"\nobjective = "val_loss"\n[space]\n"train.lrr" = [1e-3]\n',
     ["space.train.lrr", "unknown plan field", "'lr'"]),
    ('plan = "tiny.toml"\nobjective = "val_loss"\n[space]\n'
     '"train.lr" = { low = 1e-2, high = 1e-4 }\n', ["space.train.lr", "below"]),
    ('plan = "tiny.toml"\nobjective = "val_loss"\n[space]\n'
     '"train.lr" = { low = 0.0, high = 1.0, log = true }\n', ["space.train.lr", "log"]),
    ('plan = "tiny.toml"\nobjective = "val_loss"\nsampler = "grid"\n[space]\n'
     '"train.lr" = { low = 1e-4, high = 1e-2 }\n', ["space.train.lr", "grid"]),
    ('plan = "tiny.toml"\nobjective = "val_loss"\n', ["space: missing"]),
    ('plan = "tiny.toml"\nobjective = "val_loss"\ntrails = 3\n[space]\n"train.lr" = [1e-3]\n',
     ["trails", "trials"]),
    ('plan = "tiny.toml"\nobjective = "val_loss"\n[space\n', ["malformed TOML"]),
    ('plan = "nope.toml"\nobjective = "val_loss"\n[space]\n"train.lr" = [1e-3]\n',
     ["nope.toml"]),
])
def test_bad_sweep_file_is_one_line(tmp_path, capsys, text, words):
    (tmp_path / "tiny.toml").write_text(TINY)
    (tmp_path / "sweep.toml").write_text(text)
    code = main(["sweep", str(tmp_path / "sweep.toml"), "--out", str(tmp_path / "out")])
    one_line(capsys, code, *words)
    assert not (tmp_path / "out" / "study.db").exists()
