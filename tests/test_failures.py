"""Failures over a whole run: Monte Carlo against Young/Daly and the closed forms.

Closed forms used (M job MTBF, C checkpoint cost, D = restart + restore,
T compute between checkpoints, all seconds):
- Young/Daly best interval: T* = sqrt(2 M C).
- First-order goodput: 1 - C/T - (T/2 + D)/M.
- Daly (2006) exact expected wall time: W/T * M e^(D/M) (e^((T+C)/M) - 1).
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

import sandbox
from sandbox import counts, memory
from sandbox.errors import PlanError
from sandbox.failures_view import failures_html, plot_interval_sweep
from sim.failures import checkpoint_cost as cc
from sim.failures import report as F

H = 3600.0


def _ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    grid = np.sort(np.concatenate([a, b]))
    fa = np.searchsorted(np.sort(a), grid, side="right") / a.size
    fb = np.searchsorted(np.sort(b), grid, side="right") / b.size
    return float(np.abs(fa - fb).max())


@pytest.mark.parametrize("mtbf_h,checkpoint_s,downtime_s",
                         [(1.0, 10.0, 60.0), (10.0, 60.0, 300.0), (100.0, 300.0, 600.0)])
def test_exponential_matches_young_daly_and_first_order(mtbf_h, checkpoint_s, downtime_s):
    m = mtbf_h * H
    work = 300 * m  # ~300 failures per run
    yd = cc.young_daly_interval_s(m, checkpoint_s)
    grid = np.geomspace(yd / 4, yd * 4, 25)
    sweep = F.simulate_intervals(work, grid, checkpoint_s, downtime_s, [1], [m], runs=60, seed=1)
    best = F.best_interval(grid, sweep["wall_s"].mean(axis=0))
    assert abs(best / yd - 1) < 0.15, (best, yd)
    at = F.simulate_intervals(work, np.array([best]), checkpoint_s, downtime_s, [1], [m],
                              runs=60, seed=2)
    goodput = work / at["wall_s"].mean()
    first = cc.first_order_goodput(best, checkpoint_s, downtime_s, m)
    assert abs(goodput - first) < 0.03, (goodput, first)
    exact = work / cc.daly_expected_wall_s(work, best, checkpoint_s, downtime_s, m)
    assert abs(goodput - exact) < 0.005, (goodput, exact)
    # Interruptions are a Poisson process in wall time: count ~ wall / M.
    rate = at["interruptions"].sum() / at["wall_s"].sum()
    assert abs(rate * m - 1) < 0.03


def _plan(steps: int = 20000, **cluster):
    return sandbox.load({"model": {"preset": "gpt3-1.3b"},
                         "cluster": {"preset": "dgx-a100-80g", "nodes": 64, **cluster},
                         "parallel": {"tp": 8, "pp": 1, "global_batch": 512},
                         "train": {"steps": steps}})


def test_report_on_a_plan_finds_young_daly_and_prices_causes():
    # Rates scaled so that the job MTBF is a few hours and C is seconds.
    plan = _plan(steps=200000, gpu_mtbf_h=2000.0, node_mtbf_h=500.0, link_mtbf_h=4000.0,
                 switch_mtbf_h=1000.0, storage_gb_per_s=0.05, usd_per_gpu_hour=2.0)
    step = 2.0
    r = F.failure_report(plan, step, seed=3, runs=60)
    d = r.to_dict()
    for key in ("goodput", "expected_time_to_train_h", "checkpoint_cost_s",
                "checkpoint_interval_s", "job_mtbf_h", "young_daly_interval_s",
                "interruptions_by_cause", "interruption_share", "expected_cost_usd",
                "time_to_train_p10_h", "time_to_train_p90_h"):
        assert key in d
    n_params = counts.param_count(plan.model)
    state = n_params * (memory.weight_bytes_per_param("bf16")
                        + memory.optimizer_bytes_per_param("bf16", "adamw"))
    assert r.checkpoint_cost_s == pytest.approx(state / (64 * 0.05e9))
    assert r.interval_source == "simulated best"
    assert abs(r.checkpoint_interval_s / r.young_daly_interval_s - 1) < 0.15
    assert r.checkpoint_interval_s % step == pytest.approx(0.0, abs=1e-9)
    rates = cc.failure_rates_per_h(plan.cluster)
    assert sum(rates.values()) == pytest.approx(1 / r.job_mtbf_h)
    assert sum(r.interruption_share.values()) == pytest.approx(1.0)
    for cause, rate in rates.items():  # shares follow the rates
        assert abs(r.interruption_share[cause] - rate * r.job_mtbf_h) < 0.03
    expected = r.expected_time_to_train_h / r.job_mtbf_h
    assert abs(r.expected_interruptions / expected - 1) < 0.05
    assert r.time_to_train_p10_h <= r.expected_time_to_train_h <= r.time_to_train_p90_h
    assert r.expected_cost_usd == pytest.approx(r.expected_time_to_train_h * 512 * 2.0)
    parts = (r.failure_free_time_h + r.lost_work_h + r.downtime_h + r.checkpoint_time_h)
    assert parts == pytest.approx(r.expected_time_to_train_h, rel=1e-9)
    assert r.goodput == pytest.approx(r.failure_free_time_h / r.expected_time_to_train_h)
    # A fixed interval from the plan is used as given, and costs more than the best.
    fixed = F.failure_report(plan.replace(checkpoint_every=6000), step, seed=3, runs=60)
    assert fixed.interval_source == "plan" and fixed.checkpoint_interval_s == 12000.0
    assert fixed.expected_time_to_train_h > r.expected_time_to_train_h


def test_deterministic_for_a_seed(tmp_path):
    plan = _plan(gpu_mtbf_h=5000.0)
    a = F.failure_report(plan, 1.5, seed=7, runs=20).to_dict()
    b = F.failure_report(plan, 1.5, seed=7, runs=20).to_dict()
    c = F.failure_report(plan, 1.5, seed=8, runs=20).to_dict()
    assert a == b
    assert a["expected_time_to_train_h"] != c["expected_time_to_train_h"]


@pytest.mark.parametrize("every", [0, 700, 5000])
def test_no_failures_costs_only_checkpoints(every):
    plan = _plan(gpu_mtbf_h=0.0, node_mtbf_h=0.0, link_mtbf_h=0.0, switch_mtbf_h=0.0)
    plan = plan.replace(checkpoint_every=every)
    step = 1.25
    r = F.failure_report(plan, step, seed=0, runs=5)
    work = 20000 * step
    n_ckpt = math.ceil(20000 / every) - 1 if every else 0
    assert r.goodput == pytest.approx(work / (work + n_ckpt * r.checkpoint_cost_s), rel=1e-12)
    assert r.expected_interruptions == 0 and r.time_to_train_std_h == 0
    assert r.to_dict()["job_mtbf_h"] is None


def test_weibull_shape_one_is_exponential():
    count, mtbf = np.array([40, 8]), np.array([200.0 * H, 50.0 * H])
    args = (60 * H, np.array([900.0]), 20.0, 300.0, count, mtbf)
    e = F.simulate_intervals(*args, runs=400, seed=11)
    w = F.simulate_intervals(*args, distribution="weibull", shape=1.0, runs=400, seed=12)
    n = e["wall_s"].size
    crit = 1.95 * math.sqrt(2 / n)  # two-sample KS at alpha = 0.001
    assert _ks_statistic(e["wall_s"].ravel(), w["wall_s"].ravel()) < crit
    assert _ks_statistic(e["interruptions"].ravel(), w["interruptions"].ravel()) < crit
    se = math.sqrt(e["interruptions"].var() / n + w["interruptions"].var() / n)
    assert abs(e["interruptions"].mean() - w["interruptions"].mean()) < 4 * se
    # Shape < 1 (infant mortality of new parts) really changes the process.
    k = F.simulate_intervals(*args, distribution="weibull", shape=0.5, runs=400, seed=12)
    assert _ks_statistic(e["interruptions"].ravel(), k["interruptions"].ravel()) > crit


def test_switch_counts_of_a_fat_tree():
    assert cc.switch_count(0) == 0 and cc.switch_count(64) == 1
    assert cc.switch_count(2048) == 64 + 32  # two levels: k^2/2 endpoints
    assert cc.switch_count(16384) == 512 + 512 + 256  # three levels
    one_node = _plan(nodes=1).replace(dp=1)
    assert cc.component_counts(one_node.cluster)["link"] == 0


def test_16k_gpus_with_thousands_of_interruptions_price_fast(tmp_path):
    plan = sandbox.load({"model": {"preset": "llama3-405b", "layers": 128},
                         "cluster": {"preset": "dgx-h100", "nodes": 2048},
                         "parallel": {"tp": 8, "pp": 16, "dp": 128, "global_batch": 2048},
                         "train": {"steps": 3_000_000}})
    t0 = time.perf_counter()
    r = F.failure_report(plan, 6.0, seed=0, runs=50)
    elapsed = time.perf_counter() - t0
    assert r.expected_interruptions > 1500
    assert elapsed < 10.0, elapsed
    path = tmp_path / "sweep.png"
    plot_interval_sweep(r, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<table>" in failures_html(r)


def test_weibull_plan_report_shape_one_matches_exponential():
    rates = {"gpu_mtbf_h": 3000.0, "node_mtbf_h": 800.0, "storage_gb_per_s": 0.05}
    e = F.failure_report(_plan(steps=50000, **rates), 2.0, seed=1, runs=80)
    w = F.failure_report(_plan(steps=50000, failure_distribution="weibull", weibull_shape=1.0,
                               **rates), 2.0, seed=2, runs=80)
    assert w.distribution == "weibull"
    se = math.hypot(e.time_to_train_std_h, w.time_to_train_std_h) / math.sqrt(80)
    assert abs(e.expected_time_to_train_h - w.expected_time_to_train_h) < 4 * se
    assert abs(e.checkpoint_interval_s / w.checkpoint_interval_s - 1) < 0.15


def test_checkpoint_bandwidth_is_capped_by_the_filesystem():
    def cost(nodes: int, total: float) -> float:
        plan = sandbox.load({"model": {"preset": "gpt3-1.3b"},
                             "cluster": {"preset": "dgx-h100", "nodes": nodes,
                                         "storage_gb_per_s": 100.0,
                                         "storage_total_gb_per_s": total},
                             "parallel": {"tp": 8, "global_batch": 8 * nodes}})
        return cc.checkpoint_bytes(plan) / cc.checkpoint_cost_s(plan) / memory.GB

    assert cost(4, 2000.0) == pytest.approx(400.0)  # 4 nodes x 100 GB/s, under the cap
    assert cost(64, 2000.0) == pytest.approx(2000.0)  # 6,400 GB/s of nodes, capped
    assert cost(64, 0.0) == pytest.approx(6400.0)  # no cap
    assert sandbox.load({"model": {"preset": "tiny"}, "cluster": {"preset": "localhost"}}
                        ).cluster.storage_total_gb_per_s == 0.0
    with pytest.raises(PlanError, match="storage_total_gb_per_s"):
        sandbox.load({"model": {"preset": "tiny"},
                      "cluster": {"preset": "localhost", "storage_total_gb_per_s": -1.0}})


def test_cli_simulate_failures_json_and_interval_plot(cli, tmp_path):
    f, png = tmp_path / "p.toml", tmp_path / "interval.png"
    f.write_text('[model]\npreset = "gpt3-1.3b"\n[cluster]\npreset = "dgx-a100-80g"\nnodes = 64\n'
                 '[parallel]\ntp = 8\nglobal_batch = 512\n'
                 '[train]\nsteps = 20000\ncheckpoint_every = 0\n')
    r = cli("simulate", str(f), "--json", "--failures-plot", str(png))
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert 0 < d["goodput"] < 1 and d["expected_time_to_train_h"] > 0
    assert d["checkpoint_cost_s"] > 0
    # whole steps between checkpoints, near Young/Daly (checked closely above)
    every = d["checkpoint_interval_s"] / d["step_time_s"]
    assert abs(every - round(every)) < 1e-6 and every >= 1
    assert 0.5 < d["checkpoint_interval_s"] / d["young_daly_interval_s"] < 2
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_millions_of_failures_per_run_are_refused_before_drawing_them():
    from sandbox.errors import SandboxError

    plan = _plan(steps=10**9, nodes=512)  # 4,096 GPUs for 10**9 steps of 30 s
    t0 = time.perf_counter()
    with pytest.raises(SandboxError, match=r"failures per simulated run .* limit of 20,000"):
        F.failure_report(plan, 30.0)
    assert time.perf_counter() - t0 < 1.0
    with pytest.raises(SandboxError, match="--seed"):
        F.failure_report(_plan(), 1.0, seed=-1)
    # before simulating: at the step time's lower bound it already fails too often
    gpt3 = sandbox.load({"model": {"preset": "gpt3-175b"},
                         "cluster": {"preset": "dgx-a100-80g", "nodes": 32},
                         "parallel": {"tp": 8, "pp": 8, "global_batch": 1536},
                         "train": {"steps": 10**9}})
    with pytest.raises(SandboxError, match="failures per simulated run"):
        F.check_failure_inputs(gpt3)
    F.check_failure_inputs(_plan())
