"""ZeRO-3 / FSDP priced per micro-batch (issue 17), checked against the closed form.

What the simulator models (`sim.sync.variants`, `sim.engine`): each chunk's
parameters all-gathered over dp, one collective per FSDP unit (every block,
plus the root's embedding / head), before every micro-batch's forward and,
with `reshard_after_forward`, again before its backward; the gathers run on
their own stream as flows, prefetched one op ahead, except a forward's first
unit (FSDP2's root pre-forward makes the gather streams wait for the compute
stream); FSDP2's copy-out of each gather on the compute stream; gradients
reduce-scattered after every micro-batch (torchtitan's default, and what keeps
ZeRO-3's gradients sharded in memory).
"""

from __future__ import annotations

import pytest

import sandbox
from sandbox import memory
from sandbox.profile import profile_for
from sim import simulate
from sim.network.collectives import Coll, collective_time
from sim.network.topology import build


def plan(**par):
    """gpt3-1.3b on 16 A100 (2 nodes): one stage, dp 16, 4 micro-batches."""
    base = {"tp": 1, "pp": 1, "dp": 16, "micro_batch": 1, "global_batch": 64, "zero": 1}
    return sandbox.load({"model": {"preset": "gpt3-1.3b"},
                         "cluster": {"preset": "dgx-a100-80g", "nodes": 2},
                         "parallel": {**base, **par}})


def llama70b(**par):
    """Issue 17's plan: llama3-70b on 256 H100 (32 dgx-h100), tp 4, dp 64, 8 micro-batches."""
    base = {"tp": 4, "pp": 1, "dp": 64, "micro_batch": 1, "global_batch": 512, "zero": 1}
    return sandbox.load({"model": {"preset": "llama3-70b"},
                         "cluster": {"preset": "dgx-h100", "nodes": 32},
                         "parallel": {**base, **par}})


def _post_step_gather(r) -> float:
    (g,) = [s for s in r.timeline if s["kind"] == "param_allgather"]
    return g["end_s"] - g["start_s"]


@pytest.mark.parametrize("reshard", [True, False])
def test_closed_form_bytes_and_time(reshard):
    z1, z3 = plan(), plan(zero=3, reshard_after_forward=reshard)
    r1, r3 = simulate(z1), simulate(z3)
    m, d = z3.parallel.microbatches, z3.parallel.dp
    n = memory.stage_params_per_gpu(z3.model, 1, 1, 0)  # parameters of the one stage
    gathers = (2 if reshard else 1) * m
    assert r3.extra["zero3_gathers_per_step"] == gathers
    # bytes: one reduce-scatter of the fp32 gradients per micro-batch (ZeRO-1:
    # one per step) plus every gather of the 16-bit weights, ring (d-1)/d each
    rs = n * 4 * (d - 1) / d
    ag = gathers * n * 2 * (d - 1) / d
    assert r1.extra["dp_bytes_per_gpu"] == pytest.approx(rs, rel=1e-9)
    assert r3.extra["zero3_allgather_bytes_per_gpu"] == pytest.approx(ag, rel=1e-9)
    assert r3.extra["dp_bytes_per_gpu"] == pytest.approx(
        r1.extra["dp_bytes_per_gpu"] + (m - 1) * rs + ag, rel=1e-9)
    # time: the collective model the simulator uses, on the 16-GPU ring
    topo, prof = build(z3.cluster), profile_for(z3.cluster)
    ring = tuple(range(d))
    units = z3.model.layers + 1
    t_unit = collective_time(topo, Coll("all_gather", ring, n * 2 / units), prof)
    t_rs = collective_time(topo, Coll("reduce_scatter", ring, n * 4), prof)
    copy = r3.extra["zero3_copy_out_s"][0]
    assert copy > 0
    # ZeRO-3 has no post-step gather (and may hide the last reduction's tail,
    # ZeRO-1's other exposed DP time); beyond ZeRO-1's compute it costs at least
    # every forward's first unit and the copy-outs, at most every gather, the
    # copy-outs and the extra reductions, all exposed
    base = r1.step_time_s - _post_step_gather(r1)
    lower = r1.step_time_s - r1.breakdown_s["dp_comm"] + m * t_unit + gathers * copy
    upper = base + gathers * units * t_unit + gathers * copy + (m - 1) * t_rs
    msg = (f"reshard={reshard}: ZeRO-1 {r1.step_time_s:.6f} s (post-step gather "
           f"{_post_step_gather(r1):.6f} s), ZeRO-3 {r3.step_time_s:.6f} s, bounds "
           f"[{lower:.6f}, {upper:.6f}] s; unit gather {t_unit:.6f} s, copy-out {copy:.6f} s")
    assert lower * (1 - 1e-9) <= r3.step_time_s <= upper, msg
    # the exposed part is on the data-parallel stream
    assert r3.breakdown_s["dp_comm"] >= m * t_unit * (1 - 1e-9), msg


