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
from typing import Any

from sandbox import memory
from sandbox.layout import rank_of, stage_layers
from sandbox.profile import Profile
from sandbox.specs import Plan
from sim import compute
from sim.costs import stage_params
from sim.engine import EngineResult
from sim.network.collectives import Coll, Phase, concurrent_time, merge_phases, phases
from sim.network.topology import Topology
from sim.sync import compression
from sim.sync.async_sgd import run_async
from sim.sync.parameter_server import ps_phases, ps_server_ranks
from sim.work import Work, virtual_stages

Buckets = list[tuple[float, list[Phase]]]


def _allreduce_phases(plan: Plan, topo: Topology, prof: Profile, dev: compute.Device,
                      s: int, mats: compression.Matrices, share: float,
                      algorithm: str) -> list[Phase]:
    p = plan.parallel
    groups = [tuple(rank_of(plan, d, s, t) for d in range(p.dp)) for t in range(p.tp)]
    out: list[Phase] = []
    for step in compression.bucket_steps(plan, dev, mats, share, p.dp):
        if step[0] == "compute":
            out.append(Phase((), (), step[1]))
        else:
            out += merge_phases([phases(topo, Coll(step[0], g, step[1], algorithm), prof)
                                 for g in groups])
    return out


def gather_phases(plan: Plan, topo: Topology, prof: Profile, s: int,
                  algorithm: str) -> list[Phase]:
    """ZeRO 1/2 (Megatron-LM's distributed optimizer, no param-gather overlap):
    after the optimizer step every rank all-gathers the stage's updated 16-bit
    parameters from the shards. Empty for ZeRO 0 and 3 (ZeRO-3 gathers before
    each op instead)."""
    p = plan.parallel
    if p.dp == 1 or p.zero not in (1, 2) or p.dp_mode != "allreduce":
        return []
    n = stage_params(plan, stage_layers(plan), s)
    wb = memory.weight_bytes_per_param(plan.train.precision)
    groups = [tuple(rank_of(plan, d, s, t) for d in range(p.dp)) for t in range(p.tp)]
    return merge_phases([phases(topo, Coll("all_gather", g, n * wb, algorithm), prof)
                         for g in groups])


def dp_work(plan: Plan, topo: Topology, prof: Profile, dev: compute.Device, layers: list[int],
            dp_overlap: bool, bucket_params: float, algorithm: str
            ) -> tuple[list[Buckets], list[float], list[list[Phase]], dict[str, Any]]:
    """Per stage: the gradient buckets (params, phases), the ZeRO-3 parameter
    all-gather seconds before each op, the ZeRO 1/2 parameter all-gather after
    the step (`gather_phases`), and notes for `SimResult.extra`."""
    m, p = plan.model, plan.parallel
    P, v = p.pp, virtual_stages(plan)
    buckets: list[Buckets] = []
    ag: list[float] = []
    sent, plain = 0.0, 0.0
    wb = memory.weight_bytes_per_param(plan.train.precision)
    for s in range(P):
        n_params = stage_params(plan, layers, s)
        mats = compression.stage_matrices(m, p.tp, P, s, layers[s])
        stage_b: Buckets = []
        if p.dp > 1 and p.dp_mode in ("allreduce", "parameter-server"):
            nb = max(1, math.ceil(n_params / bucket_params)) if dp_overlap else 1
            if p.dp_mode == "allreduce":
                ph = _allreduce_phases(plan, topo, prof, dev, s, mats, 1 / nb, algorithm)
                b_sent = compression.wire_bytes(plan, dev, mats, p.dp)
                b_plain = compression.wire_bytes(plan, dev, mats, p.dp, compressed=False)
            else:
                workers = [rank_of(plan, d, s, t) for d in range(p.dp) for t in range(p.tp)]
                ph = ps_phases(plan, topo, prof, dev, workers, n_params / nb)
                b_sent = compression.push_payload(plan, dev, n_params)[0]
                b_plain = n_params * compression.grad_bytes(plan)
            stage_b = [(n_params / nb, ph)] * nb  # equal buckets: one set of phases
            sent, plain = max(sent, b_sent), max(plain, b_plain)
        buckets.append(stage_b)
        if p.zero >= 3 and p.dp > 1:
            colls = [Coll("all_gather", tuple(rank_of(plan, d, s, t) for d in range(p.dp)),
                          n_params / v * wb, algorithm) for t in range(p.tp)]
            ag.append(concurrent_time(topo, colls, prof))
        else:
            ag.append(0.0)
    note: dict[str, Any] = {"dp_mode": p.dp_mode, "grad_compression": p.grad_compression}
    if sent > 0:
        note.update(dp_bytes_per_gpu=sent, compression_ratio=plain / sent)
    if p.dp_mode in ("parameter-server", "async"):
        note["ps_servers"] = len(ps_server_ranks(plan))
    gather = [gather_phases(plan, topo, prof, s, algorithm) for s in range(P)]
    return buckets, ag, gather, note


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
