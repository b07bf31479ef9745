"""Long context (issue 19, simulator): the all-gather CP method in closed form,
the ring's step time, causal balance of the simulated attention work, and
`sandbox info`'s activation memory under cp and sequence length."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import sandbox
from sandbox import memory
from sandbox.errors import PlanError
from sandbox.layout import cp_chunks, rank_of
from sandbox.profile import profile_for
from sim import block_kernels, compute, simulate
from sim.context_parallel import (
    cp_groups,
    cp_times,
    gather_s,
    gathered_kv_bytes,
    kv_chunk_bytes,
    ring_bytes_per_layer,
    ring_transfer_s,
)
from sim.network.collectives import Coll, collective_time
from sim.network.shared import shared


def llama8b(cp: int, seq: int = 32768, method: str = "ring", tp: int = 1, nodes: int = 1,
            recompute: str = "full", **cluster) -> sandbox.Plan:
    dp = 8 * nodes // (cp * tp)
    return sandbox.load({"model": {"preset": "llama3-8b", "seq_len": seq},
                         "cluster": {"preset": "dgx-h100", "nodes": nodes, **cluster},
                         "parallel": {"cp": cp, "tp": tp, "dp": dp, "micro_batch": 1,
                                      "global_batch": dp, "zero": 1, "recompute": recompute,
                                      "cp_method": method}})


def test_cp_method_is_validated_and_defaults_to_ring():
    assert llama8b(cp=2).parallel.cp_method == "ring"
    with pytest.raises(PlanError) as e:
        llama8b(cp=2, method="all-gather")
    assert e.value.problems == ["parallel.cp_method: unknown value 'all-gather' (did you mean "
                                "'allgather'?); choose one of ring, allgather"]


def test_ring_step_is_max_of_block_and_transfer_plus_the_exposed_last_hop():
    """The ring's attention core: cp steps of one compute block b each; each of
    the first cp - 1 steps takes max(b, transfer), the last only b, and the
    backward's final dKV hop to its owner comes on top:
    forward = b + (cp-1) max(b, t_kv); backward = 2b + (cp-1) max(2b, t_2kv) + t_kv."""
    for gb_per_s in (450.0, 0.05):  # NVLink hides the transfer; a slow link does not
        plan = llama8b(cp=8, intra_node_gb_per_s=gb_per_s)
        prof, topo = profile_for(plan.cluster), shared(plan.cluster)
        lt = compute.layer_times(plan, compute.device_of(plan, prof))
        c, kv = 8, kv_chunk_bytes(plan)
        b = lt.attn_core / c
        t_kv, t_2kv = (ring_transfer_s(plan, topo, prof, 0, n) for n in (kv, 2 * kv))
        fwd, bwd = cp_times(plan, topo, prof, 0, lt)
        assert lt.attn_core + fwd == pytest.approx(b + (c - 1) * max(b, t_kv))
        assert 2 * lt.attn_core + bwd == pytest.approx(2 * b + (c - 1) * max(2 * b, t_2kv) + t_kv)
        assert (t_kv < b) == (gb_per_s > 1)


@pytest.mark.parametrize("cp,tp", [(8, 1), (4, 2), (2, 4)])
def test_allgather_time_of_n_bytes_over_cp_ranks_closed_form(cp: int, tp: int):
    """One node, NVSwitch of per-GPU bandwidth B, hop latency alpha: every cp
    group (one per tp rank, all at once, each GPU on its own port) gathers the
    N-byte K/V buffer in (cp-1)/cp N / (B eff) + (cp-1)(alpha + step) seconds;
    the reduce-scatter of dK/dV likewise; forward exposes the gather, backward
    the gather again and the reduce-scatter."""
    bw, lat_us = 300.0, 2.0
    plan = llama8b(cp=cp, tp=tp, method="allgather", intra_node_gb_per_s=bw,
                   intra_node_latency_us=lat_us)
    prof, topo = profile_for(plan.cluster), shared(plan.cluster)
    m = plan.model
    n = gathered_kv_bytes(plan)
    assert n == 32768 * 2 * m.kv_dim / tp * 2 == cp * kv_chunk_bytes(plan)  # b s 2 kv_dim / tp bf16
    groups = cp_groups(plan, 0)
    assert groups == [tuple(rank_of(plan, 0, 0, t, c) for c in range(cp)) for t in range(tp)]
    expect = ((cp - 1) / cp * n / (bw * 1e9 * prof.collective_efficiency)
              + (cp - 1) * (lat_us * 1e-6 + prof.collective_step_latency_s))
    assert collective_time(topo, Coll("all_gather", groups[0], n), prof) == pytest.approx(expect)
    t_ag = gather_s(plan, topo, prof, 0, "all_gather", n)
    t_rs = gather_s(plan, topo, prof, 0, "reduce_scatter", n)
    assert t_ag == pytest.approx(expect) and t_rs == pytest.approx(expect)
    lt = compute.layer_times(plan, compute.device_of(plan, prof))
    assert cp_times(plan, topo, prof, 0, lt) == pytest.approx((expect, 2 * expect))
    # bytes one GPU sends per block: (cp-1)/cp N for the gather, the re-gather and
    # the reduce-scatter, and the forward's gather again under full recompute
    assert ring_bytes_per_layer(plan) == pytest.approx(4 * (cp - 1) / cp * n)


def test_allgather_across_nodes_pays_the_nics_and_shows_in_the_breakdown():
    """cp 16 over two nodes: the gather crosses the NICs, so it costs more than
    cp 8 inside a node, and the step's cp_comm is the blocks' exposed seconds:
    layers x (forward + backward + the forward's gather again, full recompute)."""
    inside, across = llama8b(cp=8, method="allgather"), llama8b(cp=16, method="allgather",
                                                                nodes=2)
    prof = profile_for(inside.cluster)
    t8 = gather_s(inside, shared(inside.cluster), prof, 0, "all_gather", gathered_kv_bytes(inside))
    t16 = gather_s(across, shared(across.cluster), prof, 0, "all_gather",
                   gathered_kv_bytes(across))
    assert t16 > t8
    r = simulate(across, timeline=False)
    lt = compute.layer_times(across, compute.device_of(across, prof))
    f, b = cp_times(across, shared(across.cluster), prof, 0, lt)
    assert r.breakdown_s["cp_comm"] == pytest.approx(across.model.layers * (2 * f + b))
    assert r.extra["cp_method"] == "allgather"
    assert sum(r.breakdown_s.values()) == pytest.approx(r.step_time_s)


def test_allgather_memory_is_the_gathered_kv_and_its_gradient_small_for_gqa():
    """A block's backward holds K, V of all s tokens and dK, dV: 2 b s 2 kv_dim / tp
    bytes (bf16), on a stage whose peak is a block's backward (pp 2, stage 0);
    GQA's 8 KV heads make it 1/4 of the MHA model's (32)."""
    def plan(method: str, kv_heads: int = 8) -> sandbox.Plan:
        return sandbox.load({"model": {"preset": "llama3-8b", "seq_len": 65536,
                                       "kv_heads": kv_heads},
                             "cluster": {"preset": "dgx-h100", "nodes": 1},
                             "parallel": {"cp": 4, "pp": 2, "dp": 1, "global_batch": 2,
                                          "recompute": "full", "cp_method": method}})
    ring, ag = plan("ring"), plan("allgather")
    expect = 2 * 65536 * 2 * 1024 * 2
    assert memory.cp_gather_bytes(ag) == expect and memory.cp_gather_bytes(ring) == 0
    m_ring, m_ag = memory.memory_per_gpu(ring, 0), memory.memory_per_gpu(ag, 0)
    assert m_ag["other"] - m_ring["other"] == pytest.approx(expect / 1e9)
    assert m_ag["activations"] == m_ring["activations"]
    assert memory.cp_gather_bytes(plan("allgather", kv_heads=32)) == 4 * expect


def test_cp_method_does_not_move_a_plan_without_cp():
    one = dict(model={"preset": "llama3-8b", "seq_len": 8192},
               cluster={"preset": "dgx-h100", "nodes": 1},
               parallel={"dp": 8, "global_batch": 8})
    ring = simulate(sandbox.load(one), timeline=False)
    ag = simulate(sandbox.load({**one, "parallel": {**one["parallel"], "cp_method": "allgather"}}),
                  timeline=False)
    assert ag.step_time_s == ring.step_time_s and "cp_comm" not in ag.breakdown_s
    assert ag.memory_gb_per_gpu == ring.memory_gb_per_gpu


@pytest.mark.parametrize("cp", [2, 4, 8])
def test_causal_balance_equal_causal_flops_per_rank(cp: int):
    """Rank k's chunks k and 2cp-1-k of n tokens: its queries see k n + (2cp-1-k) n
    earlier keys plus two causal diagonals, (2cp - 1) n^2 + n(n+1) pairs, the
    same for every k and 1/cp of the sequence's s(s+1)/2 (s = 2 cp n); each pair
    costs 4 head_dim FLOPs per head forward (QK^T and PV). The simulator charges
    every rank that share: its flash work is 1/cp of the unsplit sequence's."""
    n, hd, heads = 64, 128, 32
    s = 2 * cp * n
    flops = [4 * hd * heads * sum(c * n * n + n * (n + 1) // 2 for c in cp_chunks(cp, r))
             for r in range(cp)]
    assert flops == [4 * hd * heads * ((2 * cp - 1) * n * n + n * (n + 1))] * cp
    assert sum(flops) == 4 * hd * heads * s * (s + 1) // 2
    # the simulator: a cp rank's executed causal FLOPs are 1/cp of cp = 1's
    one, split = llama8b(cp=1), llama8b(cp=cp)
    prof = profile_for(one.cluster)
    m = one.model

    def executed(plan: sandbox.Plan) -> float:
        q = plan.model.seq_len // plan.parallel.cp
        sq = (prof.padded_gemm_flops(q, m.seq_len, m.head_dim, m.heads)
              + prof.padded_gemm_flops(q, m.head_dim, m.seq_len, m.heads))
        return block_kernels.flash_work(plan, sq).fwd_flops
    assert executed(split) * cp == pytest.approx(executed(one))


def info_json(cp: int, seq: int, tmp_path) -> dict:
    """`sandbox info PLAN --json` of llama3-8b on one DGX H100 (selective recompute)."""
    path = tmp_path / f"cp{cp}_{seq}.toml"
    path.write_text(f'[model]\npreset = "llama3-8b"\nseq_len = {seq}\n'
                    f'[cluster]\npreset = "dgx-h100"\nnodes = 1\n'
                    f'[parallel]\ncp = {cp}\ndp = {8 // cp}\nglobal_batch = {8 // cp}\n')
    out = subprocess.run([sys.executable, "-m", "sandbox", "info", str(path), "--json"],
                         capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout)["memory_gb_per_gpu"]


def test_sandbox_info_activations_divide_by_cp_and_grow_linearly(tmp_path):
    """Issue 19's must-show: llama3-8b at 32K tokens, cp 4 keeps 1/4 (within 20%)
    of cp 1's activations; from 8K to 32K tokens they grow 4x (flash attention
    stores no s x s tensor), not 16x."""
    cp1, cp4, short = info_json(1, 32768, tmp_path), info_json(4, 32768, tmp_path), \
        info_json(1, 8192, tmp_path)
    assert cp4["activations"] / cp1["activations"] == pytest.approx(0.25, rel=0.2)
    assert cp1["activations"] / short["activations"] == pytest.approx(4.0, rel=0.2)
    # the same through the Python API, for ring and all-gather alike
    for method in ("ring", "allgather"):
        a = sandbox.info(llama8b(cp=4, method=method, recompute="selective")).to_dict()
        assert a["memory_gb_per_gpu"]["activations"] == pytest.approx(cp4["activations"])


def test_search_enumerates_cp_only_for_long_sequences_and_bounds_it():
    """Below `CP_MIN_SEQ_LEN` tokens every candidate has cp = 1 (the space of a
    short-sequence search is unchanged); from it, cp runs over the divisors of
    the GPUs left by tp x pp that cut the sequence into 2 cp chunks, ring
    unless cp_method is fixed; the bound stays below the simulated step."""
    from sim.search import space
    short = space.base_plan("llama3-8b", "dgx-h100", 16, 16, seq_len=8192)
    assert {par.cp for par in space.candidates(short)} == {1}
    long = space.base_plan("llama3-8b", "dgx-h100", 16, 16, seq_len=space.CP_MIN_SEQ_LEN * 8)
    seen = {(par.tp, par.pp, par.cp, par.dp) for par in space.candidates(long, {"pp": 1})}
    assert {c for t, p, c, d in seen if t == 1} == {1, 2, 4, 8, 16}
    assert all(t * p * c * d == 16 for t, p, c, d in seen)
    assert {par.cp_method for par in space.candidates(long, {"pp": 1})} == {"ring"}
    both = {par.cp_method for par in space.candidates(long, {"pp": 1, "cp": 4,
                                                            "cp_method": ["ring", "allgather"]})}
    assert both == {"ring", "allgather"}
    odd = space.base_plan("llama3-8b", "dgx-h100", 16, 16, seq_len=3 * 2 ** 13)  # 24576 = 2^13 * 3
    assert max(par.cp for par in space.candidates(odd, {"pp": 1})) == 16  # 24576 / 32 = 768
    with pytest.raises(sandbox.SandboxError, match="fix: cp_method = 'ringg' is not one of"):
        space.check_fix({"cp_method": "ringg"})
    for method in ("ring", "allgather"):
        plan = llama8b(cp=8, seq=131072, nodes=2, method=method, recompute="full")
        assert space.step_time_lower_bound(plan) < simulate(plan, timeline=False).step_time_s


def test_reports_show_cp_traffic():
    """`sandbox report`'s table has the plan's cp, method and cp_comm seconds, its
    breakdown figure a cp comm bar; a plan without cp shows neither."""
    from sandbox import plots, report
    ring = llama8b(cp=8, seq=131072, nodes=2)
    dense = llama8b(cp=1, seq=8192)
    results = [simulate(p, timeline=False) for p in (ring, dense)]
    table = report.compare_table([ring, dense], results, ["cp8", "dense"])
    assert table.loc["cp", "cp8"] == 8 and table.loc["cp_method", "cp8"] == "ring"
    assert table.loc["cp_comm (s)", "cp8"] == pytest.approx(results[0].breakdown_s["cp_comm"])
    assert table["dense"].isna()[["cp", "cp_comm (s)"]].all()
    fig = plots.breakdown_bars(["cp8", "dense"], [r.breakdown_s for r in results])
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "CP comm" in labels
    dense_fig = plots.breakdown_bars(["dense"], [results[1].breakdown_s])
    assert "cp comm" not in [t.get_text() for t in dense_fig.axes[0].get_legend().get_texts()]