def test_llama3_70b_zero3_slower_and_moves_more_bytes():
    r1, r3 = simulate(llama70b(zero=1)), simulate(llama70b(zero=3))
    b1, b3 = r1.extra["dp_bytes_per_gpu"], r3.extra["dp_bytes_per_gpu"]
    msg = (f"llama3-70b 256 H100: ZeRO-1 {r1.step_time_s:.6f} s {b1 / 1e9:.1f} GB/GPU, "
           f"ZeRO-3 {r3.step_time_s:.6f} s {b3 / 1e9:.1f} GB/GPU")
    assert r3.step_time_s > r1.step_time_s, msg
    p = llama70b(zero=3)
    m, d = p.parallel.microbatches, p.parallel.dp
    n = memory.stage_params_per_gpu(p.model, 4, 1, 0)
    assert b3 == pytest.approx(m * b1 + 2 * m * n * 2 * (d - 1) / d, rel=1e-9), msg
    assert b3 > b1


@pytest.mark.parametrize("make", [plan, llama70b])
def test_no_reshard_is_faster_and_holds_more(make):
    keep, reshard = make(zero=3, reshard_after_forward=False), make(zero=3)
    rk, rr = simulate(keep), simulate(reshard)
    msg = f"no reshard {rk.step_time_s:.6f} s, reshard {rr.step_time_s:.6f} s"
    assert rk.step_time_s < rr.step_time_s, msg
    assert rk.extra["dp_bytes_per_gpu"] < rr.extra["dp_bytes_per_gpu"]
    assert rk.memory_gb_per_gpu["params"] > rr.memory_gb_per_gpu["params"]
    assert rk.memory_gb_per_gpu["total"] > rr.memory_gb_per_gpu["total"]


def test_memory_of_gathered_units():
    p, tp = llama70b(zero=3), 4
    m, d = p.model, p.parallel.dp
    n = memory.stage_params_per_gpu(m, tp, 1, 0)
    block = memory.layer_params_per_gpu(m, tp)
    root = n - m.layers * block  # embedding, final norm and head
    gathered = 2 * max(block, root)  # the unit computing and the one prefetched
    got = memory.memory_per_gpu(p)["params"]
    # FSDP2 keeps the fp32 shard (the optimizer's master) and gathers 16-bit units
    assert got == pytest.approx((n * 4 / d + gathered * 2) / 1e9, rel=1e-12)
    keep = memory.memory_per_gpu(llama70b(zero=3, reshard_after_forward=False))["params"]
    assert keep == pytest.approx((n * 4 / d + n * 2) / 1e9, rel=1e-12)
    whole = memory.memory_per_gpu(p)
    assert whole["grads"] == pytest.approx(n * 4 / d / 1e9, rel=1e-12)
    assert whole["optimizer"] == pytest.approx(n * 8 / d / 1e9, rel=1e-12)
    # the flag changes nothing below ZeRO-3
    for z in (0, 1, 2):
        assert memory.memory_per_gpu(llama70b(zero=z, reshard_after_forward=False)) == \
            memory.memory_per_gpu(llama70b(zero=z))
        assert simulate(plan(zero=z, reshard_after_forward=False)).step_time_s == \
            simulate(plan(zero=z)).step_time_s


def test_hsdp_bytes_and_memory_closed_form():
    """HSDP (dp_shard 8 of dp 64): ZeRO-3's gathers and per-micro-batch
    reduce-scatters over the shard group, one all-reduce of the 1/8 shards
    across the replicate group per step; shards divide by 8, not 64."""
    z3, h = llama70b(zero=3), llama70b(zero=3, dp_shard=8)
    rz, rh = simulate(z3, timeline=False), simulate(h, timeline=False)
    m, d, k = h.parallel.microbatches, h.parallel.dp, 8
    r = d // k
    n = memory.stage_params_per_gpu(h.model, 4, 1, 0)
    gathers = rh.extra["zero3_gathers_per_step"]
    ag = gathers * n * 2 * (k - 1) / k
    grads = m * n * 4 * (k - 1) / k + 2 * (r - 1) / r * n * 4 / k
    assert rh.extra["dp_shard"] == k
    assert rh.extra["zero3_allgather_bytes_per_gpu"] == pytest.approx(ag, rel=1e-9)
    assert rh.extra["dp_bytes_per_gpu"] == pytest.approx(ag + grads, rel=1e-9)
    assert rh.extra["dp_bytes_per_gpu"] < rz.extra["dp_bytes_per_gpu"]
    block = memory.layer_params_per_gpu(h.model, 4)
    gathered = 2 * max(block, n - h.model.layers * block)
    mh = memory.memory_per_gpu(h)
    assert mh["params"] == pytest.approx((n * 4 / k + gathered * 2) / 1e9, rel=1e-12)
    assert mh["optimizer"] == pytest.approx(n * 8 / k / 1e9, rel=1e-12)  # moments only
    assert mh["grads"] == pytest.approx(n * 4 / k / 1e9, rel=1e-12)
    # ZeRO-1 HSDP: one reduce-scatter over the shard group and the all-reduce per step
    r1 = simulate(llama70b(zero=1, dp_shard=8), timeline=False)
    assert r1.extra["dp_bytes_per_gpu"] == pytest.approx(
        n * 4 * (k - 1) / k + 2 * (r - 1) / r * n * 4 / k, rel=1e-9)
    assert memory.memory_per_gpu(llama70b(zero=1, dp_shard=8))["optimizer"] == \
        pytest.approx(n * 12 / k / 1e9, rel=1e-12)
    # dp_shard = dp is plain ZeRO
    assert simulate(llama70b(zero=3, dp_shard=64), timeline=False).step_time_s == \
        rz.step_time_s


