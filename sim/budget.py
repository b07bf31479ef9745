"""What a simulation will cost, estimated before it starts, and the limits.

The event count grows with pipeline ranks x virtual stages x micro-batches of
every simulated replica (about 5-13 events each, measured on gpt3-175b,
llama3-70b and gpt3-1.3b plans: 1T on 512 GPUs is 194,816 events in 0.9 s);
the network graph (networkx, every GPU, NIC and switch) grows with the GPUs.
A plan beyond a limit is refused up front with the estimate, instead of running
for hours or filling memory. Measured on this project's 2-core machine
(`sandbox simulate`, wall and user seconds, peak RSS; the load of other jobs
inflates the wall time):

| plan | GPUs | events (estimate) | wall s | user s | peak RSS |
|---|---|---|---|---|---|
| Llama 3 405B-like, tp 8 pp 16 vpp 2 | 16,384 | 6,235 | 8.0 | 5.5 | 343 MB |
| same, dp x 2 | 32,768 | 6,170 | 11.8 | 10.4 | 642 MB |
| same, dp x 4 | 65,536 | 6,117 | 32.1 | 22.0 | 1,235 MB |
| same, dp x 8 (MAX_GPUS) | 131,072 | 6,038 | 66.8 | 42.1 | 2,426 MB |
| tiny, pp 4, 62,500 micro-batches | 4 | 1.25M (2.0M) | 6.4 | 3.6 | 215 MB |
| same with --trace (timeline) | 4 | 1.25M (2.0M) | 21.2 | 10.7 | 1,094 MB |
| tiny, pp 4, 624,000 micro-batches (MAX_EVENTS) | 4 | 12.5M (20.0M) | 60.2 | 35.5 | 1,604 MB |

The network graph takes about 18.2 KB per GPU (MB_PER_GPU), the simulation
about 0.08 KB per estimated event and the timeline (`--trace`, `--plot`,
reports) about 0.45 KB per estimated event more, so a timeline has its own,
lower limit. Since the timeline holds TP and bubble spans and chunk ids (issue
22) it has more spans (tiny, pp 4, 30,000 micro-batches: 510,010 instead of
420,004; with tp 2: 750,010), but `--trace` writes them one event at a time:
the "same with --trace" row above, re-measured, peaks at 540 MB instead of
1,068 MB (43 s wall, 18.9 s user, against 40 s and 16.5 s before on the same
loaded machine), under its estimate (1,090 MB). Before the
leaf-switch uplinks were counted once (`sim.network.topology.build`), building
the graph was quadratic in the nodes: 65,536 GPUs took 98 s.
"""

from __future__ import annotations

from sandbox.errors import SandboxError
from sandbox.layout import replica_microbatches
from sandbox.memory import zero3_pipelined
from sandbox.specs import Plan
from sim.work import virtual_stages

EVENTS_PER_OP = 8  # events per (pipeline rank, virtual stage, micro-batch), rounded up
ZERO3_EVENTS_PER_OP = 32  # ZeRO-3: per-unit gathers and per-micro-batch reductions (~26 seen)
MAX_EVENTS = 20_000_000  # estimated; about 12.5M real events, a minute, 1.6 GB (table above)
MAX_TIMELINE_EVENTS = 2_000_000  # with a timeline: about 20 s and 1.1 GB (table above)
MAX_GPUS = 2**17  # network graph: about a minute and 2.4 GB to build and simulate
BASE_MB = 50.0  # resident memory of a simulation before the network and events, MB
MB_PER_GPU = 0.0182  # network graph, MB per GPU (fit of the table above)
MB_PER_EVENT = (0.000078, 0.00052)  # MB per estimated event: (without, with) a timeline
# A search simulates up to max_simulations plans of `gpus` GPUs each: their
# product is bounded (2**21: 128 simulations of 16,384 GPUs, about 15 minutes
# on one core; 1,024 GPUs x 128 is 6% of it).
MAX_SEARCH_GPU_SIMULATIONS = 2**21


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
    # ZeRO-3 under pipeline parallelism gathers and reduces once per chunk per step
    per_op = ZERO3_EVENTS_PER_OP if p.zero == 3 and not zero3_pipelined(plan) \
        else EVENTS_PER_OP
    return per_op * p.pp * virtual_stages(plan) * sum(simulated) + 1000


def estimate_memory_mb(gpus: int, events: int = 0, timeline: bool = False) -> float:
    """Estimated peak resident memory of one simulation, MB."""
    return BASE_MB + gpus * MB_PER_GPU + events * MB_PER_EVENT[bool(timeline)]


def _too_many_gpus(gpus: int) -> SandboxError:
    return SandboxError(f"cluster: {gpus:,} GPUs is more than the simulator builds a network "
                        f"for (at most {MAX_GPUS:,}; about {estimate_memory_mb(gpus):,.0f} MB "
                        f"for its graph)")


def check_budget(plan: Plan, replicas: str = "auto", timeline: bool = False) -> None:
    """Raise SandboxError (one line) when the plan is too large to simulate
    (with a timeline: per-rank spans, as `--trace` and `--plot` need)."""
    if plan.world_size > MAX_GPUS:
        raise _too_many_gpus(plan.world_size)
    n = estimate_events(plan, replicas)
    limit = MAX_TIMELINE_EVENTS if timeline else MAX_EVENTS
    if n > limit:
        p = plan.parallel
        what = "with a timeline (--trace, --plot, report)" if timeline else ""
        raise SandboxError(f"parallel: about {n:,} events to simulate (pp {p.pp} x "
                           f"{virtual_stages(plan)} chunks x {p.microbatches:,} micro-batches "
                           f"per replica, about "
                           f"{estimate_memory_mb(plan.world_size, n, timeline):,.0f} MB), more "
                           f"than the limit of {limit:,}{' ' + what if what else ''}; use "
                           f"fewer micro-batches (larger micro_batch or dp)")


def check_search_budget(gpus: int, max_simulations: int) -> None:
    """Raise SandboxError (one line) when a search of `max_simulations` plans of
    `gpus` GPUs each is beyond MAX_GPUS or MAX_SEARCH_GPU_SIMULATIONS."""
    if gpus > MAX_GPUS:
        raise _too_many_gpus(gpus)
    if gpus * max_simulations > MAX_SEARCH_GPU_SIMULATIONS:
        most = max(1, MAX_SEARCH_GPU_SIMULATIONS // gpus)
        raise SandboxError(f"--max-simulations: {max_simulations:,} simulations of {gpus:,} "
                           f"GPUs is more than the search's limit of "
                           f"{MAX_SEARCH_GPU_SIMULATIONS:,} simulated GPUs; use "
                           f"--max-simulations {most:,} or fewer")


def search_workers(gpus: int, wanted: int, max_mb: float = 4096.0) -> int:
    """At most `wanted` simulation processes whose estimated memory together
    stays under `max_mb` MB (each builds a network of `gpus` GPUs)."""
    return max(1, min(wanted, int(max_mb // estimate_memory_mb(gpus))))
