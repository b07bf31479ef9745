"""compare: the step-profile analysis on known events, the relative errors, and
`sandbox compare` end to end on the tiny model (compare.json contract, plot)."""

from __future__ import annotations

import json

import pytest

import sandbox
from runtime.calibrate.step_profile import analyse
from runtime.observe.measure import noise
from sandbox.compare import errors, predicted_fields, rel_error


def _ev(name, start, end, thread=1, parent=""):
    return {"name": name, "thread": thread, "start_us": start, "end_us": end, "depth": 0,
            "parent": parent}


def test_analyse_splits_compute_exposed_comm_and_optimizer():
    plan = sandbox.load({"model": {"preset": "tiny"}, "parallel": {"dp": 2, "global_batch": 8}})
    events = [
        _ev("fwd_bwd", 0, 1000), _ev("clip", 1000, 1050), _ev("optimizer", 1050, 1250),
        _ev("aten::mm", 0, 300, parent="fwd_bwd"), _ev("aten::add", 300, 400),
        _ev("aten::mm", 10, 20, parent="aten::linear"),  # nested: not counted twice
        _ev("aten::mm", 600, 900),
        # a gradient all-reduce on gloo's thread from 350 to 700: exposed 400..600
        _ev("gloo:all_reduce", 350, 700, thread=7),
        # the main thread waits from 400 to 600 inside an aten op: not compute
        _ev("aten::wait_op", 400, 600), _ev("_c10d_functional::wait_tensor", 400, 600),
    ]
    r = analyse(events, plan)
    assert r["step_s"] == pytest.approx(1250e-6)
    assert r["compute"] == pytest.approx(700e-6)  # 0-400 and 600-900
    assert r["dp_comm"] == pytest.approx(200e-6)  # idle and in flight: 400-600
    assert r["dp_comm_in_flight"] == pytest.approx(350e-6)
    assert r["optimizer"] == pytest.approx(200e-6) and r["clip"] == pytest.approx(50e-6)
    # other: the rest of fwd_bwd (900-1000) plus clip
    assert r["other"] == pytest.approx(150e-6)
    assert r["intervals_s"]["dp_comm"] == [(350e-6, 700e-6)]


def test_pipeline_recv_is_one_field():
    plan = sandbox.load({"model": {"preset": "tiny"}, "parallel": {"pp": 2, "global_batch": 8}})
    events = [_ev("fwd_bwd", 0, 100), _ev("optimizer", 100, 110),
              _ev("aten::mm", 0, 40), _ev("gloo:recv", 40, 90), _ev("aten::mm", 90, 100)]
    r = analyse(events, plan)
    assert r["pp_comm+bubble"] == pytest.approx(50e-6)
    assert r["compute"] == pytest.approx(50e-6)


def test_errors_are_relative_to_measured():
    assert rel_error(1.2, 1.0) == pytest.approx(0.2)
    assert rel_error(None, 1.0) is None and rel_error(1.0, 0.0) is None
    pred = predicted_fields({"step_time_s": 2.0, "tokens_per_s": 50.0,
                             "memory_gb_per_gpu": {"total": 0.5},
                             "breakdown_s": {"compute": 1.5, "pp_comm": 0.1, "bubble": 0.2}})
    assert pred["breakdown_s"]["pp_comm+bubble"] == pytest.approx(0.3)
    meas = {"step_time_s": 2.5, "tokens_per_s": 40.0, "peak_mem_gb": 1.0,
            "breakdown_s": {"compute": 2.0, "pp_comm+bubble": 0.3}}
    e = errors(pred, meas)
    assert e["step_time_s"] == pytest.approx(-0.2) and e["tokens_per_s"] == pytest.approx(0.25)
    assert e["peak_mem_gb"] == pytest.approx(-0.5)
    assert e["breakdown_s"] == {"compute": pytest.approx(-0.25),
                                "pp_comm+bubble": pytest.approx(0.0, abs=1e-12)}


