"""What a simulation will cost, estimated before it starts, and the limits.

The event count grows with pipeline ranks x virtual stages x micro-batches of
every simulated replica (about 5-13 events each, measured on gpt3-175b,
llama3-70b and gpt3-1.3b plans: 1T on 512 GPUs is 194,816 events in 0.9 s);
the network graph grows with the GPUs. A plan beyond either limit is refused
up front with the estimate, instead of running for hours or filling memory.
"""

from __future__ import annotations

from sandbox.errors import SandboxError
from sandbox.layout import replica_microbatches
from sandbox.specs import Plan
from sim.work import virtual_stages

EVENTS_PER_OP = 8  # events per (pipeline rank, virtual stage, micro-batch), rounded up
MAX_EVENTS = 20_000_000  # about 100 s of simulation on one core
MAX_GPUS = 2**17  # network graph nodes scale with this (16,384 GPUs: ~3 s to build)


def _asymmetric(plan: Plan) -> bool:
    """Replicas may differ (stragglers, mixed GPUs, uneven work): each may be simulated."""
    c, p = plan.cluster, plan.parallel
    return bool(c.slow_gpus or c.slow_gpu_fraction or c.slow_links or c.slow_link_fraction
                or c.node_gpus or p.replica_microbatches or p.replica_seq_len)


def estimate_events(plan: Plan, replicas: str = "auto") -> int:
    """Upper estimate of the simpy events one simulated step takes."""
    p = plan.parallel
    mbs = replica_microbatches(plan)
    simulated = mbs if replicas == "all" or (replicas == "auto" and _asymmetric(plan)) \
        else mbs[:1]
    return EVENTS_PER_OP * p.pp * virtual_stages(plan) * sum(simulated) + 1000


def check_budget(plan: Plan, replicas: str = "auto") -> None:
    """Raise SandboxError (one line) when the plan is too large to simulate."""
    if plan.world_size > MAX_GPUS:
        raise SandboxError(f"cluster: {plan.world_size:,} GPUs is more than the simulator "
                           f"builds a network for (at most {MAX_GPUS:,})")
    n = estimate_events(plan, replicas)
    if n > MAX_EVENTS:
        p = plan.parallel
        raise SandboxError(f"parallel: about {n:,} events to simulate (pp {p.pp} x "
                           f"{virtual_stages(plan)} chunks x {p.microbatches:,} micro-batches "
                           f"per replica), more than the limit of {MAX_EVENTS:,}; use fewer "
                           f"micro-batches (larger micro_batch or dp)")
