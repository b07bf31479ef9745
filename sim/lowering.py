"""Lowering: a plan -> the work of each pipeline rank of one data-parallel replica.

Ranks follow Megatron-LM's order (tensor-parallel fastest, then data, then
pipeline): `rank = (stage * dp + d) * tp + t`. The tensor-parallel ranks of
a stage do identical work, so one of them stands for all; their concurrent
flows are still placed on the network (pipeline sends, data-parallel rings).
Per (stage, chunk) and op kind the lowering gives the compute seconds and the
tensor-parallel communication seconds (TP collectives block the compute
stream in Megatron-LM, so they are serialised with it); the pipeline send
time between stages; the data-parallel gradient collectives per bucket as
flow phases; the ZeRO-3 parameter all-gather per op; the optimizer step.
Units: seconds, bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from sandbox import memory
from sandbox.profile import Profile
from sandbox.specs import Plan
from sim import compute
from sim.collectives import Coll, Phase, collective_time, concurrent_time, phases
from sim.host import ATTENTION_GEMMS, host_ops
from sim.schedules import Op, schedule
from sim.topology import Topology

DEFAULT_BUCKET_PARAMS = 40_000_000  # Megatron-LM's gradient bucket (--ddp-bucket-size)


@dataclass
class OpCost:
    """GPU compute and blocking TP communication of one op, and the host's
    dispatch time for it (the op takes the larger: `sim.host`)."""

    compute_s: float
    tp_s: float
    host_s: float = 0.0

    @property
    def total(self) -> float:
        return max(self.compute_s + self.tp_s, self.host_s)


@dataclass
class Work:
    plan: Plan
    p: int
    m: int
    v: int
    ops: list[list[Op]]  # per pipeline rank
    cost: dict[tuple[int, int, str], OpCost]  # (stage, chunk, kind) -> cost
    send_s: float  # activation (or gradient) between adjacent stages
    dp_buckets: list[list[tuple[float, list[Phase]]]]  # per stage: (params, phases)
    dp_overlap: bool
    zero3_ag_s: list[float]  # per stage, parameter all-gather before each F/B
    optimizer_s: list[float]
    flows_note: dict = field(default_factory=dict)


def rank_of(plan: Plan, d: int, stage: int, t: int) -> int:
    p = plan.parallel
    return (stage * p.dp + d) * p.tp + t


def grad_bytes_per_param(plan: Plan) -> float:
    """Bytes per parameter the data-parallel gradient reduction moves."""
    c = plan.parallel.grad_compression
    base = memory.grad_bytes_per_param(plan.train.precision)
    if c in ("fp16", "bf16"):
        return 2.0
    if c == "int8":
        return 1.0
    if c.startswith("topk:"):
        return min(base, 2 * 4 * float(c.split(":")[1]))  # values + indices
    if c.startswith("powersgd:"):
        return base * min(1.0, 2 * int(c.split(":")[1]) / 1024)  # rank-r factors of ~1k dims
    return base


def _tp_times(plan: Plan, topo: Topology, prof: Profile, stage: int,
              lt: compute.LayerTimes) -> tuple[float, float]:
    """(forward, backward) exposed TP communication seconds of one block.

    Two collectives each way (attention and MLP). With `tp_overlap` the two
    backward ones, at the column-parallel QKV and MLP-in layers, run while
    that layer's weight-gradient GEMM computes (not under zero-bubble, whose
    W is deferred): only the part longer than the GEMM is exposed.
    """
    m, p = plan.model, plan.parallel
    if p.tp == 1:
        return 0.0, 0.0
    w = 4 if plan.train.precision == "fp32" else 2
    nbytes = p.micro_batch * m.seq_len * m.hidden * w
    group = tuple(rank_of(plan, 0, stage, t) for t in range(p.tp))
    if p.sequence_parallel:
        one = (collective_time(topo, Coll("all_gather", group, nbytes), prof)
               + collective_time(topo, Coll("reduce_scatter", group, nbytes), prof))
    else:
        one = collective_time(topo, Coll("all_reduce", group, nbytes), prof)
    if p.tp_overlap and p.schedule != "zero-bubble":
        return 2 * one, sum(max(0.0, one - w) for w in lt.wgrad_column)
    return 2 * one, 2 * one  # attention and MLP, forward; the conjugates backward


def _send_time(plan: Plan, topo: Topology, prof: Profile) -> float:
    """Activation send between stages 0 and 1 by every TP rank at once; with
    tp > 1 each rank sends 1/tp (Megatron's scatter-gather) and the receiver
    all-gathers inside its node."""
    m, p = plan.model, plan.parallel
    if p.pp == 1:
        return 0.0
    w = 4 if plan.train.precision == "fp32" else 2
    nbytes = p.micro_batch * m.seq_len * m.hidden * w
    share = nbytes / p.tp
    colls = [Coll("send_recv", (rank_of(plan, 0, 0, t), rank_of(plan, 0, 1, t)), share)
             for t in range(p.tp)]
    t = concurrent_time(topo, colls, prof)
    if p.tp > 1 and not p.sequence_parallel:
        group = tuple(rank_of(plan, 0, 1, t) for t in range(p.tp))
        t += collective_time(topo, Coll("all_gather", group, nbytes), prof)
    return t


def lower(plan: Plan, topo: Topology, prof: Profile, dp_overlap: bool = True,
          bucket_params: float = DEFAULT_BUCKET_PARAMS, dp_algorithm: str = "ring") -> Work:
    """The per-rank work of one step (see the module docstring)."""
    m, p, tr = plan.model, plan.parallel, plan.train
    dev = compute.device_of(plan, prof)
    lt0 = compute.layer_times(plan, dev)
    emb_f, emb_b = compute.embedding_times(plan, dev)
    head_f, head_b = compute.head_times(plan, dev)
    P, v, mb = p.pp, p.vpp if p.schedule == "interleaved-1f1b" else 1, p.microbatches
    per_chunk = m.layers // (P * v)
    zb = p.schedule == "zero-bubble"
    ho, host = host_ops(plan), prof.host_op_overhead_s
    cost: dict[tuple[int, int, str], OpCost] = {}
    opt: list[float] = []
    buckets: list[list[tuple[float, list[Phase]]]] = []
    ag: list[float] = []
    gbytes = grad_bytes_per_param(plan)
    wbytes = memory.weight_bytes_per_param(tr.precision)
    for s in range(P):
        tp_f, tp_b = _tp_times(plan, topo, prof, s, lt0)
        lt = compute.calibrated_layer(plan, dev, lt0, tp_f + tp_b)  # a measured layer, if any
        for c in range(v):
            vs = c * P + s
            f = per_chunk * lt.fwd + (emb_f if vs == 0 else 0) + (head_f if vs == P * v - 1 else 0)
            tf = per_chunk * tp_f
            first, last = vs == 0, vs == P * v - 1
            re, tre, host_re = 0.0, 0.0, 0
            if p.recompute == "full":
                re, tre, host_re = per_chunk * lt.fwd, per_chunk * tp_f, ho.block_fwd
            elif p.recompute == "selective":
                re, host_re = per_chunk * lt.attn_core, ATTENTION_GEMMS + 1
            extra_b = (emb_b if first else 0) + (head_b if last else 0)
            b_in = per_chunk * (lt.bwd_input if zb else lt.bwd) + re + extra_b
            host_f = per_chunk * ho.block_fwd + ho.embedding_fwd * first + ho.head_fwd * last
            host_w = per_chunk * ho.block_bwd_weight
            host_b = (per_chunk * (ho.block_bwd_input + host_re) + ho.embedding_bwd * first
                      + ho.head_bwd * last + (0 if zb else host_w))
            cost[(s, c, "F")] = OpCost(f, tf, host * host_f)
            cost[(s, c, "B")] = OpCost(b_in, per_chunk * tp_b + tre, host * host_b)
            cost[(s, c, "W")] = (OpCost(per_chunk * lt.bwd_weight, 0.0, host * host_w) if zb
                                 else OpCost(0.0, 0.0))
        n_params = memory.stage_params_per_gpu(m, p.tp, P, s)
        shard = n_params / (p.dp if p.zero >= 1 else 1)
        opt.append(compute.optimizer_time(dev, shard, tr.precision)
                   + per_chunk * v * compute.block_optimizer_correction(plan, dev))
        # data-parallel gradient reduction, in buckets
        stage_b: list[tuple[float, list[Phase]]] = []
        if p.dp > 1:
            nb = max(1, math.ceil(n_params / bucket_params)) if dp_overlap else 1
            op = "all_reduce" if p.zero == 0 else "reduce_scatter"
            nbytes = n_params / nb * gbytes
            if p.dp_mode == "local-sgd":
                nbytes /= max(1, p.sync_every)
            colls = [Coll(op, tuple(rank_of(plan, d, s, t) for d in range(p.dp)), nbytes,
                          dp_algorithm) for t in range(p.tp)]
            ph = _merge_phases([phases(topo, c_, prof) for c_ in colls])
            if p.zero >= 1:  # updated parameters gathered back after the step
                ag_c = [Coll("all_gather", cc.ranks, n_params / nb * wbytes, dp_algorithm)
                        for cc in colls]
                ph += _merge_phases([phases(topo, c_, prof) for c_ in ag_c])
            stage_b = [(n_params / nb, ph)] * nb  # equal buckets: one set of phases
        buckets.append(stage_b)
        if p.zero >= 3 and p.dp > 1:
            colls = [Coll("all_gather", tuple(rank_of(plan, d, s, t) for d in range(p.dp)),
                          n_params / v * wbytes, dp_algorithm) for t in range(p.tp)]
            ag.append(concurrent_time(topo, colls, prof))
        else:
            ag.append(0.0)
    ops = [schedule(p.schedule, P, mb, s, v) for s in range(P)]
    return Work(plan, P, mb, v, ops, cost, _send_time(plan, topo, prof), buckets,
                dp_overlap, ag, opt)


def _merge_phases(per_coll: list[list[Phase]]) -> list[Phase]:
    out = []
    for k in range(max((len(x) for x in per_coll), default=0)):
        ph = [x[k] for x in per_coll if len(x) > k]
        out.append(Phase(tuple(pa for x in ph for pa in x.paths),
                         tuple(sz for x in ph for sz in x.sizes), max(x.latency_s for x in ph)))
    return out