def test_noise_reports_spread_after_warmup():
    rows = [{"step_time_s": t} for t in (9.0, 5.0, 1.0, 1.2, 0.8, 1.0)]
    n = noise(rows, warmup=2)
    assert n["steps"] == 4 and n["median_s"] == pytest.approx(1.0)
    assert n["range_rel"] == pytest.approx(0.4)


def test_foreign_load_counts_other_processes_only(monkeypatch):
    """Other jobs' cores = (machine busy - own CPU, children included) / wall."""
    from runtime.calibrate import kernels as microbench

    clock = iter([10.0, 12.0])  # 2 s of wall time
    busy = iter([100.0, 103.0])  # the machine was busy 3 core-seconds
    own = iter([5.0, 6.0])  # 1 of them ours (or our waited-for children's)
    monkeypatch.setattr(microbench.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(microbench, "_machine_busy_s", lambda: next(busy))
    monkeypatch.setattr(microbench, "_own_cpu_s", lambda: next(own))
    with microbench.ForeignLoad() as f:
        pass
    assert f.cores == pytest.approx(1.0)


def test_foreign_load_on_this_machine():
    from runtime.calibrate.kernels import ForeignLoad

    with ForeignLoad() as f:
        sum(range(200_000))
    assert f.cores is None or f.cores >= 0.0


def _sim_vs_real():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "experiments" / "sim_vs_real.py"
    spec = importlib.util.spec_from_file_location("sim_vs_real", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_sim_vs_real_takes_the_median_over_runs():
    svr = _sim_vs_real()

    def run(step):
        return {"measured": {"step_time_s": step, "tokens_per_s": 100 / step,
                             "breakdown_s": {"compute": 0.5 * step}}}

    rep, med = svr.representative([run(3.0), run(1.0), run(2.2)])
    assert med == pytest.approx(2.2) and rep["measured"]["step_time_s"] == pytest.approx(2.2)
    rep, med = svr.representative([run(1.0), run(2.0)])  # even: between the two
    assert med == pytest.approx(1.5)
    assert rep["measured"]["breakdown_s"]["compute"] == pytest.approx(0.75)
    assert svr.coarsen([(0.0, 0.1), (0.1002, 0.2), (0.5, 0.6)]) == [[0.0, 0.2], [0.5, 0.6]]
    assert svr.fit_vpp("gpt-mini", {"pp": 2, "vpp": 2})["vpp"] == 3
    assert svr.fit_vpp("tiny", {"pp": 2, "vpp": 2})["vpp"] == 2


def test_sandbox_compare_writes_the_contract(cli, tmp_path):
    import sim

    if not hasattr(sim, "simulate"):
        pytest.skip("the simulator (sim.simulate) has not landed yet")
    plan = tmp_path / "tiny.toml"
    plan.write_text('[model]\npreset = "tiny"\n[parallel]\ndp = 2\nglobal_batch = 8\n'
                    '[train]\nlr_schedule = "constant"\n')
    out = tmp_path / "cmp"
    r = cli("compare", str(plan), "--out", str(out), "--steps", "3")
    assert r.returncode == 0, r.stderr[-2000:]
    d = json.loads((out / "compare.json").read_text())
    for side in ("predicted", "measured"):
        for k in ("step_time_s", "tokens_per_s", "peak_mem_gb"):
            assert d[side][k] > 0, (side, k)
    for k in ("step_time_s", "tokens_per_s", "peak_mem_gb"):
        want = (d["predicted"][k] - d["measured"][k]) / d["measured"][k]
        assert d["error"][k] == pytest.approx(want)
    # the profiled step saw data-parallel communication and compute
    mb = d["measured"]["breakdown_s"]
    assert mb["compute"] > 0 and mb["dp_comm_in_flight"] > 0 and mb["optimizer"] > 0
    assert "compute" in d["error"]["breakdown_s"]
    assert d["noise"]["steps"] >= 1 and d["provenance"]["torch"]
    png = out / "timeline.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_sandbox_compare_bad_plan_is_one_line(cli, tmp_path):
    r = cli("compare", str(tmp_path / "missing.toml"), "--out", str(tmp_path / "o"))
    assert r.returncode == 1 and "no such plan file" in r.stderr
    assert "Traceback" not in r.stderr
