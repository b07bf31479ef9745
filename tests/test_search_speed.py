"""The fast exhaustive search: memo tables change no number (cached == fresh, bit
for bit, on varied plans), the bound from the lowered work never exceeds the
simulated step, and the best-first search finds the top of a brute force."""

import pytest

import sim
from sandbox.layout import stage_layers
from sandbox.profile import profile_for
from sandbox.validate import plan_problems
from sim import compute, lowering, memo
from sim.costs import stage_costs
from sim.network.shared import shared
from sim.search import run_search, usd_per_million_tokens
from sim.search.best_first import cost_key, simulate_dict
from sim.search.refine import critical_path, refined_bound
from sim.search.space import base_plan, candidates, screen, step_time_lower_bound, with_parallel

SMALL = dict(model="gpt3-1.3b", cluster="dgx-a100-80g", gpus=16, global_batch=64)

# varied layouts: ZeRO 0..3, pipelines of every schedule, interleaving, SP on/off, recompute
VARIED = [dict(dp=16, tp=1, pp=1, zero=3, micro_batch=2, recompute="none"),
          dict(dp=4, tp=2, pp=2, zero=1, schedule="1f1b", sequence_parallel=True),
          dict(dp=2, tp=4, pp=2, zero=0, schedule="interleaved-1f1b", vpp=2,
               recompute="full"),
          dict(dp=2, tp=2, pp=4, zero=2, schedule="zero-bubble", micro_batch=2),
          dict(dp=4, tp=1, pp=4, zero=3, schedule="gpipe", recompute="selective"),
          dict(dp=8, tp=2, pp=1, zero=2, sequence_parallel=False)]


def _small_plans():
    base = base_plan(**SMALL)
    return [with_parallel(base, **{"recompute": "selective", "micro_batch": 1, **v})
            for v in VARIED]


def _stage_costs(p):
    topo, prof = shared(p.cluster), profile_for(p.cluster)
    n = p.parallel.pp
    return stage_costs(p, topo, prof, [compute.device_of(p, prof)] * n, [1.0] * n,
                       list(stage_layers(p)))


def _work_fields(w):
    costs = {k: (c.compute_s, c.tp_s, c.host_s, c.cp_s, c.ep_s) for k, c in w.cost.items()}
    return (costs, w.optimizer_s, w.send_s, w.ops, w.dp_buckets, w.zero3_ag, w.dp_gather,
            w.zero3_ag_s, w.zero3_copy_s, w.zero3_units, w.dp_early, w.flows_note, w.rep_class)


def test_memoised_costs_are_the_fresh_ones_bit_for_bit():
    plans = _small_plans()
    big = base_plan("gpt3-175b", "dgx-a100-80g", 1024, 1536)
    plans += [with_parallel(big, dp=512, tp=2, pp=1, zero=3, micro_batch=1),
              with_parallel(big, dp=64, tp=2, pp=8, vpp=6, zero=2, micro_batch=1,
                            schedule="interleaved-1f1b", sequence_parallel=True)]
    for p in plans:
        assert plan_problems(p) == [], p.parallel
    fresh = []
    with memo.disabled():
        for p in plans:
            topo, prof = shared(p.cluster), profile_for(p.cluster)
            fresh.append((_work_fields(lowering.lower(p, topo, prof)), _stage_costs(p)))
    memo.clear()
    for _ in range(2):  # the first pass fills the tables across plans, the second hits
        for p, (work, costs) in zip(plans, fresh, strict=True):
            topo, prof = shared(p.cluster), profile_for(p.cluster)
            assert _work_fields(lowering.lower(p, topo, prof)) == work, p.parallel
            assert _stage_costs(p) == costs
    assert memo.table(shared(plans[0].cluster), "stage_costs")  # the tables were used
    # whole simulations, cached and fresh: every number of the contract
    for p in plans[:len(VARIED)]:
        with memo.disabled():
            a = sim.simulate(p).to_dict()
        b = sim.simulate(p).to_dict()
        a.pop("sim_wall_s"), b.pop("sim_wall_s")
        assert a == b, p.parallel


def test_refined_bound_never_exceeds_the_simulation():
    base = base_plan(**SMALL)
    feasible, _ = screen(base, list(candidates(base, {"recompute": ["none", "full"]})))
    sample = [f.plan for f in feasible[::97]] + _small_plans()
    ratios = []
    for plan in sample:
        step = sim.simulate(plan, timeline=False).step_time_s
        bound = refined_bound(plan)
        assert 0 < bound <= step, plan.parallel
        assert step_time_lower_bound(plan) <= step, plan.parallel
        ratios.append(step / bound)
    assert len(ratios) >= 40
    ratios.sort()
    assert ratios[len(ratios) // 2] < 1.1  # tight: the median plan within 10 %
    # the critical path alone: every stage busy at least its ops' time
    w = lowering.lower(sample[0], shared(base.cluster), profile_for(base.cluster))
    ends, _ = critical_path(w)
    for s in range(w.p):
        busy = sum(w.cost[(s, c, k)].total for k, _, c in w.ops[s])
        assert ends[s] >= busy * (1 - 1e-12)


def test_no_bound_for_modes_the_engine_does_not_finish():
    plan = _small_plans()[2].replace(dp_mode="local-sgd", sync_every=4)
    assert refined_bound(plan) is None


FIX = {"recompute": "selective", "zero": [0, 2, 3], "micro_batch": [1, 2]}


@pytest.fixture(scope="module")
def brute():
    """Every feasible plan of the FIX space simulated: (plan, step time) of those that fit."""
    base = base_plan(**SMALL)
    feasible, _ = screen(base, list(candidates(base, FIX)))
    out = [(f.plan, r["step_time_s"]) for f in feasible
           for r in [simulate_dict(None, f.plan)] if r["fits"]]
    return out, len(feasible)


@pytest.mark.parametrize("objective", ["time", "cost"])
def test_best_first_finds_the_brute_force_top(brute, objective):
    res = run_search(**SMALL, top=6, fix=FIX, objective=objective, workers=1, progress=False)
    plans, n_feasible = brute
    key = "step_time_s" if objective == "time" else "usd_per_million_tokens"
    costs = {cost_key(t if objective == "time" else usd_per_million_tokens(t, p))
             for p, t in plans}
    assert [cost_key(v) for v in res.table[key]] == sorted(costs)[:6]
    c = res.counts
    assert c.not_simulated == 0 and c.simulated <= n_feasible // 10
    assert c.simulated + c.timed_by_a_twin + c.screened_out + c.rejected == c.considered
