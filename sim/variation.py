"""Stragglers, heterogeneity and uneven work: the plan's asymmetric facts.

Reads the `[cluster]` fields `slow_gpus`, `slow_gpu_fraction`,
`slow_gpu_slowdown`, `node_gpus`, `variation_seed` and the `[parallel]`
fields `replica_microbatches`, `replica_seq_len` (see `sandbox.specs`; the
layout of layers and micro-batches is `sandbox.layout`'s, slow links are
`sim.network.shared`'s). A slow GPU runs its kernels `slow_gpu_slowdown`
times longer. Random picks use `numpy.random.default_rng(variation_seed)`, so a plan
always means the same cluster. Units: seconds, bytes, FLOP/s.
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache

import numpy as np

from sandbox import counts, presets
from sandbox.layout import replica_microbatches, replica_seq_lens
from sandbox.specs import GPU, Cluster, Plan


def with_seq_len(plan: Plan, seq_len: int) -> Plan:
    """The plan with shorter sequences (unvalidated copy, for cost models)."""
    if seq_len == plan.model.seq_len:
        return plan
    return dataclasses.replace(plan, model=dataclasses.replace(plan.model, seq_len=seq_len))


@lru_cache(maxsize=64)
def _slowdowns(c: Cluster) -> dict[int, float]:
    out = {r: c.slow_gpu_slowdown for r in c.slow_gpus}
    k = round(c.slow_gpu_fraction * c.world_size)
    if k:
        rng = np.random.default_rng(c.variation_seed)
        out.update({int(r): c.slow_gpu_slowdown
                    for r in rng.choice(c.world_size, size=k, replace=False)})
    return {r: f for r, f in out.items() if f != 1.0}


def gpu_slowdowns(c: Cluster) -> dict[int, float]:
    """GPU rank -> kernel-time multiplier, for the GPUs that are slow."""
    return _slowdowns(c)


@lru_cache(maxsize=16)
def _preset_gpu(name: str) -> GPU:
    return GPU(name=name, **presets.GPUS[name])


def gpu_of(c: Cluster, rank: int) -> GPU:
    """The GPU kind of global rank `rank`."""
    if not c.node_gpus:
        return c.gpu
    name = c.node_gpus[rank // c.gpus_per_node]
    return c.gpu if name == c.gpu.name else _preset_gpu(name)


def gpu_kinds(c: Cluster) -> list[GPU]:
    """The distinct GPU kinds of the cluster."""
    kinds = {gpu_of(c, n * c.gpus_per_node).name: gpu_of(c, n * c.gpus_per_node)
             for n in range(c.nodes)}
    return list(kinds.values())


def is_symmetric(plan: Plan) -> bool:
    """True when every data-parallel replica does the same work at the same speed."""
    c = plan.cluster
    return not (gpu_slowdowns(c) or c.slow_links or c.slow_link_fraction
                or len(set(c.node_gpus)) > 1 or len(set(replica_microbatches(plan))) > 1
                or len(set(replica_seq_lens(plan))) > 1)


def step_counts(plan: Plan) -> tuple[int, float, float]:
    """(tokens, model FLOPs, hardware FLOPs) of one step over all replicas."""
    p, m = plan.parallel, plan.model
    if not (p.replica_seq_len or p.replica_microbatches):
        return (plan.tokens_per_step, counts.model_flops_per_step(m, p.global_batch),
                counts.hardware_flops_per_step(m, p.global_batch, p.recompute,
                                                 plan.train.precision))
    tokens, flops, hw = 0, 0.0, 0.0
    for mb, s in zip(replica_microbatches(plan), replica_seq_lens(plan), strict=True):
        mr = dataclasses.replace(m, seq_len=s)
        seqs = mb * p.micro_batch
        tokens += seqs * s
        flops += counts.model_flops_per_step(mr, seqs)
        hw += counts.hardware_flops_per_step(mr, seqs, p.recompute, plan.train.precision)
    return tokens, flops, hw


def peak_flops_total(plan: Plan) -> float:
    """Sum of every GPU's dense peak FLOP/s for the plan's precision (nominal,
    without slowdowns: MFU is measured against the hardware bought)."""
    c, prec = plan.cluster, plan.train.precision
    if not c.node_gpus:
        return c.world_size * c.gpu.peak_flops(prec)
    return sum(gpu_of(c, n * c.gpus_per_node).peak_flops(prec) * c.gpus_per_node
               for n in range(c.nodes))


def min_hbm_gb(c: Cluster) -> float:
    """HBM of the smallest GPU kind of the cluster, GB."""
    return min(g.hbm_gb for g in gpu_kinds(c))