def test_hsdp_in_node_shards_gather_on_nvlink():
    """gpt3-1.3b on 2 A100 nodes: sharding inside each node (dp_shard 8) takes
    the per-micro-batch gathers off the inter-node network, so less
    data-parallel time is exposed, at least every forward's first unit on
    NVLink; the optimizer steps on a shard twice as large."""
    z3, h = plan(zero=3), plan(zero=3, dp_shard=8)
    rz, rh = simulate(z3), simulate(h)
    topo, prof = build(h.cluster), profile_for(h.cluster)
    n = memory.stage_params_per_gpu(h.model, 1, 1, 0)
    units, m = h.model.layers + 1, h.parallel.microbatches
    t_node = collective_time(topo, Coll("all_gather", tuple(range(8)), n * 2 / units), prof)
    t_ring = collective_time(topo, Coll("all_gather", tuple(range(16)), n * 2 / units), prof)
    assert t_node < t_ring
    msg = f"ZeRO-3 {rz.step_time_s:.6f} s, HSDP {rh.step_time_s:.6f} s"
    assert m * t_node * (1 - 1e-9) <= rh.breakdown_s["dp_comm"] < rz.breakdown_s["dp_comm"], msg
    assert rh.breakdown_s["optimizer"] > rz.breakdown_s["optimizer"], msg


@pytest.mark.parametrize("schedule,vpp", [("1f1b", 1), ("interleaved-1f1b", 2)])
def test_pipelined_zero3_gathers_once_and_reduces_once(schedule, vpp):
    """pp 2 (torch.distributed.pipelining driving FSDP2): each chunk gathered
    once per step and kept unsharded, gradients accumulated unsharded in fp32
    and reduce-scattered once per step, whatever `reshard_after_forward` says."""
    p = plan(zero=3, pp=2, dp=8, global_batch=32, schedule=schedule, vpp=vpp)
    r = simulate(p)
    d, v = p.parallel.dp, vpp
    assert p.parallel.microbatches == 4 and memory.zero3_pipelined(p)
    assert r.extra["zero3_gathers_per_step"] == v
    assert r.extra["reshard_after_forward"] is False
    ns = [memory.stage_params_per_gpu(p.model, 1, 2, s, memory.stage_layer_count(p, s))
          for s in range(2)]
    ring = (d - 1) / d
    assert r.extra["zero3_allgather_bytes_per_gpu"] == pytest.approx(max(ns) * 2 * ring,
                                                                     rel=1e-9)
    assert r.extra["dp_bytes_per_gpu"] == pytest.approx(max(n * (4 + 2) * ring for n in ns),
                                                        rel=1e-9)
    # one gather span per chunk on every stage's first rank
    gathers = [x for x in r.timeline if x["kind"] == "param_allgather"]
    assert len(gathers) == 2 * v
    # memory: the fp32 shard, the stage's full 16-bit parameters, the fp32 shard
    # gradient and the unsharded fp32 accumulator, AdamW moments on the shard
    for s, n in enumerate(ns):
        mem = memory.memory_per_gpu(p, s)
        assert mem["params"] == pytest.approx((n * 4 / d + n * 2) / 1e9, rel=1e-12)
        assert mem["grads"] == pytest.approx((n * 4 / d + n * 4) / 1e9, rel=1e-12)
        assert mem["optimizer"] == pytest.approx(n * 8 / d / 1e9, rel=1e-12)
    keep = plan(zero=3, pp=2, dp=8, global_batch=32, schedule=schedule, vpp=vpp,
                reshard_after_forward=False)
    assert memory.memory_per_gpu(keep) == memory.memory_per_gpu(p)
    assert simulate(keep, timeline=False).step_time_s == simulate(p, timeline=False).step_time_s
    # against per-micro-batch gathers and reduce-scatters (pp 1's pricing): fewer bytes
    assert r.extra["dp_bytes_per_gpu"] < max(n * ring * (4 * 4 + 2 * 4 * 2) for n in ns)


def test_pp1_zero3_not_pipelined():
    """pp 1 keeps the per-micro-batch pricing (the closed forms above)."""
    assert not memory.zero3_pipelined(plan(zero=3))
    assert not memory.zero3_pipelined(plan(zero=1, pp=2, dp=8, global_batch=32))
