"""Simulator for mixture-of-experts and MLA (issue 18): closed-form
all-to-all, router imbalance, expert parallelism over the topology, expert
gradient reduction, MLA GEMM shapes, search over ep."""

from __future__ import annotations

import dataclasses

import pytest

import sandbox
from sandbox import counts, experts
from sandbox.errors import PlanError
from sandbox.profile import Profile, bus_factor, padded_gemm_flops, profile_for
from sim import compute, moe_compute, simulate
from sim.network.collectives import Coll, collective_time
from sim.network.topology import build

# a small MoE: 4 blocks (1 dense), 16 experts of 512, top-2, one shared expert
MOE = {"layers": 4, "hidden": 1024, "heads": 8, "kv_heads": 8, "vocab": 4096, "seq_len": 1024,
       "activation": "swiglu", "norm": "rmsnorm", "position": "rope", "bias": False,
       "tied_embeddings": False, "ffn_hidden": 2048, "experts": 16, "experts_per_token": 2,
       "expert_ffn_hidden": 512, "shared_experts": 1, "dense_layers": 1}


def _plan(model=None, cluster=None, **par):
    par = {"dp": 8, "ep": 1, "global_batch": 16, "zero": 1, "recompute": "none", **par}
    cl = {"preset": "dgx-h100", "nodes": 1, "gpus_per_node": min(8, par["dp"]),
          **(cluster or {})}
    return sandbox.load({"model": {**MOE, **(model or {})}, "cluster": cl, "parallel": par})


def test_all_to_all_closed_form_one_link_class():
    prof = Profile(collective_efficiency=0.8, collective_step_latency_s=5e-6)
    n = 64e6
    one = build(sandbox.load({"cluster": {"preset": "dgx-h100", "nodes": 1}}).cluster)
    for p in (2, 4, 8):
        ranks = tuple(range(p))
        t = collective_time(one, Coll("all_to_all", ranks, n), prof)
        hop = one.latency(one.route(0, 1))
        bw = one.cluster.intra_node_gb_per_s * 1e9 * 0.8
        assert t == pytest.approx(hop + 5e-6 + n * (p - 1) / p / bw, rel=1e-9)
    # one GPU per node: every byte crosses the NICs (one per GPU)
    cl = sandbox.load({"cluster": {"preset": "dgx-h100", "nodes": 4, "gpus_per_node": 1,
                                   "nics_per_node": 1}}).cluster
    net = build(cl)
    t = collective_time(net, Coll("all_to_all", (0, 1, 2, 3), n), prof)
    hop = max(net.latency(net.route(a, b)) for a in range(4) for b in range(4) if a != b)
    bw = cl.nic_gbit_per_s / 8 * 1e9 * 0.8
    assert t == pytest.approx(hop + 5e-6 + n * 3 / 4 / bw, rel=1e-9)


def _zipf_skew_for_share(share: float, e: int) -> float:
    """The router_skew giving the most popular of e experts `share` (bisection)."""
    lo, hi = 0.0, 20.0
    for _ in range(200):
        mid = (lo + hi) / 2
        top = 1.0 / sum(1.0 / (j + 1) ** mid for j in range(e))
        lo, hi = (mid, hi) if top < share else (lo, mid)
    return (lo + hi) / 2


