"""The exhaustive plan search: no budget by default, only the sound bound screens;
plans of one cost fold into one row; rejection reasons keep their numbers; the Ray
executor returns the same ranking as local processes."""

import pytest

from sim import search as S
from sim.search.run import cost_key
from sim.search.space import group_reasons, peak_memory_gb, step_time_lower_bound

SMALL = dict(model="gpt3-1.3b", cluster="dgx-a100-80g", gpus=16, global_batch=64)


def fake_simulate(plan):
    """A fast stand-in above the bound, blind to the ZeRO stage (so stages tie)."""
    par = plan.parallel
    t = step_time_lower_bound(plan) * (1.5 + 0.01 * par.micro_batch) + (
        0.002 if par.recompute == "full" else 0.0)
    if par.zero:  # every sharded stage costs the same
        t = step_time_lower_bound(plan.replace(zero=1)) * (1.5 + 0.01 * par.micro_batch)
    return {"step_time_s": t, "tokens_per_s": plan.tokens_per_step / t, "mfu": 0.5,
            "memory_gb_per_gpu": {"total": peak_memory_gb(plan)["total"]}, "fits": True}


@pytest.fixture(scope="module")
def exhaustive():
    return S.run_search(**SMALL, top=6, workers=1, progress=False, simulator=fake_simulate)


def test_default_is_exhaustive_up_to_the_bound(exhaustive):
    c = exhaustive.counts
    assert c.not_simulated == 0 and c.screened_out > 0 and c.simulated > 0
    table = exhaustive.table
    kth = sorted({cost_key(v) for v in exhaustive.all_simulated["step_time_s"]})[5]
    screened = exhaustive.rejected[exhaustive.rejected["stage"] == "screened"]
    assert len(screened) == c.screened_out
    # each screened plan's bound is no better than the 6th distinct simulated cost
    bounds = [float(r.split("lower bound ")[1].split(" s")[0]) for r in screened["reason"]]
    assert min(bounds) >= kth * (1 - 1e-3)
    # and brute force over every feasible plan finds the same top 6 costs
    brute = S.run_search(**SMALL, top=6, workers=1, progress=False, simulator=fake_simulate,
                         max_simulations=10**5 // 16)
    assert list(brute.table["step_time_s"]) == list(table["step_time_s"])


def test_identical_costs_fold_into_one_row(exhaustive):
    times = [cost_key(t) for t in exhaustive.table["step_time_s"]]
    assert len(times) == len(set(times))
    assert (exhaustive.table["same_cost"] >= 3).any()  # ZeRO 1, 2, 3 tie in the stand-in
    assert exhaustive.table["memory_gb"].iloc[0] == min(
        exhaustive.all_simulated.loc[exhaustive.all_simulated["step_time_s"]
                                     == exhaustive.table["step_time_s"].iloc[0], "memory_gb"])


def test_rejection_reasons_print_their_numbers(exhaustive):
    grouped = group_reasons(["pp*vpp = 5 does not divide model.layers = 96",
                             "pp*vpp = 7 does not divide model.layers = 96",
                             "memory: needs 81.5 GB per GPU > 80.0 GB"])
    assert grouped == {"pp*vpp = 5|7 does not divide model.layers = 96": 2,
                       "memory: needs 81.5 GB per GPU > 80.0 GB": 1}
    many = group_reasons([f"tp = {t} does not divide heads = 32" for t in range(3, 30, 2)])
    assert list(many) == ["tp = 3..29 does not divide heads = 32"]
    text = S.summary(exhaustive)
    assert text.startswith("search: ") and "left unsimulated" in text
    reasons = text.splitlines()[1:]
    assert reasons and all(any(ch.isdigit() for ch in r.split(":", 1)[1]) for r in reasons)
    assert not any(" N " in r or "= N" in r for r in reasons)


def test_cli_summary_line_on_stderr(cli):
    r = cli("search", "--model", "gpt3-1.3b", "--cluster", "dgx-a100-80g", "--gpus", "8",
            "--global-batch", "32", "--fix", "tp=8", "--fix", "zero=1", "--fix",
            "recompute=selective", "--top", "3", timeout=300)
    assert r.returncode == 0, r.stderr
    line = [ln for ln in r.stderr.splitlines() if ln.startswith("search:")][0]
    assert "0 left unsimulated" in line and "screened out by the lower bound" in line


def test_ray_executor_missing_or_same_ranking():
    from sandbox.errors import SandboxError
    from sim.search.executors import check_executor

    with pytest.raises(SandboxError, match="executor: unknown value"):
        check_executor("dask", None)
    try:
        import ray  # noqa: F401
    except ImportError:
        with pytest.raises(SandboxError, match="Ray is not installed"):
            check_executor("ray", None)
        pytest.skip("ray not installed (optional extra [ray])")
    # the real simulator (Ray's workers import `sim`, not this test module), a small space
    opts = dict(**SMALL, top=10, workers=2, progress=False,
                fix={"tp": [4, 8], "zero": [1, 3], "recompute": "selective", "pp": [1, 2]})
    local = S.run_search(**opts)
    via_ray = S.run_search(**opts, executor="ray")
    cols = ["dp", "tp", "pp", "vpp", "micro_batch", "zero", "recompute", "schedule",
            "step_time_s"]
    assert len(local.table) >= 3 and local.table[cols].equals(via_ray.table[cols])
    assert local.counts == via_ray.counts
