"""A SimResult's timeline as Chrome-trace JSON (Perfetto, chrome://tracing) and a
Gantt figure, both drawn by the one renderer, `sandbox.timeline`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sandbox import timeline as tl

NOTE = ("simulated ranks (global rank of tensor-parallel index 0 of each pipeline stage "
        "of each simulated data-parallel replica; the other ranks run the same timeline): ")


def write_chrome_trace(result: Any, path: str | Path) -> str:
    """One process per simulated rank, one thread per track; times in us."""
    ranks = sorted({int(s["rank"]) for s in result.timeline})
    return tl.write_chrome_trace(result.timeline, path, NOTE + ", ".join(map(str, ranks)))


def gantt(result: Any, path: str | Path | None = None, title: str | None = None,
          max_ranks: int = 16) -> Any:
    """Gantt figure of the simulated step (matplotlib Figure; saved when `path`)."""
    head = f"step {result.step_time_s:.4g} s, MFU {result.mfu:.1%}"
    note = tl.simulated_note(result.timeline, result.world_size)
    fig = tl.gantt(result.timeline, title or "Simulated step",
                   f"{head}; {note}" if note else head, max_ranks)
    if path:
        fig.savefig(path, dpi=tl.DPI)
    return fig
