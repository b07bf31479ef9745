"""SimResult: the DESIGN.md `simulate` contract plus the timeline."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

from sandbox import units as u
from sim.trace import gantt, write_chrome_trace

BREAKDOWN = ("compute", "tp_comm", "pp_comm", "dp_comm", "bubble", "optimizer", "other")


@dataclass
class SimResult:
    """One simulated step. Times in seconds, memory in GB (1e9 bytes).

    `breakdown_s` splits the critical (slowest) rank's step: exposed compute,
    tensor-parallel communication (blocking in Megatron-LM), exposed pipeline
    transfers, exposed data-parallel communication, idle pipeline bubble,
    optimizer, and `other` (what is left: mostly ops bound by the host's
    kernel dispatch, given in `extra["host_bound_s"]`); it adds up to
    `step_time_s`.
    `timeline` holds `{rank, stream, kind, start_s, end_s, microbatch, chunk}`
    spans (`sim.engine`; drawn by `sandbox.timeline`).
    """

    params: int
    flops_per_step: float
    hw_flops_per_step: float
    step_time_s: float
    tokens_per_s: float
    tflops_per_gpu: float
    hw_tflops_per_gpu: float
    mfu: float
    hfu: float
    memory_gb_per_gpu: dict[str, float]
    fits: bool
    breakdown_s: dict[str, float]
    events: int
    sim_wall_s: float
    world_size: int = 0
    critical_rank: int = 0
    gpu_memory_gb: float = 0.0  # the (smallest) GPU's memory `fits` is checked against, GB
    memory_reserve: float = 0.0  # the fraction of it a plan must leave free to fit
    extra: dict[str, Any] = field(default_factory=dict)
    timeline: list[dict] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON contract of `sandbox simulate --json`."""
        d = {k: getattr(self, k) for k in (
            "params", "flops_per_step", "hw_flops_per_step", "step_time_s", "tokens_per_s",
            "tflops_per_gpu", "hw_tflops_per_gpu", "mfu", "hfu", "memory_gb_per_gpu", "fits",
            "breakdown_s", "events", "sim_wall_s", "world_size", "critical_rank",
            "gpu_memory_gb", "memory_reserve")}
        d.update(self.extra)
        return d

    def _repr_html_(self) -> str:
        """The contract as a table, shown in `sandbox.units` (percent, s, GiB)."""
        rows = [(k, _shown(k, v, self.step_time_s)) for k, v in self.to_dict().items()
                if not isinstance(v, dict)]
        rows += [(f"breakdown {k}", u.seconds(v, of=self.step_time_s))
                 for k, v in self.breakdown_s.items()]
        rows += [(f"memory {k}", u.gib(v)) for k, v in self.memory_gb_per_gpu.items()]
        body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(v)}</td></tr>"
                       for k, v in rows)
        return f"<table>{body}</table>"

    def plot(self, path: str | None = None, title: str | None = None) -> Any:
        """Gantt chart of the timeline (matplotlib Figure; saved when `path`)."""
        return gantt(self, path, title)

    def chrome_trace(self, path: str) -> str:
        """Write the timeline as Chrome-trace JSON (Perfetto) to `path`."""
        return write_chrome_trace(self, path)


def _shown(key: str, v: Any, step_s: float) -> str:
    """One contract scalar as text, by its name's unit."""
    return str(u.by_name(key, v, step_s))
