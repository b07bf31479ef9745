"""Data-parallel synchronisation variants as traffic on the topology.

`parallel.dp_mode` picks the pattern; every byte is a flow over the network
graph (`sim.network`), never a formula:

- allreduce: gradient buckets reduced by ring / tree / hierarchical
  collectives while the last backward runs (reduce-scatter, then the updated
  parameters all-gathered, with ZeRO >= 1), compressed by
  `parallel.grad_compression` (`sim.sync.compression`: its kernels are compute
  phases of the bucket, serialised with its transfers as a DDP comm hook's
  are; their contention with backward kernels for SMs is not modelled).
- parameter-server (`sim.sync.parameter_server`): parameters sharded over S =
  `parallel.ps_servers` server ranks. Per bucket every worker GPU pushes 1/S
  of its (compressed) gradients to each server, each server sums the dp
  pushes and applies the optimizer to its shard, then every worker pulls its
  16-bit parameters back. All pushes into a server cross its node's NICs:
  with few servers those are the hot spot.
- local-sgd: no gradient traffic; every `parallel.sync_every` = k steps the
  fp32 parameters are averaged by an all-reduce over the data-parallel
  groups after the optimizer step. Reported: the local step, the averaging
  step, the k-step time and the amortised step time.
- async: the parameter-server pattern without a barrier (`sim.sync.async_sgd`).

Units: bytes, seconds.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from sandbox import memory
from sandbox.layout import (
    expert_grad_groups,
    grad_ranks,
    rank_of,
    replicate_groups,
    shard_groups,
    stage_layers,
)
from sandbox.profile import Profile, bus_factor
from sandbox.specs import Plan
from sim import compute
from sim.costs import expert_shard, stage_param_parts, stage_params
from sim.engine import EngineResult
from sim.network.collectives import Coll, Phase, concurrent_time, merge_phases, phases
from sim.network.topology import Topology
from sim.sync import compression
from sim.sync.async_sgd import run_async
from sim.sync.parameter_server import ps_phases, ps_server_ranks
from sim.work import Work, virtual_stages

Buckets = list[tuple[float, list[Phase]]]
# per stage: ZeRO-3 gather phases, first unit's seconds, copy-out seconds, units per
# chunk, and one bucket's reduction after a micro-batch but the last (HSDP: without
# the replicate all-reduce; empty: the buckets' own phases)
Zero3 = tuple[list[list[Phase]], list[float], list[float], list[int], list[list[Phase]]]


def _allreduce_phases(plan: Plan, topo: Topology, prof: Profile, dev: compute.Device,
                      s: int, mats: compression.Matrices, share: float,
                      algorithm: str, replicate: bool = True) -> list[Phase]:
    """One bucket's reduction over the data-parallel groups. HSDP (`dp_shard`
    < dp): the reduce-scatter runs over each shard group, then (`replicate`)
    the 1/dp_shard shards are all-reduced across the replicate groups. A MoE
    stage reduces its routed experts' share over the expert-data-parallel
    groups at the same time (`_moe_phases`)."""
    if plan.model.moe:
        return _moe_phases(plan, topo, prof, dev, s, share, algorithm, replicate)
    p = plan.parallel
    groups, reps, k = shard_groups(plan, s), replicate_groups(plan, s), p.shard_size
    return _reduction(plan, topo, prof, dev, mats, share, algorithm, groups,
                      reps if replicate else [], k)


def _reduction(plan: Plan, topo: Topology, prof: Profile, dev: compute.Device,
               mats: compression.Matrices, share: float, algorithm: str,
               groups: list[tuple[int, ...]], reps: list[tuple[int, ...]], k: int
               ) -> list[Phase]:
    """`share` of `mats`' gradients reduced over `groups` (k ranks each), then
    the 1/k shards all-reduced over `reps` (HSDP; empty: none)."""
    out: list[Phase] = []
    for step in compression.bucket_steps(plan, dev, mats, share, k):
        if step[0] == "compute":
            out.append(Phase((), (), step[1]))
            continue
        out += merge_phases([phases(topo, Coll(step[0], g, step[1], algorithm), prof)
                             for g in groups])
        if reps and step[0] == "reduce_scatter":
            out += merge_phases([phases(topo, Coll("all_reduce", g, step[1] / k, algorithm),
                                        prof) for g in reps])
    return out


def _moe_parts(plan: Plan, layers: list[int], s: int) -> tuple[float, float]:
    return stage_param_parts(plan, layers, s)


def _moe_phases(plan: Plan, topo: Topology, prof: Profile, dev: compute.Device, s: int,
                share: float, algorithm: str, replicate: bool = True) -> list[Phase]:
    """A MoE stage's bucket: `share` of the non-routed gradients over the
    data-parallel groups (as a dense stage's) and at the same time `share` of
    the routed experts' over the expert-data-parallel groups
    (`sandbox.layout.expert_grad_groups`, dp / ep x cp ranks; none when each
    expert shard has one replica). Gradients as vectors (PowerSGD sends them
    uncompressed)."""
    p = plan.parallel
    dense, routed = _moe_parts(plan, stage_layers(plan), s)
    parts = [_reduction(plan, topo, prof, dev, compression.Matrices((), dense), share,
                        algorithm, shard_groups(plan, s),
                        replicate_groups(plan, s) if replicate else [], p.shard_size)]
    edp = expert_grad_groups(plan, s)
    if routed and len(edp[0]) > 1:
        parts.append(_reduction(plan, topo, prof, dev, compression.Matrices((), routed), share,
                                algorithm, edp, [], len(edp[0])))
    return merge_phases(parts)


def moe_wire_bytes(plan: Plan, dev: compute.Device, layers: list[int], s: int,
                   compressed: bool = True) -> float:
    """Bytes one GPU of a MoE stage sends per step to reduce its gradients:
    the non-routed over dp x cp (HSDP: shard then replicate groups), the
    routed experts over the expert-data-parallel group (ring factors included)."""
    p = plan.parallel
    dense, routed = _moe_parts(plan, layers, s)
    if p.shard_size < grad_ranks(plan):
        out = sum(hsdp_grad_bytes(plan, dense))
    else:
        out = compression.wire_bytes(plan, dev, compression.Matrices((), dense), grad_ranks(plan),
                                     compressed)
    k = expert_shard(plan)
    if routed and k > 1:
        out += compression.wire_bytes(plan, dev, compression.Matrices((), routed), k, compressed)
    return out


def _gather_colls(plan: Plan, layers: list[int], s: int, bytes_per: float, algorithm: str,
                  divide: int = 1) -> list[Coll]:
    """All-gathers of stage s's parameters (`bytes_per` bytes each, 1/`divide`
    of them): over the shard groups, a MoE stage's routed experts over the
    expert-data-parallel groups."""
    if not plan.model.moe:
        n = stage_params(plan, layers, s) * bytes_per / divide
        return [Coll("all_gather", g, n, algorithm) for g in shard_groups(plan, s)]
    dense, routed = _moe_parts(plan, layers, s)
    colls = [Coll("all_gather", g, dense * bytes_per / divide, algorithm)
             for g in shard_groups(plan, s)]
    edp = expert_grad_groups(plan, s)
    if routed and len(edp[0]) > 1:
        colls += [Coll("all_gather", g, routed * bytes_per / divide, algorithm) for g in edp]
    return colls


def moe_gather_bytes(plan: Plan, layers: list[int], s: int) -> float:
    """Bytes one GPU of a MoE stage receives gathering all its 16-bit
    parameters once: the non-routed from the other shard-group ranks, the
    routed experts from the other expert-data-parallel ranks."""
    wb = memory.weight_bytes_per_param(plan.train.precision)
    dense, routed = _moe_parts(plan, layers, s)
    k, e = plan.parallel.shard_size, expert_shard(plan)
    return wb * (dense * (k - 1) / k + routed * (e - 1) / e)


def hsdp_grad_bytes(plan: Plan, n_params: float) -> tuple[float, float]:
    """HSDP: bytes one rank sends to reduce n_params gradients, (the shard
    group's reduce-scatter, the replicate group's all-reduce of its 1/dp_shard
    shard), ring factors included."""
    p = plan.parallel
    k = p.shard_size
    r = grad_ranks(plan) // k
    nbytes = n_params * compression.grad_bytes(plan)
    return bus_factor("reduce_scatter", k) * nbytes, bus_factor("all_reduce", r) * nbytes / k


def gather_phases(plan: Plan, topo: Topology, prof: Profile, s: int,
                  algorithm: str) -> list[Phase]:
    """ZeRO 1/2 (Megatron-LM's distributed optimizer, no param-gather overlap):
    after the optimizer step every rank all-gathers the stage's updated 16-bit
    parameters from the shards. Empty for ZeRO 0 and 3 (ZeRO-3 gathers before
    each op instead)."""
    p = plan.parallel
    if grad_ranks(plan) == 1 or p.zero not in (1, 2) or p.dp_mode != "allreduce":
        return []
    wb = memory.weight_bytes_per_param(plan.train.precision)
    return merge_phases([phases(topo, c, prof)
                         for c in _gather_colls(plan, stage_layers(plan), s, wb, algorithm)])


def zero3_gathers_per_step(plan: Plan) -> int:
    """ZeRO-3 all-gathers of a chunk's parameters per step on one GPU: before
    every micro-batch's forward of each chunk, and again before its backward
    with `reshard_after_forward`; under pipeline parallelism once per chunk
    (`memory.zero3_pipelined`: kept unsharded through the step)."""
    p = plan.parallel
    if memory.zero3_pipelined(plan):
        return virtual_stages(plan)
    return p.microbatches * virtual_stages(plan) * (2 if p.reshard_after_forward else 1)


def zero3_units(plan: Plan, layers: list[int], s: int) -> int:
    """FSDP units of one chunk of stage s: its blocks, plus one for the root
    module's embedding / head when the stage holds them."""
    p = plan.parallel
    return max(1, layers[s] // virtual_stages(plan)) + (1 if s in (0, p.pp - 1) else 0)


def zero3_chunk_bytes(plan: Plan, layers: list[int], s: int) -> float:
    """Bytes of one chunk's ZeRO-3 all-gather on stage s: 16-bit weights,
    with `fp8_all_gather` the linear weights in fp8 (1 byte; torchao casts the
    local shard, then gathers: `WeightWithDynamicFloat8CastTensor`)."""
    t, p = plan.train, plan.parallel
    wb = memory.weight_bytes_per_param(t.precision)
    nbytes = stage_params(plan, layers, s) * wb
    if t.precision == "fp8" and t.fp8_all_gather:
        nbytes -= layers[s] * memory.linear_weights_per_gpu(plan.model, p.tp) * (wb - 1)
    return nbytes / virtual_stages(plan)


def _unit_phases(topo: Topology, prof: Profile, colls: list[Coll], units: int
                 ) -> tuple[list[Phase], float]:
    """A chunk's all-gather as FSDP runs it, one collective per unit (equal
    units): its phases (the chunk's bytes, every unit's latency) and the
    seconds of the first unit alone on an idle network."""
    one = merge_phases([phases(topo, replace(c, nbytes=c.nbytes / units), prof)
                        for c in colls])
    first = concurrent_time(topo, [replace(c, nbytes=c.nbytes / units) for c in colls], prof)
    return [Phase(ph.paths, tuple(x * units for x in ph.sizes), ph.latency_s * units)
            for ph in one], first


def dp_work(plan: Plan, topo: Topology, prof: Profile, dev: compute.Device, layers: list[int],
            dp_overlap: bool, bucket_params: float, algorithm: str
            ) -> tuple[list[Buckets], Zero3, list[list[Phase]], dict[str, Any]]:
    """Per stage: the gradient buckets (params, phases), the ZeRO-3 all-gather
    of one chunk's parameters before each op (its phases and its first unit's
    seconds on an idle network, `_unit_phases`; the copy-out seconds; the
    units per chunk), the ZeRO 1/2 parameter all-gather after the step
    (`gather_phases`), and notes for `SimResult.extra`. With ZeRO-3 the
    buckets are reduced after every micro-batch (`sim.engine`; once per step
    under pipeline parallelism, `memory.zero3_pipelined`), so
    `dp_bytes_per_gpu` counts those reduce-scatters plus every gather
    (`zero3_gathers_per_step`)."""
    m, p = plan.model, plan.parallel
    P, v = p.pp, virtual_stages(plan)
    buckets: list[Buckets] = []
    ag: list[list[Phase]] = []
    ag_s: list[float] = []
    copy_s: list[float] = []
    g = grad_ranks(plan)  # dp x cp: the cp ranks hold the same weights
    z3 = p.zero >= 3 and p.shard_size > 1
    hsdp = p.shard_size < g
    early: list[list[Phase]] = []
    ag_bytes = 0.0
    sent, plain = 0.0, 0.0
    for s in range(P):
        n_params = stage_params(plan, layers, s)
        mats = compression.stage_matrices(m, p.tp, P, s, layers[s])
        stage_b: Buckets = []
        if g > 1 and p.dp_mode in ("allreduce", "parameter-server"):
            nb = max(1, math.ceil(n_params / bucket_params)) if dp_overlap else 1
            if z3 and dp_overlap:  # FSDP reduce-scatters per unit, not per bucket
                nb = v * zero3_units(plan, layers, s)
            if p.dp_mode == "allreduce":
                ph = _allreduce_phases(plan, topo, prof, dev, s, mats, 1 / nb, algorithm)
                b_sent = compression.wire_bytes(plan, dev, mats, g)
                b_plain = compression.wire_bytes(plan, dev, mats, g, compressed=False)
                if hsdp:  # validated: no compression
                    b_sent = b_plain = sum(hsdp_grad_bytes(plan, n_params))
                if m.moe:  # routed experts over their expert-data-parallel groups
                    b_sent = moe_wire_bytes(plan, dev, layers, s)
                    b_plain = moe_wire_bytes(plan, dev, layers, s, compressed=False)
            else:
                workers = [rank_of(plan, d, s, t) for d in range(p.dp) for t in range(p.tp)]
                ph = ps_phases(plan, topo, prof, dev, workers, n_params / nb)
                b_sent = compression.push_payload(plan, dev, n_params)[0]
                b_plain = n_params * compression.grad_bytes(plan)
            stage_b = [(n_params / nb, ph)] * nb  # equal buckets: one set of phases
            if z3 and hsdp:
                early.append(_allreduce_phases(plan, topo, prof, dev, s, mats, 1 / nb,
                                               algorithm, replicate=False))
            g_bytes = 0.0
            if z3:  # one reduction per micro-batch (HSDP: one all-reduce), the gathers
                rs, ar = hsdp_grad_bytes(plan, n_params) if hsdp and not m.moe else (b_sent, 0.0)
                rounds = 1 if memory.zero3_pipelined(plan) else p.microbatches
                b_sent = b_plain = rs * rounds + ar
                g_bytes = (zero3_gathers_per_step(plan) * zero3_chunk_bytes(plan, layers, s)
                           * (p.shard_size - 1) / p.shard_size)
                if m.moe:  # routed experts gathered over their expert-data-parallel group
                    g_bytes = zero3_gathers_per_step(plan) / v * moe_gather_bytes(plan, layers, s)
            sent, plain = max(sent, b_sent + g_bytes), max(plain, b_plain + g_bytes)
            ag_bytes = max(ag_bytes, g_bytes)
        buckets.append(stage_b)
        chunk_b = zero3_chunk_bytes(plan, layers, s)
        colls = [Coll("all_gather", g, chunk_b, algorithm)
                 for g in shard_groups(plan, s)] if z3 else []
        if z3 and m.moe:  # the routed experts over their expert-data-parallel groups
            colls = _gather_colls(plan, layers, s, memory.weight_bytes_per_param(
                plan.train.precision), algorithm, divide=v)
        whole, first = _unit_phases(topo, prof, colls, zero3_units(plan, layers, s)) if z3 \
            else ([], 0.0)
        ag.append(whole)
        ag_s.append(first)
        # FSDP2 copies the gathered buffer out into the parameters on the compute stream
        copy_s.append(compute.memory_time(dev, 2 * chunk_b) if z3 else 0.0)
    note: dict[str, Any] = {"dp_mode": p.dp_mode, "grad_compression": p.grad_compression}
    if sent > 0:
        note.update(dp_bytes_per_gpu=sent, compression_ratio=plain / sent)
    if z3:
        note.update(zero3_copy_out_s=copy_s)
        note.update(zero3_allgather_bytes_per_gpu=ag_bytes,
                    zero3_gathers_per_step=zero3_gathers_per_step(plan),
                    reshard_after_forward=p.reshard_after_forward
                    and not memory.zero3_pipelined(plan))
    if p.dp_mode in ("parameter-server", "async"):
        note["ps_servers"] = len(ps_server_ranks(plan))
    gather = [gather_phases(plan, topo, prof, s, algorithm) for s in range(P)]
    units = [zero3_units(plan, layers, s) for s in range(P)]
    if hsdp:
        note.update(dp_shard=p.shard_size)
    if len(early) != P:
        early = []
    return buckets, (ag, ag_s, copy_s, units, early), gather, note


def averaging_time(plan: Plan, topo: Topology, prof: Profile, algorithm: str = "ring") -> float:
    """Seconds of local SGD's parameter averaging: fp32 parameters all-reduced
    over every data-parallel group at once (all stages, all TP ranks)."""
    p = plan.parallel
    layers = stage_layers(plan)
    colls = [Coll("all_reduce", tuple(rank_of(plan, d, s, t) for d in range(p.dp)),
                  stage_params(plan, layers, s) * 4, algorithm)
             for s in range(p.pp) for t in range(p.tp)]
    return concurrent_time(topo, colls, prof)


def finish(plan: Plan, topo: Topology, prof: Profile, work: Work, res: EngineResult,
           replicas: tuple[int, ...], algorithm: str = "ring") -> dict[str, Any]:
    """Turn the engine's step into the variant's step (local-sgd, async):
    adjusts `res` in place; returns the extra result fields."""
    p = plan.parallel
    extra = dict(work.flows_note)
    if p.dp == 1 or p.dp_mode not in ("local-sgd", "async"):
        return extra
    if p.dp_mode == "async":
        extra.update(run_async(plan, topo, prof, work, res, replicas))
        return extra
    k = p.sync_every
    avg = averaging_time(plan, topo, prof, algorithm)
    local = res.step_time_s
    for st in res.stats.values():
        st.dp_comm += avg / k
        st.finish += avg / k
    res.step_time_s = local + avg / k
    extra.update(sync_every=k, local_step_time_s=local, averaging_s=avg,
                 k_step_time_s=k * local + avg)
    return extra
