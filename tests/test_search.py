"""Strategy search: feasibility, ranking, reasons, Pareto flags, determinism, CLI."""

import json

import pytest

from sandbox.memory import memory_per_gpu
from sandbox.validate import plan_problems
from sim import search as S
from sim.search.result import py
from sim.search.space import (
    candidates,
    peak_memory_gb,
    step_time_lower_bound,
    with_parallel,
)

# A small search the real simulator answers quickly: gpt3-1.3b on 2 DGX A100 nodes.
SMALL = dict(model="gpt3-1.3b", cluster="dgx-a100-80g", gpus=16, global_batch=64)


@pytest.fixture(scope="module")
def small():
    """The small search with the real simulator, over 2 worker processes."""
    return S.run_search(**SMALL, top=8, workers=2, max_simulations=24, progress=False)


def test_pareto_front_toy_set():
    x = [1, 2, 3, 4, 2, 5]
    y = [5, 3, 4, 1, 3, 1]
    # (3,4) is dominated by (2,3); (5,1) by (4,1); the duplicate (2,3) is not dominated.
    assert S.pareto_front(x, y) == [True, True, False, True, True, False]
    assert S.pareto_front([1.0], [1.0]) == [True]


def test_results_sorted_feasible_and_valid(small):
    table = small.table
    assert 0 < len(table) <= 8
    times = list(table["step_time_s"])
    assert times == sorted(times)
    for rank in table.index:
        plan = S.plan_of(small, int(rank))
        assert plan_problems(plan) == []
        assert memory_per_gpu(plan)["total"] <= plan.cluster.gpu.hbm_gb
        assert plan.parallel.tp <= plan.cluster.gpus_per_node
    assert table["fits"].all()
    assert list(table.index) == list(range(1, len(table) + 1))


def test_counts_add_up_and_reasons_kept(small):
    c = small.counts
    rej = small.rejected
    stages = rej["stage"].value_counts().to_dict()
    accounted = sum(stages.get(s, 0) for s in ("invalid", "memory", "screened", "budget"))
    assert c.considered == accounted + c.simulated + c.timed_by_a_twin
    assert c.timed_by_a_twin > 0  # ZeRO 2 reuses ZeRO 1's timing
    assert c.considered == len(list(candidates(small.base_plan)))
    assert (rej["reason"].str.len() > 0).all()
    assert sum(c.rejected_by_reason.values()) == c.rejected
    # every rejected-as-invalid candidate really breaks a rule, with that reason first
    for _, r in rej[rej["stage"] == "invalid"].head(20).iterrows():
        plan = with_parallel(small.base_plan, **{k: py(r[k]) for k in S.SEARCHED})
        assert plan_problems(plan)[0] == r["reason"]


def test_why_explains_missing_plans(small):
    # tp = 3 does not divide the world size: never enumerated, the validator says why
    w = S.why(small, tp=3)
    assert len(w) == 1 and "dp*tp*pp" in w["reason"].iloc[0]
    # tp = 16 spans two nodes: outside the space, but a valid plan
    assert S.why(small, tp=16, pp=1)["stage"].iloc[0] == "not enumerated"
    # a plan in the table is "ranked"
    best = small.table.iloc[0]
    hit = S.why(small, **{k: py(best[k]) for k in S.SEARCHED})
    assert list(hit["stage"]) == ["ranked"] and hit["reason"].iloc[0] == "rank 1"
    with pytest.raises(Exception, match="unknown field"):
        S.why(small, tpp=2)


def test_max_memory_rejects_with_reason():
    res = S.run_search(**SMALL, top=3, workers=1, max_simulations=4, progress=False,
                       max_memory_gb=12.0, fix={"pp": 1})
    assert (res.table["memory_gb"] <= 12.0).all()
    rej = res.rejected
    assert rej["reason"].str.contains("max_memory_gb 12.0 GB").any()


def test_fix_restricts_the_space():
    res = S.search(**SMALL, top=4, workers=1, max_simulations=6, progress=False,
                   fix={"tp": 2, "zero": [0, 1], "recompute": "selective"})
    assert set(res["tp"]) == {2} and set(res["zero"]) <= {0, 1}
    assert set(res["recompute"]) == {"selective"}


def test_row_resimulated_alone_gives_the_same_numbers(small):
    from sim import simulate

    for rank in list(small.table.index)[:3]:
        row = small.table.loc[rank]
        alone = simulate(S.plan_of(small, int(rank))).to_dict()
        for key in ("step_time_s", "tokens_per_s", "mfu", "hfu", "tflops_per_gpu"):
            assert alone[key] == pytest.approx(row[key], rel=1e-12), key
        for part, value in alone["breakdown_s"].items():
            assert value == pytest.approx(row[f"breakdown_s.{part}"], rel=1e-12, abs=1e-15)


def test_lower_bound_never_exceeds_the_simulation(small):
    everything = small.all_simulated
    assert len(everything) >= len(small.table)
    for rank in everything.index:
        plan = S.plan_of(small, everything.loc[rank])
        assert step_time_lower_bound(plan) <= everything.loc[rank, "step_time_s"]