def test_imbalance_doubling_one_expert_slows_its_gemms_as_the_closed_form():
    # 4 experts on ep = 4 ranks (one expert each), top-1: balanced each expert
    # gets tokens x ep / 4 = tokens; a skew giving the hottest one 1/2 doubles it
    model = {"experts": 4, "experts_per_token": 1}
    base = _plan(model, dp=4, ep=4, global_batch=8)
    skew = _zipf_skew_for_share(0.5, 4)
    hot = _plan({**model, "router_skew": skew}, dp=4, ep=4, global_batch=8)
    tokens = base.parallel.micro_batch * base.model.seq_len
    assert moe_compute.expert_tokens(base) == [tokens]
    assert moe_compute.expert_tokens(hot) == [pytest.approx(2 * tokens, rel=1e-9)]
    d = compute.device_of(hot, sandbox.profile.profile_for(hot.cluster))
    pr = d.profile
    assert not pr.matmul  # the scalar curve: eff(F) = e F / (F + half)

    def gemm(m_, n_, k_):  # sim.compute.gemm_time written out for bf16
        f = padded_gemm_flops(m_, n_, k_, tile=pr.gemm_tile)
        eff = pr.matmul_efficiency * f / (f + pr.matmul_half_flops)
        nbytes = 2 * (m_ * k_ + k_ * n_ + m_ * n_)
        return pr.kernel_overhead_s + max(f / (d.peak_flops * eff),
                                          nbytes / pr.memory_rate(d.hbm_bytes_per_s))

    def expert_fwd(n):
        h, f = 1024, 512
        return gemm(n, 2 * f, h) + gemm(n, h, f)

    t1 = moe_compute.routed_times(base, d).expert_fwd
    t2 = moe_compute.routed_times(hot, d).expert_fwd
    assert t1 == pytest.approx(expert_fwd(tokens), rel=1e-12)
    assert t2 == pytest.approx(expert_fwd(2 * tokens), rel=1e-12)
    assert t2 / t1 == pytest.approx(expert_fwd(2 * tokens) / expert_fwd(tokens), rel=1e-12)
    # the whole MoE layer is slower by at least that; the load factor says 2
    lt1, lt2 = (compute.layer_times(p, d, moe=True) for p in (base, hot))
    assert lt2.fwd - lt1.fwd >= t2 - t1 > 0
    assert experts.load_factor(hot.model, tokens, 4, 0) == pytest.approx(2.0, rel=1e-9)


def test_capacity_drops_tokens_and_reports_the_fraction():
    plan = _plan({"router_skew": 1.0, "capacity_factor": 1.25}, dp=4, ep=4, global_batch=8)
    m, tokens = plan.model, plan.model.seq_len
    loads = experts.expert_loads(m, tokens, 4)
    cap = experts.expert_capacity(m, 4 * tokens)
    assert max(loads) == pytest.approx(cap) and sum(loads) < 4 * tokens * 2
    frac = experts.dropped_fraction(m, tokens, 4)
    assert frac == pytest.approx(1 - sum(loads) / (4 * tokens * 2)) and frac > 0
    res = simulate(plan, timeline=False)
    assert res.extra["moe_dropped_fraction"] == pytest.approx(frac)
    assert experts.dropped_fraction(_plan().model, tokens, 4) == 0.0


def test_router_skew_validated():
    with pytest.raises(PlanError, match="model.router_skew: must not be negative"):
        _plan({"router_skew": -1.0})
    with pytest.raises(PlanError, match="model.router_skew: needs model.experts"):
        sandbox.load({"model": {"preset": "tiny", "router_skew": 1.0}})


def test_ep_comm_present_with_ep_and_absent_otherwise():
    r1 = simulate(_plan(ep=1), timeline=False)
    r4 = simulate(_plan(ep=4), timeline=False)
    dense = simulate(sandbox.load({"model": {"preset": "tiny"}, "cluster": {
        "preset": "dgx-h100", "nodes": 1}, "parallel": {"dp": 8, "global_batch": 16}}),
        timeline=False)
    assert "ep_comm" not in r1.breakdown_s and "ep_comm" not in dense.breakdown_s
    assert r4.breakdown_s["ep_comm"] > 0
    assert sum(r4.breakdown_s.values()) == pytest.approx(r4.step_time_s, rel=1e-9)
    sent = experts.dispatch_elements(_plan(ep=4).model, 1024, 4) * 2  # bf16
    assert sent == 1024 * 2 * 3 / 4 * 1024 * 2
    assert r4.extra["ep_a2a_bytes"] == pytest.approx(sent)
    # 4 all-to-alls per MoE block and micro-batch, 3 MoE blocks, 2 micro-batches
    assert r4.extra["ep_bytes_per_gpu"] == pytest.approx(4 * sent * 3 * 2)


def test_ep_overlap_hides_all_to_all_behind_attention_and_shared_experts():
    model = {"hidden": 2048, "heads": 16, "kv_heads": 16, "expert_ffn_hidden": 1024}
    cl = {"nodes": 2, "gpus_per_node": 4}
    # the GPU's timeline only: this small plan is host-bound at the H100 profile's
    # dispatch cost, where no overlap on the GPU can shorten the step
    plan = _plan(model, cl, ep=8, micro_batch=2)
    prof = dataclasses.replace(profile_for(plan.cluster), host_op_overhead_s=0.0)
    plain = simulate(plan, profile=prof, timeline=False)
    hidden = simulate(_plan(model, cl, ep=8, micro_batch=2, ep_overlap=True), profile=prof,
                      timeline=False)
    assert hidden.breakdown_s["ep_comm"] < plain.breakdown_s["ep_comm"]
    assert hidden.step_time_s < plain.step_time_s


