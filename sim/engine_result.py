"""What one simulated step produced: per-rank stats and the timeline's spans.

Units: seconds. `EngineResult.spans` holds `{rank, stream, kind, start_s,
end_s, microbatch, chunk}` dicts (`sim.engine`; -1: not applicable).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RankStats:
    """Where one simulated rank's step went (seconds)."""

    compute: float = 0.0
    tp_comm: float = 0.0
    cp_comm: float = 0.0  # exposed context-parallel ring transfers
    ep_comm: float = 0.0  # exposed expert-parallel all-to-alls
    pp_comm: float = 0.0
    bubble: float = 0.0
    dp_comm: float = 0.0
    optimizer: float = 0.0
    host: float = 0.0  # ops' time beyond their GPU work: the host dispatching them
    finish: float = 0.0


@dataclass
class EngineResult:
    """One simulated step: its seconds, per-rank stats, spans and event count."""

    step_time_s: float
    stats: dict[tuple[int, int], RankStats]  # (replica, stage) -> stats
    spans: list[dict] = field(default_factory=list)
    events: int = 0
