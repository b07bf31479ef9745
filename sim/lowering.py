"""Lowering: a plan -> the work of each pipeline rank of the data-parallel replicas.

Ranks follow Megatron-LM's order (`sandbox.layout.rank_of`: tensor-parallel
fastest, then data, then pipeline). The tensor-parallel ranks of a stage do
identical work, so one of them stands for all; their concurrent flows are
still placed on the network (pipeline sends, data-parallel rings). The
lowering gathers, per stage: the op costs and pipeline sends (`sim.costs`);
the data-parallel gradient collectives per bucket as flow phases, the ZeRO
1/2 all-gather of the updated parameters after the optimizer step and the
ZeRO-3 parameter all-gather per op, prefetched one op ahead, with the
gradients reduce-scattered after every micro-batch (`sim.sync.variants`, by
`parallel.dp_mode`); the op order (`sim.schedules`). `Work` (`sim.work`)
holds replica 0's work; replicas that differ (slow or other GPUs, slow
links, uneven micro-batches or sequence lengths) get their own
(`sim.replicas`). Stage s holds `sandbox.layout.stage_layers(plan)[s]`
blocks. Pure: neither the plan nor the topology is changed. Units: seconds,
bytes.
"""

from __future__ import annotations

from sandbox.layout import stage_layers
from sandbox.profile import Profile
from sandbox.specs import Plan
from sim import compute, replicas
from sim.costs import send_time, stage_costs
from sim.network.topology import Topology
from sim.schedules import schedule
from sim.sync import variants
from sim.work import Work, virtual_stages

DEFAULT_BUCKET_PARAMS = 40_000_000  # Megatron-LM's gradient bucket (--ddp-bucket-size)


def lower(plan: Plan, topo: Topology, prof: Profile, dp_overlap: bool = True,
          bucket_params: float = DEFAULT_BUCKET_PARAMS, dp_algorithm: str = "ring") -> Work:
    """The per-rank work of one step (see the module docstring) on `topo`
    (the cluster's network with its slow links: `sim.network.shared`); the
    data-parallel traffic of `parallel.dp_mode` comes from `sim.sync.variants`,
    per-replica differences (stragglers, mixed GPUs, uneven work) from
    `sim.replicas`."""
    p = plan.parallel
    P, v, mb = p.pp, virtual_stages(plan), p.microbatches
    layers = stage_layers(plan)
    dev = compute.device_of(plan, prof)
    cost, opt = stage_costs(plan, topo, prof, [dev] * P, [1.0] * P, layers)
    buckets, zero3, gather, note = variants.dp_work(plan, topo, prof, dev, layers,
                                                    dp_overlap, bucket_params, dp_algorithm)
    ag, ag_s, copy_s, units, early = zero3
    ops = [schedule(p.schedule, P, mb, s, v, p.pipeline_flushes) for s in range(P)]
    work = Work(plan, P, mb, v, ops, cost, send_time(plan, topo, prof), buckets,
                dp_overlap, ag, opt, dp_gather=gather, flows_note=note, zero3_ag_s=ag_s,
                zero3_copy_s=copy_s, zero3_units=units, dp_early=early)
    replicas.attach(work, topo, prof, layers)
    return work
