"""One step's timeline, simulated above and measured below, on one time axis.

Each rank is a row: compute and the optimizer as tall bars, communication
(in flight) as short bars under them, so overlap with compute stays visible.
Both panels share the x axis (seconds from the start of the step) so their
lengths compare directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

COLORS = {"compute": "#4C78A8", "forward": "#4C78A8", "backward": "#72B7B2",
          "optimizer": "#9D755D", "clip": "#B279A2", "tp_comm": "#F58518",
          "dp_comm": "#54A24B", "pp_comm": "#E45756", "pp_comm+bubble": "#E45756",
          "bubble": "#DDDDDD", "tp+dp": "#EECA3B", "other": "#BAB0AC"}
COMM = ("tp_comm", "dp_comm", "pp_comm", "pp_comm+bubble", "tp+dp", "other")


def _category(name: str) -> str:
    """Map a simulator event label to a colour category."""
    n = name.lower()
    for key in ("optimizer", "bubble", "tp_comm", "dp_comm", "pp_comm"):
        if key in n:
            return key
    if any(k in n for k in ("send", "recv", "p2p")):
        return "pp_comm"
    if any(k in n for k in ("all_reduce", "allreduce", "all_gather", "reduce_scatter", "comm")):
        return "dp_comm" if "dp" in n or "grad" in n else "tp_comm"
    if "bwd" in n or "backward" in n or "recompute" in n:
        return "backward"
    return "compute"


def sim_intervals(simres: Any) -> dict[int, dict[str, list[tuple[float, float]]]]:
    """Per-rank {category: [(start_s, end_s)]} from a SimResult's timeline
    (read with `sandbox.report.timeline_spans`: rank, stream, kind, start_s, end_s)."""
    from sandbox.report import timeline_spans

    out: dict[int, dict[str, list]] = {}
    for sp in timeline_spans(simres):
        kind, stream = str(sp["kind"]), str(sp["stream"])
        cat = _category(kind if "comm" not in stream or "comm" in kind else f"{kind} comm")
        out.setdefault(int(sp["rank"]), {}).setdefault(cat, []).append(
            (sp["start_s"], sp["end_s"]))
    return out


def measured_intervals(profile: dict | None) -> dict[int, dict[str, list[tuple[float, float]]]]:
    if not profile:
        return {}
    return {r["rank"]: {k: [tuple(iv) for iv in v] for k, v in r["intervals_s"].items()}
            for r in profile["ranks"]}


def _panel(ax: Any, rows: dict[int, dict[str, list]], title: str, used: set) -> None:
    for rank, cats in rows.items():
        y = -rank
        for cat, ivs in cats.items():
            if not ivs:
                continue
            comm = cat in COMM
            bars = [(a, max(b - a, 1e-9)) for a, b in ivs]
            ax.broken_barh(bars, (y - 0.4, 0.3) if comm else (y - 0.05, 0.45),
                           facecolors=COLORS.get(cat, "#999999"), edgecolor="none")
            used.add(cat)
    ax.set_yticks([-r for r in rows], [f"rank {r}" for r in rows])
    ax.set_title(title, loc="left", fontsize=10)
    ax.grid(axis="x", alpha=0.3)


def plot_timelines(simres: Any, profile: dict | None, path: str | Path,
                   title: str = "") -> Path:
    """Draw the simulated and the measured step; returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    sim_rows, real_rows = sim_intervals(simres), measured_intervals(profile)
    n = max(len(sim_rows), len(real_rows), 1)
    fig, (a1, a2) = plt.subplots(2, 1, sharex=True, figsize=(11, 2.2 + 1.1 * n * 2),
                                 constrained_layout=True)
    used: set = set()
    step_sim = max((b for c in sim_rows.values() for iv in c.values() for _, b in iv),
                   default=0.0)
    step_real = max((b for c in real_rows.values() for iv in c.values() for _, b in iv),
                    default=0.0)
    _panel(a1, sim_rows, f"simulated: {step_sim:.3g} s per step"
           + ("" if sim_rows else " (the simulator returned no timeline)"), used)
    _panel(a2, real_rows, f"measured (torch.profiler, one step): {step_real:.3g} s", used)
    for ax, end in ((a1, step_sim), (a2, step_real)):
        if end:
            ax.axvline(end, color="black", lw=0.8, ls="--")
    a2.set_xlabel("seconds from the start of the step")
    fig.suptitle(title or "one training step: simulated vs measured", fontsize=11)
    handles = [Patch(color=COLORS[c], label=c + (" (in flight)" if c in COMM else ""))
               for c in COLORS if c in used]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=min(6, len(handles)),
                   fontsize=8, frameon=False)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
