"""MoE dispatch second pass (issue 18): distinct destination ranks / nodes of
a token under uniform, node-limited and round-robin routing against brute
force, DeepEP's node-deduplicated dispatch against its closed form, and
pipeline flushes paying the fill / drain bubble once each."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

import sandbox
from sandbox import experts
from sandbox.errors import PlanError
from sandbox.profile import Profile
from sim import engine, lowering, simulate
from sim.expert_parallel import a2a_sent_bytes, a2a_time, dedup_pair_bytes
from sim.network.collectives import dedup_dispatch, phases_time
from sim.network.topology import build
from sim.schedules import schedule
from sim.work import OpCost

MOE = {"layers": 4, "hidden": 1024, "heads": 8, "kv_heads": 8, "vocab": 4096, "seq_len": 1024,
       "activation": "swiglu", "norm": "rmsnorm", "position": "rope", "bias": False,
       "tied_embeddings": False, "ffn_hidden": 2048, "experts": 64, "experts_per_token": 8,
       "expert_ffn_hidden": 512, "dense_layers": 1}


def _model(e: int, k: int, **kw) -> sandbox.sections.Model:
    return dataclasses.replace(sandbox.load({"model": {**MOE}}).model, experts=e,
                               experts_per_token=k, **kw)


def _brute_uniform(e: int, k: int, units: int) -> float:
    u = e // units
    subsets = list(itertools.combinations(range(e), k))
    return sum(len({x // u for x in s}) for s in subsets) / len(subsets)


@pytest.mark.parametrize("e,k,units", [(8, 3, 4), (12, 4, 3), (16, 2, 8), (16, 5, 2)])
def test_uniform_distinct_units_is_the_hypergeometric_closed_form(e, k, units):
    assert experts.distinct_units(_model(e, k), units) == pytest.approx(
        _brute_uniform(e, k, units), rel=1e-12)


def test_node_limited_routing_picks_m_nodes_then_k_of_their_experts():
    e, k, n, limit = 16, 3, 4, 2  # 4 experts a node, at most 2 nodes a token
    m = _model(e, k, max_route_nodes=limit)
    u = e // n
    total, count = 0.0, 0
    for chosen in itertools.combinations(range(n), limit):
        pool = [x for c in chosen for x in range(c * u, (c + 1) * u)]
        for s in itertools.combinations(pool, k):
            total += len({x // u for x in s})
            count += 1
    assert experts.distinct_units(m, n, n) == pytest.approx(total / count, rel=1e-12)
    assert experts.distinct_units(m, n, n) <= limit
    # ranks (2 per node) inside the two chosen nodes
    total_r = 0.0
    for chosen in itertools.combinations(range(n), limit):
        pool = [x for c in chosen for x in range(c * u, (c + 1) * u)]
        subsets = list(itertools.combinations(pool, k))
        total_r += sum(len({x // 2 for x in s}) for s in subsets) / len(subsets)
    assert experts.distinct_units(m, 8, n) == pytest.approx(
        total_r / len(list(itertools.combinations(range(n), limit))), rel=1e-12)


def _fake_balanced_gate(e: int, k: int, tokens: int) -> list[list[int]]:
    """NeMo AutoModel's FakeBalancedGate, noise 0: arange(tokens * k).view(-1, k) % e."""
    return [[(t * k + j) % e for j in range(k)] for t in range(tokens)]


@pytest.mark.parametrize("e,k,units", [(256, 8, 64), (256, 8, 8), (384, 8, 32), (8, 3, 2),
                                       (128, 6, 32), (10, 4, 5)])
