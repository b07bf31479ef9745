"""`sandbox run` end to end on CPU (gloo, tiny preset): contract files, resume,
failure injection, and bad input that leaves earlier runs untouched."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers.runs import PLAN, losses, write_plan

from runtime import checkpoint as ckpt
from runtime.launch import run
from sandbox.errors import SandboxError


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A straight 12-step run and a run stopped after 6 steps then resumed."""
    tmp = tmp_path_factory.mktemp("runs")
    plan = write_plan(tmp / "plan.toml")
    straight = run(plan_of(plan), tmp / "straight", progress=False)
    half = tmp / "half"
    run(plan_of(plan), half, steps=6, progress=False)
    half_losses = losses(half)
    hashes_after_6 = tree_hashes(half / "checkpoints")
    resumed = run(plan_of(plan), half, resume=True, progress=False)
    return {"tmp": tmp, "plan": plan, "straight": straight, "half": half,
            "half_losses": half_losses, "hashes_after_6": hashes_after_6, "resumed": resumed}


def plan_of(path: Path):
    import sandbox

    return sandbox.load(path)


def test_run_writes_the_contract_files(runs):
    out = runs["straight"].out
    summary = json.loads((out / "summary.json").read_text())
    for key in ("world_size", "step_time_s", "tokens_per_s", "mfu", "peak_mem_gb",
                "final_loss", "device", "steps", "precision", "torch", "plan"):
        assert key in summary, key
    assert summary["world_size"] == 1 and summary["device"] == "cpu (gloo) x1"
    assert summary["steps"] == 12 and summary["precision"] == "fp32"
    assert 0 < summary["mfu"] < 1 and summary["peak_mem_gb"] > 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 13))
    for r in rows:
        for key in ("step", "loss", "step_time_s", "tokens_per_s", "mem_gb", "lr", "grad_norm"):
            assert isinstance(r[key], (int, float)), key
        assert r["tokens_per_s"] == pytest.approx(8 * 64 / r["step_time_s"])
    assert "eval_loss" in rows[5] and "eval_loss" in rows[11] and "eval_loss" not in rows[0]
    assert summary["final_loss"] == rows[-1]["loss"]
    first, last = rows[0]["loss"], sum(r["loss"] for r in rows[-3:]) / 3
    assert last < first - 0.3  # it learns
    times = sorted(r["step_time_s"] for r in rows[2:])
    assert summary["step_time_s"] == pytest.approx((times[4] + times[5]) / 2)  # median
    from sandbox.counts import model_flops_per_step

    flops = model_flops_per_step(plan_of(out / "plan.toml").model, 8)
    assert summary["flops_per_step"] == flops
    assert summary["mfu"] == pytest.approx(
        flops / (summary["step_time_s"] * summary["peak_flops_per_device"]))
    assert (out / "plan.toml").is_file() and "@@progress" not in (out / "train.log").read_text()
    complete = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert complete == [f"step_{s:08d}" for s in (3, 6, 9, 12)]
    df = runs["straight"].metrics
    assert list(df["step"]) == list(range(1, 13))
    assert runs["straight"].to_dict() == summary
    assert "<table" in runs["straight"]._repr_html_()
    import matplotlib

    matplotlib.use("Agg")
    ax = runs["straight"].plot()
    train_line = ax.get_lines()[0]
    assert list(train_line.get_ydata()) == [r["loss"] for r in rows]


def test_resume_logs_the_same_losses_once(runs):
    straight = losses(runs["straight"].out)
    resumed = losses(runs["half"])
    assert [s for s, _ in runs["half_losses"]] == list(range(1, 7))
    assert [s for s, _ in resumed] == list(range(1, 13))  # each step once
    for (s, a), (_, b) in zip(straight, resumed, strict=True):
        assert abs(a - b) < 1e-5, (s, a, b)
    assert runs["resumed"].to_dict()["resumed_from_step"] == 6
    # the checkpoints written before the resume are still there, unchanged
    after = tree_hashes(runs["half"] / "checkpoints")
    assert all(after[k] == v for k, v in runs["hashes_after_6"].items())


def test_full_model_state_loads_into_one_gpt(runs):
    import sandbox
    from runtime.model import build_model

    plan = sandbox.load(runs["straight"].out / "plan.toml")
    found = ckpt.latest_complete(runs["straight"].out)
    assert found.name == "step_00000012"
    state = ckpt.load_full_model_state(found)
    model = build_model(plan.model, seed=123)
    model.load_state_dict(state, strict=True)
    first = ckpt.load_full_model_state(found.parent / "step_00000003")
    assert not torch.equal(first["layers.0.attention.wq.weight"],
                           state["layers.0.attention.wq.weight"])


def _assert_one_line_failure(proc, *needles):
    assert proc.returncode != 0
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in err[0], err[0]


def test_bad_input_is_one_line_and_touches_nothing(runs, cli, tmp_path):
    half = runs["half"]
    before = tree_hashes(half)
    # an existing run without --resume
    p = cli("run", str(runs["plan"]), "--out", str(half), "--steps", "2")
    _assert_one_line_failure(p, "already holds a run", "--resume")
    # an invalid plan
    bad = tmp_path / "bad.toml"
    bad.write_text(PLAN.format(dp=1, mb=3, extra=""))
    p = cli("run", str(bad), "--out", str(half), "--resume")
    _assert_one_line_failure(p, "parallel.global_batch")
    # a world size this machine cannot give
    import os

    big = 4 * (os.cpu_count() or 1) + 4
    many = write_plan(tmp_path / "many.toml", dp=big, mb=1,
                      extra="").read_text().replace("global_batch = 8",
                                                    f"global_batch = {big}")
    (tmp_path / "many.toml").write_text(many)
    p = cli("run", str(tmp_path / "many.toml"), "--out", str(tmp_path / "many"))
    _assert_one_line_failure(p, f"needs {big} processes")
    assert not (tmp_path / "many").exists()
    # an unreadable data path
    nodata = write_plan(tmp_path / "nodata.toml", extra=f'data = "{tmp_path}/missing.txt"')
    p = cli("run", str(nodata), "--out", str(half), "--resume")
    _assert_one_line_failure(p, "missing.txt")
    assert tree_hashes(half) == before


def test_corrupt_newest_checkpoint_falls_back_and_keeps_it(runs, cli, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(runs["half"], copy)  # 12 steps, checkpoints after 3, 6, 9, 12
    latest = ckpt.latest_complete(copy)
    shard = next(latest.glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    corrupt = tree_hashes(latest)
    p = cli("run", str(runs["plan"]), "--out", str(copy), "--resume", "--steps", "15")
    assert p.returncode == 0, p.stderr
    assert "resuming from step_00000009" in p.stderr and "truncated" in p.stderr, p.stderr
    kept = copy / "checkpoints" / "corrupt_step_00000012"  # set aside, bytes unchanged
    assert tree_hashes(kept) == corrupt
    assert [s for s, _ in losses(copy)] == list(range(1, 16))  # each step once
    straight = dict(losses(runs["straight"].out))
    for s, loss in losses(copy)[9:12]:  # steps 10-12 again, from step 9's checkpoint
        assert abs(loss - straight[s]) < 1e-5, (s, loss, straight[s])
    with pytest.raises(SandboxError, match="corrupt checkpoint"):
        ckpt.load_full_model_state(kept)
    (kept / ".metadata").write_bytes(b"garbage")
    with pytest.raises(SandboxError, match="corrupt checkpoint"):
        ckpt.load_full_model_state(kept)
    with pytest.raises(SandboxError, match="corrupt checkpoint"):
        ckpt.verify(kept)


def test_no_intact_checkpoint_is_one_line_and_touches_nothing(runs, cli, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(runs["half"], copy)
    for ck in ckpt.complete_checkpoints(copy):
        (ck / "meta.json").write_text("{not json")
    before = tree_hashes(copy)
    p = cli("run", str(runs["plan"]), "--out", str(copy), "--resume", "--steps", "15")
    _assert_one_line_failure(p, "no intact checkpoint", "meta.json")
    assert tree_hashes(copy) == before


def test_injected_failure_restarts_and_matches(runs, tmp_path):
    """The last stage of a pp=2 run (rank 1) dies at step 8; torchrun restarts
    the job, which resumes from step 6 (each stage loading its own layers and
    optimizer state) and finishes: each step logged once, the losses of the
    single-process run."""
    plan = write_plan(tmp_path / "plan.toml", pp=2, mb=2)
    out = tmp_path / "killed"
    result = run(plan_of(plan), out, fail_at_step=8, fail_rank=1, max_restarts=1,
                 progress=False)
    assert (out / ".failed_at_step_8").exists()
    got = losses(out)
    assert [s for s, _ in got] == list(range(1, 13))
    for (s, a), (_, b) in zip(losses(runs["straight"].out), got, strict=True):
        assert abs(a - b) / abs(a) < 0.01, (s, a, b)
    assert result.to_dict()["resumed_from_step"] == 6
    assert "injected failure at step 8 on rank 1" in (out / "train.log").read_text()


def test_relative_out_and_data_from_another_directory(cli, tmp_path):
    """`sandbox run` from any directory: a relative --out and a relative
    train.data mean what they mean there (the workers run from the checkout)."""
    (tmp_path / "corpus.txt").write_text("the quick brown fox jumps over the lazy dog. " * 400)
    write_plan(tmp_path / "plan.toml", extra='data = "corpus.txt"')
    r = cli("run", "plan.toml", "--out", "rel", "--steps", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert [s for s, _ in losses(tmp_path / "rel")] == [1, 2]
    saved = plan_of(tmp_path / "rel" / "plan.toml")
    assert saved.train.data == str(tmp_path / "corpus.txt")
