"""One step's timeline, simulated above and measured below, on one time axis.

Both panels are drawn by the one renderer (`sandbox.timeline`): each rank a
row, compute and the optimizer as tall bars, communication (in flight) on thin
sub-rows under them, so overlap with compute stays visible; the same palette
and categories for both. They share the x axis (seconds from the start of the
step) so their lengths compare directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_timelines(simres: Any, profile: dict | None, path: str | Path,
                   title: str = "") -> Path:
    """Draw the simulated and the measured step; returns the PNG path."""
    from sandbox import timeline as tl
    from sandbox.report import timeline_spans

    sim_spans, real_spans = timeline_spans(simres), tl.measured_spans(profile)
    step_sim = max((s["end_s"] for s in sim_spans), default=0.0)
    step_real = max((s["end_s"] for s in real_spans), default=0.0)
    fig = tl.gantt_panels(
        [(f"simulated: {step_sim:.3g} s per step"
          + ("" if sim_spans else " (the simulator returned no timeline)"), sim_spans),
         (f"measured (torch.profiler, one step): {step_real:.3g} s", real_spans)],
        title or "one training step: simulated vs measured")
    path = Path(path)
    fig.savefig(path, dpi=tl.DPI)
    return path