def test_bound_and_memory_screen_agree_with_sandbox_memory():
    base = S.base_plan("gpt3-175b", "dgx-a100-80g", 1024, 1536)
    for par in list(candidates(base, {"tp": 8, "pp": [8, 16], "micro_batch": 1}))[::37]:
        plan = with_parallel(base, **{k: getattr(par, k) for k in S.SEARCHED})
        if plan_problems(plan):
            continue
        assert peak_memory_gb(plan)["total"] == pytest.approx(memory_per_gpu(plan)["total"])


def test_objective_cost_ranks_by_usd():
    res = S.search(**SMALL, top=4, workers=1, max_simulations=6, progress=False,
                   objective="cost")
    usd = list(res["usd_per_million_tokens"])
    assert usd == sorted(usd) and all(u > 0 for u in usd)


def test_cli_json_fields(cli):
    r = cli("search", "--model", "gpt3-1.3b", "--cluster", "dgx-a100-80g", "--gpus", "16",
            "--global-batch", "64", "--top", "3", "--max-simulations", "6", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert 1 <= len(rows) <= 3
    need = {"dp", "tp", "pp", "vpp", "micro_batch", "zero", "recompute", "sequence_parallel",
            "schedule", "params", "flops_per_step", "step_time_s", "tokens_per_s",
            "tflops_per_gpu", "hw_tflops_per_gpu", "mfu", "hfu", "memory_gb_per_gpu", "fits",
            "breakdown_s", "events", "sim_wall_s"}
    for row in rows:
        assert need <= set(row), need - set(row)
        assert set(row["breakdown_s"]) >= {"compute", "tp_comm", "pp_comm", "dp_comm",
                                           "bubble", "optimizer", "other"}
        assert row["dp"] * row["tp"] * row["pp"] == 16
    assert "candidates considered" in r.stderr
    csv = cli("search", "--model", "gpt3-1.3b", "--cluster", "dgx-a100-80g", "--gpus", "16",
              "--global-batch", "64", "--top", "2", "--max-simulations", "4", "--csv",
              "--quiet")
    assert csv.returncode == 0 and csv.stdout.splitlines()[0].startswith("rank,dp,tp")


@pytest.mark.parametrize("args,words", [
    (["--gpus", "12"], ["gpus", "multiple"]),
    (["--gpus", "16", "--fix", "tpp=2"], ["fix", "did you mean 'tp'"]),
    (["--gpus", "16", "--fix", "zero=5"], ["zero"]),
    (["--gpus", "16", "--fix", "tp"], ["KEY=VALUE"]),
    (["--gpus", "0"], ["gpus", "positive"]),
    (["--gpus", "16", "--max-memory-gb", "-1"], ["max_memory_gb"]),
    (["--gpus", "16", "--max-memory-gb", "nan"], ["max_memory_gb", "nan"]),
    (["--gpus", "16", "--seq-len", "0"], ["--seq-len", "positive"]),
    (["--gpus", "65536", "--max-simulations", "128"], ["--max-simulations 32"]),
])
def test_cli_bad_input_one_line(cli, args, words):
    r = cli("search", "--model", "gpt3-1.3b", "--cluster", "dgx-a100-80g",
            "--global-batch", "64", *args)
    assert r.returncode == 1, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_cli_unknown_model_one_line(cli):
    r = cli("search", "--model", "gpt3-157b", "--cluster", "dgx-a100-80g", "--gpus", "16",
            "--global-batch", "64")
    assert r.returncode == 1 and "did you mean 'gpt3-175b'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_parallel_search_simulates_what_one_worker_does(small):
    """Workers run ahead but results are taken in candidate order: the same
    plans are simulated, ranked and rejected as with one worker."""
    one = S.run_search(**SMALL, top=8, workers=1, max_simulations=24, progress=False)
    assert one.counts == small.counts
    drop = ["sim_wall_s"]
    assert one.table.drop(columns=drop).equals(small.table.drop(columns=drop))
    assert one.all_simulated.drop(columns=drop).equals(small.all_simulated.drop(columns=drop))
    assert one.rejected.equals(small.rejected)


@pytest.mark.parametrize("options,words", [
    ({"global_batch": 10**12}, "global_batch: 1,000,000,000,000 is beyond the limit"),
    ({"gpus": 2**20}, "1,048,576 GPUs is more than the simulator"),
    ({"workers": 10**6}, "workers: must be from 1 to 64"),
    ({"max_memory_gb": float("inf")}, "max_memory_gb"),
    ({"seq_len": -1}, "seq_len"),
    ({"max_simulations": 0}, "max_simulations"),
    ({"fix": {"micro_batch": list(range(1, 5001))}}, "more than 50,000 candidate plans"),
])
def test_unbounded_search_is_refused_before_any_work(options, words):
    from sandbox.errors import SandboxError

    args = {"model": "gpt3-1.3b", "cluster": "dgx-a100-80g", "gpus": 16, "global_batch": 64,
            "progress": False, **options}
    calls = []
    with pytest.raises(SandboxError, match=words):
        S.run_search(simulator=lambda plan: calls.append(plan), **args)
    assert not calls
