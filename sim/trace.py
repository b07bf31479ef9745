"""Timeline export: Chrome-trace JSON (Perfetto, chrome://tracing) and a Gantt PNG."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

COLORS = {"fwd": "#4c72b0", "bwd": "#dd8452", "wgrad": "#c44e52", "optimizer": "#8172b3",
          "pp_comm": "#55a868", "dp_comm": "#937860", "param_allgather": "#da8bc3",
          "cp_comm": "#8c8c00"}
STREAMS = ("compute", "pp_send_fwd", "pp_send_bwd", "dp_comm", "cp_ring")


def write_chrome_trace(result: Any, path: str | Path) -> str:
    """One process per simulated rank, one thread per stream; times in us."""
    events = []
    ranks = sorted({s["rank"] for s in result.timeline})
    for r in ranks:
        events.append({"ph": "M", "name": "process_name", "pid": r, "tid": 0,
                       "args": {"name": f"rank {r}"}})
        for i, st in enumerate(STREAMS):
            events.append({"ph": "M", "name": "thread_name", "pid": r, "tid": i,
                           "args": {"name": st}})
    for s in result.timeline:
        tid = STREAMS.index(s["stream"]) if s["stream"] in STREAMS else len(STREAMS)
        events.append({"ph": "X", "name": s["kind"], "cat": s["stream"], "pid": s["rank"],
                       "tid": tid, "ts": s["start_s"] * 1e6,
                       "dur": (s["end_s"] - s["start_s"]) * 1e6,
                       "args": {"microbatch": s.get("microbatch", -1)}})
    Path(path).write_text(json.dumps({"traceEvents": events, "displayTimeUnit": "ms"}))
    return str(path)


def gantt(result: Any, path: str | Path | None = None, title: str | None = None,
          max_ranks: int = 32) -> Any:
    """Compute stream of each rank (tall bars) and its communication (thin bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    ranks = sorted({s["rank"] for s in result.timeline})[:max_ranks]
    row = {r: i for i, r in enumerate(ranks)}
    fig, ax = plt.subplots(figsize=(12, 1.0 + 0.45 * len(ranks)))
    by: dict[tuple, list] = {}
    for s in result.timeline:
        if s["rank"] in row:
            comm = s["stream"] != "compute"
            by.setdefault((row[s["rank"]], s["kind"], comm), []).append(
                (s["start_s"], s["end_s"] - s["start_s"]))
    for (y, kind, comm), bars in by.items():
        ax.broken_barh(bars, (y - 0.42, 0.22) if comm else (y - 0.18, 0.56),
                       facecolors=COLORS.get(kind, "#999999"), edgecolor="none")
    ax.set_yticks(range(len(ranks)), [f"rank {r}" for r in ranks])
    ax.invert_yaxis()
    ax.set_xlabel("time (s)")
    ax.set_ylabel("simulated rank (pipeline stage)")
    ax.set_title(title or f"Simulated step: {result.step_time_s:.3f} s, "
                          f"MFU {result.mfu:.1%}")
    kinds = sorted({k for _, k, _ in by})
    ax.legend(handles=[Patch(color=COLORS.get(k, "#999999"), label=k) for k in kinds],
              loc="upper right", fontsize=8, ncol=len(kinds))
    ax.set_xlim(0, result.step_time_s * 1.01)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig
