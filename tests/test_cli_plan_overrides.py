"""The command line around plans (issue 22): --version, --set overrides,
search PLAN, "wrote" lines, the layout in `info`, the uncalibrated warning.
In-process (`sandbox.cli.main`), tiny plans on localhost."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
from helpers.cli import PLAN, one_line

import sandbox
from sandbox.calibration import calibration_warning
from sandbox.cli import build_parser, main
from sandbox.layout_facts import layout_facts, rank0_group
from sandbox.overrides import apply_overrides, parse_value
from sandbox.profile import Profile, dump_profile

A100 = '[model]\npreset = "tiny"\n[cluster]\npreset = "dgx-a100-80g"\nnodes = 1\n'


@pytest.fixture
def plan(tmp_path):
    path = tmp_path / "plan.toml"
    path.write_text(PLAN)
    return str(path)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


# ------------------------------------------------------------------ --version
@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(capsys, flag):
    code, out, _ = run(capsys, flag)
    assert code == 0
    assert re.fullmatch(r"sandbox 0\.1\.0 \(torch (\S+|not installed), python 3\.\d+\.\d+\)\n",
                        out), out


def test_version_does_not_import_torch():
    code = ("import sys; from sandbox.cli import main; main(['--version']); "
            "print('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.splitlines()[-1] == "False", r


# ------------------------------------------------------------------ --set
def test_parse_value_is_toml_or_the_bare_word():
    assert parse_value("42") == 42 and parse_value("true") is True
    assert parse_value("1.5e-4") == 1.5e-4 and parse_value('"fa3"') == "fa3"
    assert parse_value("fa3") == "fa3" and parse_value("interleaved-1f1b") == "interleaved-1f1b"
    assert parse_value("[9, 8]") == [9, 8]


def test_set_changes_info_json(capsys, plan):
    _, base, _ = run(capsys, "info", plan, "--json")
    code, out, _ = run(capsys, "info", plan, "--json", "--set", "parallel.micro_batch=2",
                       "--set", "parallel.global_batch=8")
    assert code == 0
    before, after = json.loads(base), json.loads(out)
    assert after["microbatches"] == 4 and before["microbatches"] != 4
    assert after["tokens_per_step"] == 8 * sandbox.load(PLAN).model.seq_len


def test_set_beats_the_file_and_its_preset():
    data = {"model": {"preset": "tiny", "layers": 3}, "cluster": {"preset": "dgx-a100-80g",
                                                                  "nodes": 1}}
    plan = sandbox.load(data, overrides=["model.layers=5", "cluster.gpu.hbm_gb=40",
                                         "train.attention=eager"])
    assert plan.model.layers == 5 and plan.model.hidden == sandbox.load(data).model.hidden
    assert plan.cluster.gpu.hbm_gb == 40 and plan.cluster.gpu.name == "a100-80g"
    assert plan.train.attention == "eager"
    assert data["model"]["layers"] == 3  # the caller's dict is left alone
    assert apply_overrides({}, ["cluster.gpus_per_node=2"]) == {
        "cluster": {"preset": "localhost", "gpus_per_node": 2}}  # the default section kept


def test_set_changes_simulate_json(capsys, plan):
    _, base, _ = run(capsys, "simulate", plan, "--json")
    code, out, _ = run(capsys, "simulate", plan, "--json", "--set", "parallel.global_batch=16")
    assert code == 0
    assert json.loads(out)["flops_per_step"] == 2 * json.loads(base)["flops_per_step"]


@pytest.mark.parametrize("item,words", [
    ("parallel.tp", ["--set", "SECTION.KEY=VALUE"]),
    ("tp=2", ["--set", "no section", "parallel.tp=2"]),
    ("paralel.tp=2", ["--set", "unknown section", "did you mean 'parallel'"]),
    ("parallel.tpp=2", ["--set", "unknown key 'tpp'", "did you mean 'tp'"]),
    ("cluster.gpu.hbm=3", ["--set", "[cluster.gpu]", "hbm_gb"]),
    ("parallel.tp=", ["--set", "no value"]),
    ("parallel.tp=x", ["parallel.tp", "integer"]),  # the plan's own check
])
@pytest.mark.parametrize("command", ["info", "simulate"])
def test_bad_set_is_one_line(capsys, plan, command, item, words):
    one_line(capsys, main([command, plan, "--set", item]), *words)


def test_every_plan_command_takes_set():
    parser, modules = build_parser()
    for name in ("simulate", "info", "run", "report", "compare", "search"):
        args = parser.parse_args([name, "p.toml", "--out", "o", "--set", "parallel.tp=2"]
                                 if name in ("run", "report", "compare") else
                                 [name, "p.toml", "--set", "parallel.tp=2"])
        assert args.set == ["parallel.tp=2"], name


def test_run_trains_the_overridden_plan(capsys, plan, tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(sandbox, "run", lambda p, out, **kw: seen.setdefault("plan", p))
    main(["run", plan, "--out", str(tmp_path / "r"), "--set", "parallel.micro_batch=4"])
    assert seen["plan"].parallel.micro_batch == 4  # what launch writes to DIR/plan.toml


# ------------------------------------------------------------------ search PLAN
def test_search_around_a_plan(capsys, plan):
    code, out, err = run(capsys, "search", plan, "--set", "parallel.dp=2", "--json",
                         "--workers", "1", "--max-simulations", "4", "--top", "3")
    assert code == 0, err
    rows = json.loads(out)
    params = sandbox.info(sandbox.load(PLAN))["params"]
    assert rows and all(r["params"] == params for r in rows)
    assert all(r["dp"] * r["tp"] * r["pp"] * r.get("cp", 1) == 2 for r in rows)
    assert all("your_plan" in r for r in rows)
    assert re.search(r"your plan: \S+ s, .*rank \d+ of \d+", err), err


def test_search_options_come_from_the_plan():
    from sim.search.around import search_options

    plan = sandbox.load(PLAN, overrides=["parallel.dp=2", "parallel.zero=3", "train.lr=1e-3",
                                         "parallel.tp_overlap=true"])
    o = search_options(plan)
    assert (o["gpus"], o["global_batch"], o["model"]["layers"]) == (2, 8, plan.model.layers)
    assert o["train"] == {"lr": 1e-3, "steps": 2}  # fp32 is CPU's default, not carried
    assert o["parallel"] == {"tp_overlap": True}  # searched fields (dp, zero) left to search
    assert search_options(plan, gpus=4)["cluster"] == "localhost"  # re-sized for 4 processes


def test_search_marks_the_plan_when_it_ranks(capsys, tmp_path):
    path = tmp_path / "best.toml"  # the usual winner of the space below
    path.write_text(PLAN + "[parallel]\ndp = 2\nmicro_batch = 4\nzero = 3\nrecompute = "
                    '"none"\n')
    code, out, err = run(capsys, "search", str(path), "--workers", "1", "--top", "50",
                         "--fix", "tp=1", "--fix", "pp=1", "--fix", "micro_batch=4",
                         "--fix", "zero=3", "--fix", "recompute=none", "--quiet")
    assert code == 0, err
    assert "<- your plan" in out and "rank 1 of 1 simulated" in out, out


def test_search_without_plan_needs_the_flags(capsys):
    one_line(capsys, main(["search", "--model", "tiny"]), "PLAN", "--cluster", "--gpus")


# ------------------------------------------------------------------ wrote lines
def test_simulate_says_what_it_wrote(capsys, plan, tmp_path):
    trace, png = tmp_path / "t.json", tmp_path / "t.png"
    code, out, _ = run(capsys, "simulate", plan, "--trace", str(trace), "--plot", str(png))
    assert code == 0 and trace.is_file() and png.is_file()
    assert f"wrote {trace}" in out.splitlines() and f"wrote {png}" in out.splitlines()
    code, out, err = run(capsys, "simulate", plan, "--json", "--trace", str(trace))
    assert code == 0 and json.loads(out)["step_time_s"] > 0  # stdout stays pure JSON
    assert f"wrote {trace}" in err.splitlines()


# ------------------------------------------------------------------ info layout
def test_info_shows_the_layout(capsys, tmp_path):
    path = tmp_path / "a100.toml"
    path.write_text(A100)
    sets = ["--set", "cluster.nodes=2", "--set", "parallel.tp=4", "--set", "parallel.pp=2"]
    code, out, _ = run(capsys, "info", str(path), *sets)
    assert code == 0
    assert "pp 2 x dp 2 x tp 4 (tp innermost: TP groups within a node; 2 nodes x 8 GPUs)" \
        in out, out
    assert re.search(r"TP group of rank 0 +ranks 0-3 on node 0; none of the 4 TP groups", out)
    assert re.search(r"DP group of rank 0 +ranks 0, 4 on node 0; none of the 8 DP groups", out)
    assert re.search(r"PP group of rank 0 +ranks 0, 8 on 2 nodes; all 8 PP groups cross", out)
    _, js, _ = run(capsys, "info", str(path), "--json", *sets)
    layout = json.loads(js)["layout"]
    assert layout["order"] == ["pp", "dp", "tp"] and layout["sizes"] == {"pp": 2, "dp": 2, "tp": 4}
    assert layout["groups"]["pp"] == {"size": 2, "stride": 8, "count": 8, "cross_node": 8}


def test_layout_counts_groups_that_cross_nodes():
    par = SimpleNamespace(tp=3, dp=4, pp=1, cp=1, ep=1)
    fake = SimpleNamespace(parallel=par, world_size=12,
                           cluster=SimpleNamespace(gpus_per_node=4, nodes=3))
    groups = layout_facts(fake)["groups"]
    assert groups["tp"]["cross_node"] == 2  # [3-5] and [6-8]; [0-2] and [9-11] do not
    assert rank0_group(groups["dp"]) == [0, 3, 6, 9] and groups["dp"]["cross_node"] == 3


# ------------------------------------------------------------------ calibration warning
def test_uncalibrated_warning_on_localhost(capsys, plan):
    w = calibration_warning(sandbox.load(PLAN).cluster)
    assert w is not None and "'localhost'" in w and "sandbox calibrate --out my-profile.toml" in w
    assert calibration_warning(sandbox.load(A100).cluster) is None  # a calibrated profile
    code, out, err = run(capsys, "simulate", plan, "--json")
    assert code == 0 and json.loads(out)  # the warning does not touch the JSON
    assert err.strip().splitlines() == [w]


def test_no_warning_on_a_calibrated_cluster(capsys, tmp_path):
    path = tmp_path / "a100.toml"
    path.write_text(A100)
    code, _, err = run(capsys, "simulate", str(path))
    assert code == 0 and "warning" not in err


def test_warning_on_a_profile_of_defaults(tmp_path):
    profile = tmp_path / "defaults.toml"
    dump_profile(Profile(), profile)
    plan = sandbox.load(A100, overrides=[f'cluster.profile="{profile}"'])
    assert "holds the documented defaults" in calibration_warning(plan.cluster)


def test_warning_names_real_calibrate_flags():
    parser, _ = build_parser()
    for cluster in (sandbox.load(PLAN).cluster,
                    sandbox.load(A100, overrides=['cluster.profile=""']).cluster):
        cmd = re.search(r"`sandbox (calibrate[^`]*)`", calibration_warning(cluster)).group(1)
        args = parser.parse_args(cmd.split())
        assert args.command == "calibrate" and args.out == "my-profile.toml"


def test_report_html_carries_the_warning(capsys, plan, tmp_path):
    code, out, err = run(capsys, "report", plan, "--out", str(tmp_path / "r"),
                         "--scaling", "none")
    assert code == 0 and out.startswith("wrote ")
    html = (tmp_path / "r" / "report.html").read_text()
    assert "has no calibrated profile" in html and "has no calibrated profile" in err
    assert html.index("has no calibrated profile") < html.index("Plans side by side")