def test_ep_across_nodes_is_slower_than_inside_one():
    model = {"hidden": 2048, "heads": 16, "kv_heads": 16, "expert_ffn_hidden": 1024}
    inside = simulate(_plan(model, ep=8, micro_batch=2), timeline=False)
    across = simulate(_plan(model, {"nodes": 2, "gpus_per_node": 4}, ep=8, micro_batch=2),
                      timeline=False)
    assert across.breakdown_s["ep_comm"] > 2 * inside.breakdown_s["ep_comm"]
    assert across.step_time_s > inside.step_time_s
    assert across.breakdown_s["compute"] == pytest.approx(inside.breakdown_s["compute"],
                                                          rel=1e-9)


def test_expert_gradients_reduce_over_expert_data_parallel_groups():
    plan = _plan(dp=8, ep=4)  # edp = 2
    m = plan.model
    routed = experts.moe_layers(m) * m.experts * counts.expert_params(m)
    dense = counts.param_count(m) - routed
    per_gpu_routed = routed / 4
    expect = 4 * (bus_factor("reduce_scatter", 8) * dense
                  + bus_factor("reduce_scatter", 2) * per_gpu_routed)  # fp32 gradients
    res = simulate(plan, timeline=False)
    assert res.extra["dp_bytes_per_gpu"] == pytest.approx(expect, rel=1e-9)
    # ep = dp: every expert shard has one replica, nothing to reduce for experts
    res8 = simulate(_plan(dp=8, ep=8), timeline=False)
    assert res8.extra["dp_bytes_per_gpu"] == pytest.approx(
        4 * bus_factor("reduce_scatter", 8) * dense, rel=1e-9)


def test_moe_layer_prices_router_experts_and_shared_expert():
    plan = _plan()
    d = compute.device_of(plan, sandbox.profile.profile_for(plan.cluster))
    dense, moe = compute.layer_times(plan, d), compute.layer_times(plan, d, moe=True)
    r = moe_compute.routed_times(plan, d)
    gemms, groups = compute.block_gemms(plan, 1024, moe=True)
    assert gemms[-2:] == [(1024, 2 * 512, 1024), (1024, 1024, 512)]  # the shared expert
    assert moe.fwd > r.fwd > r.expert_fwd > 0 and moe.ep_hide[0] > 0
    assert dense.ep_hide == (0.0, 0.0)
    # a chunk of one dense + three MoE blocks costs each kind its own
    res = simulate(plan, timeline=False)
    assert res.step_time_s > 0 and res.extra["moe_load_factor"] == 1.0


def test_mla_gemms_follow_the_projections():
    plan = sandbox.load({"model": {"preset": "tiny-mla"}, "parallel": {"tp": 1}})
    m = plan.model
    gemms, groups = compute.block_gemms(plan, 128)
    attn = [g for i in groups[0] + groups[1] for g in [gemms[i]]]
    assert sum(2 * M * N * K for M, N, K in attn) == 128 * 2 * sum(
        i * o for i, o in counts.mla_projections(m))
    plan2 = dataclasses.replace(plan, parallel=dataclasses.replace(plan.parallel, tp=2))
    down = compute.block_gemms(plan2, 128)[0]
    assert (128, m.kv_lora_rank + m.qk_rope_head_dim, m.hidden) in down  # replicated


def test_search_enumerates_ep_for_moe_only():
    from sim.search.space import base_plan, candidates

    moe = base_plan(dict(MOE), "dgx-h100", 8, 16)
    eps = {c.ep for c in candidates(moe, {"tp": 1, "pp": 1, "micro_batch": 1, "zero": 1,
                                          "recompute": "none"})}
    assert eps == {1, 2, 4, 8}
    dense = base_plan("tiny", "dgx-h100", 8, 16)
    assert {c.ep for c in candidates(dense, {"tp": 1, "pp": 1})} == {1}
