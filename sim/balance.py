"""Load balancing: layers to pipeline stages and micro-batches to
data-parallel replicas by speed, and what it wins back.

Both are the same problem: split `total` integer units (layers, or
micro-batches) over bins whose time is `fixed_b + n_b * unit_b`, at least
one unit each, so that the slowest bin is as fast as possible. Greedy
filling (each unit to the bin it would leave the soonest finished) is
optimal for this min-max problem with linear costs.

- Layers: a synchronous 1F1B step is about m times the slowest stage's
  F + B per micro-batch, so stages get layers to equalise F + B; a stage's
  per-layer and fixed (embedding, head) seconds are those of its slowest
  GPU over all replicas (every replica uses the same partition, or the
  data-parallel groups would not hold the same layers), read off the cost
  model at 1 and 2 layers per stage (it is linear in layers).
- Micro-batches: a replica's step is about (fill + drain) + n times its
  slowest stage's F + B per micro-batch; replicas with slow GPUs or long
  sequences get fewer. Gradients are then averaged weighted by samples.

`balanced(plan)` returns the plan with `stage_layers` and / or
`replica_microbatches` set; `win(plan)` simulates both. Units: seconds.
"""

from __future__ import annotations

import heapq
from typing import Any

import sim
from sandbox.layout import replica_seq_lens
from sandbox.layout import stage_layers as layout_stage_layers
from sandbox.profile import Profile, profile_for
from sandbox.specs import Plan
from sim import variation
from sim.costs import stage_costs
from sim.network.shared import shared
from sim.replicas import stage_devices


def min_max_split(unit: list[float], fixed: list[float], total: int,
                  least: int = 1) -> list[int]:
    """Integers n_b >= least summing to `total` that minimise
    max_b (fixed_b + n_b * unit_b)."""
    n = [least] * len(unit)
    if total < least * len(unit):
        raise ValueError(f"cannot give {least} of {total} units to each of {len(unit)} bins")
    heap = [(fixed[b] + (n[b] + 1) * unit[b], b) for b in range(len(unit))]
    heapq.heapify(heap)
    for _ in range(total - sum(n)):
        _, b = heapq.heappop(heap)
        n[b] += 1
        heapq.heappush(heap, (fixed[b] + (n[b] + 1) * unit[b], b))
    return n


def _stage_fb(plan: Plan, prof: Profile, layers: list[int]) -> list[list[float]]:
    """F + B seconds per micro-batch, per replica (rows) and stage (columns)."""
    topo = shared(plan.cluster)
    seqs = replica_seq_lens(plan)
    kinds: dict = {}
    memo: dict = {}
    out = []
    for d in range(plan.parallel.dp):
        devs, ks, names = stage_devices(plan, prof, d, kinds)
        key = (tuple(names), seqs[d], tuple(layers))
        if key not in memo:
            cost, _ = stage_costs(variation.with_seq_len(plan, seqs[d]), topo, prof, devs, ks,
                                  layers, d)
            memo[key] = [sum(cost[(s, 0, k)].total for k in "FBW")
                         for s in range(plan.parallel.pp)]
        out.append(memo[key])
    return out


def stage_layers(plan: Plan, prof: Profile | None = None) -> list[int]:
    """Layers per pipeline stage that equalise the slowest replica's stages."""
    prof = prof or profile_for(plan.cluster)
    P = plan.parallel.pp
    one = [max(r[s] for r in _stage_fb(plan, prof, [1] * P)) for s in range(P)]
    two = [max(r[s] for r in _stage_fb(plan, prof, [2] * P)) for s in range(P)]
    unit = [b - a for a, b in zip(one, two, strict=True)]
    fixed = [a - u for a, u in zip(one, unit, strict=True)]
    return min_max_split(unit, fixed, plan.model.layers)


def replica_microbatches(plan: Plan, prof: Profile | None = None) -> list[int]:
    """Micro-batches per data-parallel replica that equalise their steps."""
    prof = prof or profile_for(plan.cluster)
    p = plan.parallel
    fb = _stage_fb(plan, prof, layout_stage_layers(plan))
    unit = [max(r) for r in fb]
    fixed = [sum(r) - max(r) for r in fb]
    return min_max_split(unit, fixed, p.global_batch // (p.dp * p.micro_batch) * p.dp)


def balanced(plan: Plan, prof: Profile | None = None, layers: bool = True,
             microbatches: bool = True) -> Plan:
    """The plan with layers and / or micro-batches assigned by speed (a
    validated copy; unchanged parts stay as they were)."""
    p = plan.parallel
    if layers and p.pp > 1 and p.vpp == 1:
        plan = plan.replace(stage_layers=stage_layers(plan, prof))
    if microbatches and p.dp > 1 and p.schedule != "interleaved-1f1b":
        plan = plan.replace(replica_microbatches=replica_microbatches(plan, prof))
    return plan


def win(plan: Plan, prof: Profile | None = None, **options: Any) -> dict[str, Any]:
    """Simulate the plan before and after balancing: step time, tokens/s and
    the assignment (options go to `sim.simulate`)."""
    after_plan = balanced(plan, prof)
    before = sim.simulate(plan, profile=prof, timeline=False, **options)
    after = sim.simulate(after_plan, profile=prof, timeline=False, **options)
    return {"step_time_s": before.step_time_s, "balanced_step_time_s": after.step_time_s,
            "tokens_per_s": before.tokens_per_s, "balanced_tokens_per_s": after.tokens_per_s,
            "speedup": after.tokens_per_s / before.tokens_per_s,
            "stage_layers": list(after_plan.parallel.stage_layers),
            "replica_microbatches": list(after_plan.parallel.replica_microbatches)}
