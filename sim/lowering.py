"""Lowering: a plan -> the work of each pipeline rank of the data-parallel replicas.

Ranks follow Megatron-LM's order (tensor-parallel fastest, then data, then
pipeline): `rank = (stage * dp + d) * tp + t`. The tensor-parallel ranks of
a stage do identical work, so one of them stands for all; their concurrent
flows are still placed on the network (pipeline sends, data-parallel rings).
Per (stage, chunk) and op kind the lowering gives the compute seconds and the
tensor-parallel communication seconds (TP collectives block the compute
stream in Megatron-LM, so they are serialised with it); the pipeline send
time between stages; the data-parallel gradient collectives per bucket as
flow phases (`sim.sync_variants`, by `parallel.dp_mode`); with ZeRO 1/2 the
all-gather of the updated parameters after the optimizer step (Megatron-LM's
distributed optimizer); the ZeRO-3 parameter all-gather per op; the optimizer
step. `Work` holds replica 0's
work; replicas that differ (slow or other GPUs, slow links, uneven
micro-batches or sequence lengths: `sim.replicas`) have their own `RepWork`.
Stage s holds `parallel.stage_layers[s]` blocks (default layers / pp).
Units: seconds, bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sandbox import memory
from sandbox.profile import Profile
from sandbox.specs import Plan
from sim import compute
from sim.collectives import Coll, Phase, collective_time, concurrent_time
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
class RepWork:
    """The work of one data-parallel replica: op costs per (stage, chunk,
    kind), op order per stage, optimizer seconds per stage, and the pipeline
    send seconds per boundary b (stage b -> b + 1 mod p; None: `Work.send_s`)."""

    cost: dict[tuple[int, int, str], OpCost]
    ops: list[list[Op]]
    optimizer_s: list[float]
    send_s: list[float] | None = None


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
    # per stage, ZeRO 1/2: the updated parameter shards all-gathered after the step
    dp_gather: list[list[Phase]] = field(default_factory=list)
    flows_note: dict = field(default_factory=dict)
    # Asymmetric plans (sim.replicas): the replicas whose work differs from
    # replica 0's (the fields above), and each replica's first twin.
    reps: dict[int, RepWork] = field(default_factory=dict)
    rep_class: list[int] = field(default_factory=list)
    send_b: list[float] | None = None  # replica 0's sends per boundary, when uneven

    def rep(self, r: int) -> RepWork:
        """Replica r's work (replica 0's unless it differs)."""
        x = self.reps.get(r)
        return x if x is not None else RepWork(self.cost, self.ops, self.optimizer_s, self.send_b)

    def send_of(self, rw: RepWork, s: int, direction: str) -> float:
        """Seconds of a pipeline send from stage s ("fwd": to s+1, "bwd": to s-1)."""
        if rw.send_s is None:
            return self.send_s
        return rw.send_s[s if direction == "fwd" else (s - 1) % self.p]

    def representatives(self) -> tuple[int, ...]:
        """One replica per kind of work: simulating these is exact."""
        return tuple(sorted(set(self.rep_class))) or (0,)


def rank_of(plan: Plan, d: int, stage: int, t: int) -> int:
    p = plan.parallel
    return (stage * p.dp + d) * p.tp + t


def _tp_times(plan: Plan, topo: Topology, prof: Profile, stage: int,
              lt: compute.LayerTimes, d: int = 0) -> tuple[float, float]:
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
    group = tuple(rank_of(plan, d, stage, t) for t in range(p.tp))
    if p.sequence_parallel:
        one = (collective_time(topo, Coll("all_gather", group, nbytes), prof)
               + collective_time(topo, Coll("reduce_scatter", group, nbytes), prof))
    else:
        one = collective_time(topo, Coll("all_reduce", group, nbytes), prof)
    if p.tp_overlap and p.schedule != "zero-bubble":
        return 2 * one, sum(max(0.0, one - w) for w in lt.wgrad_column)
    return 2 * one, 2 * one  # attention and MLP, forward; the conjugates backward


def send_time(plan: Plan, topo: Topology, prof: Profile, d: int = 0, a: int = 0,
              b: int = 1) -> float:
    """Activation send of replica d from stage a to b by every TP rank at once;
    with tp > 1 each rank sends 1/tp (Megatron's scatter-gather) and the
    receiver all-gathers inside its node."""
    m, p = plan.model, plan.parallel
    if p.pp == 1:
        return 0.0
    w = 4 if plan.train.precision == "fp32" else 2
    nbytes = p.micro_batch * m.seq_len * m.hidden * w
    share = nbytes / p.tp
    colls = [Coll("send_recv", (rank_of(plan, d, a, t), rank_of(plan, d, b, t)), share)
             for t in range(p.tp)]
    t = concurrent_time(topo, colls, prof)
    if p.tp > 1 and not p.sequence_parallel:
        group = tuple(rank_of(plan, d, b, t) for t in range(p.tp))
        t += collective_time(topo, Coll("all_gather", group, nbytes), prof)
    return t


def lower(plan: Plan, topo: Topology, prof: Profile, dp_overlap: bool = True,
          bucket_params: float = DEFAULT_BUCKET_PARAMS, dp_algorithm: str = "ring") -> Work:
    """The per-rank work of one step (see the module docstring). Applies the
    cluster's slow links to `topo` (once); the data-parallel traffic of
    `parallel.dp_mode` comes from `sim.sync_variants`, per-replica differences
    (stragglers, mixed GPUs, uneven work) from `sim.replicas`."""
    from sim import replicas, sync_variants, variation

    variation.apply_slow_links(topo)
    p = plan.parallel
    P, v, mb = p.pp, p.vpp if p.schedule == "interleaved-1f1b" else 1, p.microbatches
    layers = variation.stage_layers(plan)
    dev = compute.device_of(plan, prof)
    cost, opt = stage_costs(plan, topo, prof, [dev] * P, [1.0] * P, layers)
    buckets, ag, gather, note = sync_variants.dp_work(plan, topo, prof, dev, layers,
                                                      dp_overlap, bucket_params, dp_algorithm)
    ops = [schedule(p.schedule, P, mb, s, v) for s in range(P)]
    work = Work(plan, P, mb, v, ops, cost, send_time(plan, topo, prof), buckets,
                dp_overlap, ag, opt, dp_gather=gather, flows_note=note)
    replicas.attach(work, topo, prof, layers)
    return work


def stage_params(plan: Plan, layers: list[int], s: int) -> float:
    """Parameters held by one GPU of stage s when stages have `layers` blocks."""
    m, p = plan.model, plan.parallel
    return memory.stage_params_per_gpu(m, p.tp, p.pp, s, layers[s])


def stage_costs(plan: Plan, topo: Topology, prof: Profile, devs: list[compute.Device],
                slow: list[float], layers: list[int], d: int = 0, cache: dict | None = None
                ) -> tuple[dict[tuple[int, int, str], OpCost], list[float]]:
    """Op costs of replica d's stages and their optimizer seconds: stage s runs
    on `devs[s]` with its kernels `slow[s]` times slower, `layers[s]` blocks
    (`cache` keeps kernel times per device and sequence length between calls)."""
    p, tr = plan.parallel, plan.train
    P, v = p.pp, p.vpp if p.schedule == "interleaved-1f1b" else 1
    zb = p.schedule == "zero-bubble"
    ho, host = host_ops(plan), prof.host_op_overhead_s
    cost: dict[tuple[int, int, str], OpCost] = {}
    opt: list[float] = []
    per_dev: dict = {} if cache is None else cache
    for s in range(P):
        dev, k = devs[s], slow[s]
        key = (dev, plan.model.seq_len)
        if key not in per_dev:
            per_dev[key] = (compute.layer_times(plan, dev), compute.embedding_times(plan, dev),
                            compute.head_times(plan, dev))
        lt0, (emb_f, emb_b), (head_f, head_b) = per_dev[key]
        per_chunk = layers[s] // v
        tp_f, tp_b = _tp_times(plan, topo, prof, s, lt0, d)
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
            cost[(s, c, "F")] = OpCost(k * f, tf, host * host_f)
            cost[(s, c, "B")] = OpCost(k * b_in, per_chunk * tp_b + tre, host * host_b)
            cost[(s, c, "W")] = (OpCost(k * per_chunk * lt.bwd_weight, 0.0, host * host_w)
                                 if zb else OpCost(0.0, 0.0))
        shard = stage_params(plan, layers, s) / (p.dp if p.zero >= 1 else 1)
        server_side = p.dp_mode in ("parameter-server", "async") and p.dp > 1
        opt.append(0.0 if server_side else k * (
            compute.optimizer_time(dev, shard, tr.precision)
            + layers[s] * compute.block_optimizer_correction(plan, dev)))
    return cost, opt


def merge_phases(per_coll: list[list[Phase]]) -> list[Phase]:
    """Phase k of concurrent collectives as one phase of all their flows."""
    out = []
    for k in range(max((len(x) for x in per_coll), default=0)):
        ph = [x[k] for x in per_coll if len(x) > k]
        out.append(Phase(tuple(pa for x in ph for pa in x.paths),
                         tuple(sz for x in ph for sz in x.sizes), max(x.latency_s for x in ph)))
    return out