def test_round_robin_distinct_units_match_the_fake_gate(e, k, units):
    u = e // units
    toks = _fake_balanced_gate(e, k, 4096)
    cycle = e // __import__("math").gcd(k, e)
    toks = toks[:len(toks) // cycle * cycle]  # whole cycles: the exact average
    got = sum(len({x // u for x in t}) for t in toks) / len(toks)
    assert experts.distinct_units(_model(e, k, routing="round-robin"), units) == \
        pytest.approx(got, rel=1e-12)


def test_round_robin_closed_forms():
    # DeepSeek-V3 on ep 64 over 8 nodes: 8 consecutive experts of 4 per rank, 32 per node
    dsv3 = _model(256, 8, routing="round-robin")
    assert experts.distinct_units(dsv3, 64, 8) == 2.0
    assert experts.distinct_units(dsv3, 8, 8) == 1.0
    # gcd(k, E) = 1, k <= u: the k ids straddle a boundary for k - 1 of u starts
    m = _model(8, 3, routing="round-robin")
    assert experts.distinct_units(m, 2) == pytest.approx(1 + (3 - 1) / 4)


def _ep_plan(nodes: int, ep: int, **kw):
    dp = nodes * 8
    par = {"dp": dp, "ep": ep, "global_batch": dp, "zero": 1, "recompute": "none",
           "ep_dispatch": "deepep", **kw.pop("parallel", {})}
    return sandbox.load({"model": {**MOE, **kw}, "parallel": par,
                         "cluster": {"preset": "dgx-h100", "nodes": nodes}})


def test_dedup_dispatch_closed_form_one_node_and_two_nodes():
    prof = Profile(collective_efficiency=0.8, collective_step_latency_s=5e-6)
    one = build(sandbox.load({"cluster": {"preset": "dgx-h100", "nodes": 1}}).cluster)
    nvl = one.cluster.intra_node_gb_per_s * 1e9 * 0.8
    n = 32e6
    t = phases_time(one, [dedup_dispatch(one, tuple(range(8)), 0.0, n, prof)])
    assert t == pytest.approx(one.latency(one.route(0, 1)) + 5e-6 + 7 * n / nvl, rel=1e-9)
    two = build(sandbox.load({"cluster": {"preset": "dgx-h100", "nodes": 2},
                             "parallel": {"dp": 16, "global_batch": 16}}).cluster)
    nic = two.cluster.nic_gbit_per_s / 8 * 1e9 * 0.8
    ph = dedup_dispatch(two, tuple(range(16)), 4 * n, n, prof)
    assert len(ph.paths) == 16 * 1 + 16 * 7  # one peer per GPU, 7 NVLink fan-outs
    lat = two.latency(two.route(0, 8, 0)) + two.latency(two.route(0, 1)) + 2 * 5e-6
    # disjoint links (GPU i -> NIC i -> rail -> GPU i of the other node; NVSwitch): the slower leg
    assert phases_time(two, [ph]) == pytest.approx(max(4 * n / nic, 7 * n / nvl) + lat, rel=1e-9)


def test_deepep_pair_bytes_closed_form():
    plan = _ep_plan(2, 16, routing="round-robin")  # 64 experts: 4 per rank, 32 per node
    t = plan.parallel.micro_batch * plan.model.seq_len
    h, w = plan.model.hidden, 2
    r_ = experts.distinct_units(plan.model, 16, 2)
    d_ = experts.distinct_units(plan.model, 2, 2)
    assert (r_, d_) == (2.0, 1.0)
    nic, nvl = dedup_pair_bytes(plan)
    assert nic == pytest.approx(t * h * w * d_ / 2)  # each remote node hit with P = D / n
    assert nvl == pytest.approx(t * h * w * 2 * r_ / 16)  # n T R / ep
    assert a2a_sent_bytes(plan) == pytest.approx(nic + 7 * nvl)
    # per token over the NICs: (n - 1) D / n copies instead of k (ep - G) / ep
    plain = dataclasses.replace(plan, parallel=dataclasses.replace(plan.parallel,
                                                                   ep_dispatch="all-to-all"))
    nic_plain = a2a_sent_bytes(plain) * 8 / 15  # of the ep - 1 = 15 peers, 8 are remote
    assert nic / nic_plain == pytest.approx((1 * d_ / 2) / (8 * 8 / 16))


def test_deepep_is_faster_across_nodes_and_uniform_routing_costs_more_nodes():
    prof = Profile(collective_efficiency=0.8, collective_step_latency_s=5e-6)
    rr = _ep_plan(4, 32, routing="round-robin")
    uni = _ep_plan(4, 32)
    plain = _ep_plan(4, 32, parallel={"ep_dispatch": "all-to-all"})
    topo = build(rr.cluster)
    t_rr, t_uni, t_plain = (a2a_time(p, topo, prof, 0) for p in (rr, uni, plain))
    assert t_rr < t_uni < t_plain
    nic_uni, _ = dedup_pair_bytes(uni)
    nic_rr, _ = dedup_pair_bytes(rr)
    assert nic_uni / nic_rr == pytest.approx(experts.distinct_units(uni.model, 4, 4)
                                             / experts.distinct_units(rr.model, 4, 4))
    assert simulate(rr, timeline=False).breakdown_s["ep_comm"] < \
        simulate(plain, timeline=False).breakdown_s["ep_comm"]


def test_dispatch_rules_one_line_each():
    for spec, field in (({"parallel": {"ep_dispatch": "nccl"}}, "parallel.ep_dispatch"),
                        ({"model": {"routing": "random"}}, "model.routing"),
                        ({"model": {"routing": "round-robin", "router_skew": 1.0}},
                         "model.routing"),
                        ({"model": {"max_route_nodes": 1, "experts_per_token": 20}},
                         "model.max_route_nodes"),
                        ({"parallel": {"pipeline_flushes": 3}}, "parallel.pipeline_flushes")):
        with pytest.raises(PlanError) as e:
            _ep_plan(4, 32, **spec.get("model", {}), parallel={"pp": 1,
                                                                **spec.get("parallel", {})})
        assert field in str(e.value)
    _ep_plan(4, 32, max_route_nodes=2)  # 2 nodes x 16 experts >= k = 8: accepted


# ---------------------------------------------------------------- flushes
TF, TB = 1.0, 2.0


def _pipe(p: int, m: int, flushes: int, sched: str = "1f1b", v: int = 1):
    plan = sandbox.load({"model": {"preset": "tiny", "layers": 4 * p * v},
                         "cluster": {"preset": "dgx-a100-80g", "nodes": 1, "gpus_per_node": p},
                         "parallel": {"pp": p, "vpp": v, "schedule": sched, "global_batch": m,
                                      "micro_batch": 1, "pipeline_flushes": flushes}})
    topo = build(plan.cluster)
    work = lowering.lower(plan, topo, Profile())
    for key in work.cost:
        work.cost[key] = OpCost({"F": TF, "B": TB, "W": 0.0}[key[2]] / v, 0.0)
    work.send_s = 0.0
    work.optimizer_s = [0.0] * p
    return engine.run(work, topo).step_time_s


@pytest.mark.parametrize("p,m,f", [(4, 8, 2), (4, 16, 4), (2, 6, 3)])
def test_each_flush_pays_the_fill_and_drain(p, m, f):
    assert _pipe(p, m, 1) == pytest.approx((m + p - 1) * (TF + TB))
    assert _pipe(p, m, f) == pytest.approx(f * (m // f + p - 1) * (TF + TB))


def test_interleaved_flushes_pay_the_interleaved_bubble_each():
    p, m, v, f = 4, 16, 2, 2
    per = m // f * (TF + TB) + (p - 1) * (TF + TB) / v
    assert _pipe(p, m, f, "interleaved-1f1b", v) == pytest.approx(f * per)


def test_flushed_schedule_numbers_micro_batches_on():
    ops = schedule("1f1b", 4, 8, 1, flushes=2)
    assert sorted(mb for k, mb, _ in ops if k == "F") == list(range(8))
    assert ops[:len(ops) // 2] == schedule("1f1b", 4, 4, 1)
    assert schedule("1f1b", 1, 8, 0, flushes=4) == schedule("1f1b", 1, 8, 0)  # no pipeline


def _validation_csvs() -> bool:
    from experiments.h100_cases import VALIDATION

    return (VALIDATION / "h100_automodel.csv").exists()


# the public CSVs live beside the checkout (../shared/validation/), not in it
@pytest.mark.skipif(not _validation_csvs(), reason="no published tables beside the checkout")
def test_validate_moe_rows_follow_their_benchmark_configs():
    from experiments import moe_published, validate_moe

    rows = {(r["model"], r["num_gpus"]): r for r in validate_moe.moe_rows()}
    plans, notes, _ = validate_moe.row_plans(rows[("DeepSeek V3 671B", "1024")])
    par = plans[0]["parallel"]
    assert (par["ep_dispatch"], par["pipeline_flushes"], par["recompute"]) == \
        ("deepep", 4, "full")
    assert plans[0]["model"]["routing"] == "round-robin"
    par = validate_moe.row_plans(rows[("GPT-OSS 120B", "64")])[0][0]["parallel"]
    assert (par["pipeline_flushes"], par["recompute"]) == (1, "none")  # pp 1; config: no AC
    assert validate_moe.row_plans(rows[("GPT-OSS 20B", "8")])[0][0]["parallel"]["ep"] == 8
    for e in moe_published.EXTERNAL:  # every published row is a valid plan with a source
        assert sandbox.load(e["plan"]).world_size == e["gpus"] and e["source"]
