"""The lowered work of one step: what `sim.lowering` produces and `sim.engine` runs.

`Work` holds replica 0's work: per (stage, chunk, op kind) the GPU compute
seconds and blocking tensor-parallel communication seconds (`OpCost`), the op
order of every pipeline rank, the pipeline send seconds, the data-parallel
gradient buckets as flow phases, the ZeRO parameter all-gathers and the
optimizer seconds. Replicas whose work differs (`sim.replicas`) have their
own `RepWork`. Units: seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sandbox.specs import Plan
from sim.network.collectives import Phase
from sim.schedules import Op


def virtual_stages(plan: Plan) -> int:
    """Chunks (virtual stages) per pipeline rank the simulator schedules: `vpp`
    under the interleaved schedule, 1 under every other."""
    p = plan.parallel
    return p.vpp if p.schedule == "interleaved-1f1b" else 1


@dataclass
class OpCost:
    """GPU compute and blocking TP communication of one op, the host's
    dispatch time for it (the op takes the larger: `sim.host`), the
    context-parallel ring's and the expert all-to-alls' exposed transfers;
    seconds."""

    compute_s: float
    tp_s: float
    host_s: float = 0.0
    cp_s: float = 0.0
    ep_s: float = 0.0

    @property
    def total(self) -> float:
        return max(self.compute_s + self.tp_s + self.cp_s + self.ep_s, self.host_s)


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
    """Replica 0's work of one step, and the replicas that differ (seconds)."""

    plan: Plan
    p: int
    m: int
    v: int
    ops: list[list[Op]]  # per pipeline rank
    cost: dict[tuple[int, int, str], OpCost]  # (stage, chunk, kind) -> cost
    send_s: float  # activation (or gradient) between adjacent stages
    dp_buckets: list[list[tuple[float, list[Phase]]]]  # per stage: (params, phases)
    dp_overlap: bool
    # per stage, ZeRO-3: the all-gather of one chunk's parameters before each F
    # (and B, with reshard_after_forward) as flow phases (empty: no ZeRO-3);
    # its first unit's seconds alone; FSDP's copy-out seconds
    zero3_ag: list[list[Phase]]
    optimizer_s: list[float]
    # per stage, ZeRO 1/2: the updated parameter shards all-gathered after the step
    dp_gather: list[list[Phase]] = field(default_factory=list)
    flows_note: dict = field(default_factory=dict)
    zero3_ag_s: list[float] = field(default_factory=list)
    zero3_copy_s: list[float] = field(default_factory=list)
    zero3_units: list[int] = field(default_factory=list)  # FSDP units per chunk
    # per stage: one bucket's reduction after a micro-batch but the last (ZeRO-3
    # HSDP: the reduce-scatter without the replicate all-reduce); empty: dp_buckets'
    dp_early: list[list[Phase]] = field(default_factory=list)
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
