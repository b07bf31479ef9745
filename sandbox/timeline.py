"""The one timeline renderer: Gantt figures and Chrome traces of one step.

A span is `{rank, stream, kind, start_s, end_s, microbatch, chunk}` (seconds;
the simulator's `SimResult.timeline` read with `sandbox.report.timeline_spans`,
or a measured profile through `measured_spans`; -1: no micro-batch / chunk).
Each span goes on a track of its rank (compute with its bubbles, then TP, CP,
EP, PP, DP communication as thin sub-rows) and takes its category's style
(Okabe-Ito colours, hatching where a colour repeats on another track). At
most `max_ranks` (<= MAX_RANKS) ranks are drawn, evenly spread, the first
and last always, with a visible note naming those shown. Figures are matplotlib `Figure`s built
without pyplot; matplotlib is imported inside the functions (`import sandbox`
stays light). Chrome traces: one process per rank, one named thread per
track, times in microseconds.
"""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Okabe & Ito (2008), "Color Universal Design": distinct under the common colour-vision deficiencies
OKABE_ITO = {"blue": "#0072B2", "orange": "#E69F00", "green": "#009E73", "yellow": "#F0E442",
             "sky": "#56B4E9", "vermillion": "#D55E00", "purple": "#CC79A7", "black": "#000000"}


@dataclass(frozen=True)
class Style:
    """How one category is drawn: face colour, hatch ("" none) and legend label."""

    color: str
    hatch: str
    label: str


_C = OKABE_ITO
STYLES: dict[str, Style] = {  # legend order
    "fwd": Style(_C["blue"], "", "forward"),
    "recompute": Style(_C["sky"], "", "recompute"),
    "bwd": Style(_C["orange"], "", "backward"),
    "wgrad": Style(_C["green"], "", "weight gradients"),
    "compute": Style("#555555", "", "compute (fwd + bwd)"),  # measured: not split
    "optimizer": Style(_C["yellow"], "", "optimizer"),
    "bubble": Style("#D9D9D9", "", "bubble (waiting)"),
    "tp_comm": Style(_C["vermillion"], "", "TP comm"),
    "cp_comm": Style(_C["sky"], "////", "CP ring"),
    "ep_comm": Style(_C["green"], "////", "EP all-to-all"),
    "pp_comm": Style(_C["black"], "", "PP send"),
    "dp_comm": Style(_C["purple"], "", "DP grad reduce"),
    "param_allgather": Style(_C["purple"], "////", "DP param all-gather"),
    "comm": Style("#999999", "////", "comm (TP or DP)"),
    "other": Style("#999999", "", "other"),
}
# top to bottom within a rank; DP reductions and parameter gathers apart (they may overlap)
TRACKS = ("compute", "tp", "cp", "ep", "pp", "dp", "ag", "comm")
TRACK_LABELS = {"tp": "TP", "cp": "CP", "ep": "EP", "pp": "PP", "dp": "DP", "ag": "DP AG",
                "comm": "comm"}
STREAM_TRACKS = {"compute": "compute", "tp": "tp", "cp_ring": "cp", "ep_a2a": "ep",
                 "pp_send_fwd": "pp", "pp_send_bwd": "pp", "dp_comm": "dp"}
CATEGORY_TRACKS = {"tp_comm": "tp", "cp_comm": "cp", "ep_comm": "ep", "pp_comm": "pp",
                   "dp_comm": "dp", "param_allgather": "ag", "comm": "comm", "other": "comm"}
ALIASES = {"forward": "fwd", "backward": "bwd", "clip": "optimizer", "pp_comm+bubble": "pp_comm",
           "tp+dp": "comm", "idle": "bubble"}
OPS = ("fwd", "recompute", "bwd", "wgrad")  # compute spans labelled micro-batch[.chunk]
MAX_RANKS = 32  # drawn at most (more would not stay readable within MAX_HEIGHT_IN)
MAX_HEIGHT_IN = 9.0  # the tallest figure: 990 px at dpi 110
WIDTH_IN = 12.0
DPI = 110


def category(kind: str) -> str:
    """The style category of a span kind (simulated or measured label)."""
    k = kind.lower()
    if k in STYLES:
        return k
    if k in ALIASES:
        return ALIASES[k]
    for key in ("optimizer", "bubble", "param_allgather", "tp_comm", "cp_comm", "ep_comm",
                "dp_comm", "pp_comm", "recompute", "wgrad"):
        if key in k:
            return key
    if any(w in k for w in ("send", "recv", "p2p")):
        return "pp_comm"
    if any(w in k for w in ("all_reduce", "allreduce", "all_gather", "reduce_scatter", "comm")):
        return "comm"
    if "bwd" in k or "backward" in k:
        return "bwd"
    return "fwd" if "fwd" in k or "forward" in k else "other"


def track(span: dict) -> str:
    """The rank's track a span is drawn on (one of TRACKS)."""
    stream = str(span.get("stream", "compute"))
    cat = category(str(span.get("kind", "")))
    if stream in STREAM_TRACKS:
        t = STREAM_TRACKS[stream]
        return "ag" if t == "dp" and cat == "param_allgather" else t
    return CATEGORY_TRACKS.get(cat, "compute")


def thread(span: dict) -> str:
    """The Chrome-trace thread of a span: its track, PP per direction, DP
    reductions apart from parameter gathers (their spans may overlap)."""
    t = track(span)
    stream = str(span.get("stream", ""))
    if t == "pp":
        return "pp send bwd" if stream.endswith("bwd") else "pp send fwd"
    return {"dp": "dp grad reduce", "ag": "dp param all-gather"}.get(t, t)


def sample_ranks(ranks: Sequence[int], max_ranks: int = 16) -> list[int]:
    """At most `max_ranks` (>= 2) of the sorted ranks, evenly spread, first and last kept."""
    rs = sorted(set(ranks))
    m = max(2, max_ranks)
    if len(rs) <= m:
        return rs
    return [rs[round(i * (len(rs) - 1) / (m - 1))] for i in range(m)]


def sampling_note(shown: Sequence[int], ranks: Sequence[int]) -> str:
    """'showing 16 of 32 ranks: 0, 2, ...' when some ranks are left out, else ''."""
    n = len(set(ranks))
    if len(shown) >= n:
        return ""
    return f"showing {len(shown)} of {n} ranks: " + ", ".join(str(r) for r in shown)


def measured_spans(profile: dict | None) -> list[dict]:
    """A measured profile's `ranks[i].intervals_s` ({category: [(start_s, end_s)]}) as spans."""
    out = []
    for r in (profile or {}).get("ranks", []):
        for kind, ivs in r.get("intervals_s", {}).items():
            stream = "compute" if CATEGORY_TRACKS.get(category(kind)) is None else kind
            out += [{"rank": r["rank"], "stream": stream, "kind": kind, "start_s": float(a),
                     "end_s": float(b), "microbatch": -1, "chunk": -1} for a, b in ivs]
    return out


@dataclass
class _Panel:
    """One axes of the figure: its spans, ranks shown, tracks, height in data units."""

    title: str
    spans: list[dict]
    shown: list[int]
    note: str
    tracks: list[str]
    label_rows: bool = True  # name every rank's sub-rows (else a line says which they are)

    @property
    def header(self) -> str:
        """The axes title: panel title, sampling note, sub-row names (wrapped)."""
        rows = "" if self.label_rows or len(self.tracks) < 2 else \
            "thin rows under each rank: " + ", ".join(TRACK_LABELS[t] for t in self.tracks[1:])
        note = "; ".join(x for x in (self.note, rows) if x)
        return "\n".join([self.title] * bool(self.title) + textwrap.wrap(note, 170))

    @property
    def block(self) -> float:
        return 1.4 + 0.4 * (len(self.tracks) - 1)  # compute 1.0, sub-rows 0.4, gap 0.4

    @property
    def units(self) -> float:
        return max(1, len(self.shown)) * self.block


def _panel(title: str, spans: Sequence[dict], max_ranks: int) -> _Panel:
    ranks = [int(s["rank"]) for s in spans]
    shown = sample_ranks(ranks, min(max_ranks, MAX_RANKS))
    keep = set(shown)
    mine = [s for s in spans if int(s["rank"]) in keep]
    present = {track(s) for s in mine}
    tracks = ["compute"] + [t for t in TRACKS[1:] if t in present]
    return _Panel(title, mine, shown, sampling_note(shown, ranks), tracks)


def chunked(panels: Sequence[_Panel]) -> bool:
    """Whether any span is of a virtual-stage chunk beyond the first (interleaved)."""
    return any(int(s.get("chunk", -1)) > 0 for p in panels for s in p.spans)


def _overhead(panels: list[_Panel], title_lines: int, legend_rows: int) -> float:
    """Inches of the figure outside the axes: titles, notes, time axis, legend."""
    lines = sum(p.header.count("\n") + 1 for p in panels if p.header)
    return 0.35 * title_lines + 0.22 * lines + 0.55 * len(panels) + 0.25 * legend_rows + 0.3


def _heights(panels: list[_Panel], title_lines: int, legend_rows: int) -> list[float]:
    """Axes heights (inches): 0.2 in per data unit, at least 1.1 in, all of
    them within MAX_HEIGHT_IN less the title, labels and legend."""
    budget = MAX_HEIGHT_IN - _overhead(panels, title_lines, legend_rows)
    total = sum(p.units for p in panels)
    per_unit = min(0.2, budget / total)
    return [max(1.1, p.units * per_unit) for p in panels]


def _draw(ax: Any, p: _Panel, fontsize: float, px_per_s: float, px_per_unit: float,
          used: set) -> bool:
    """Draw one panel; True when its bars carry micro-batch labels."""
    by: dict[tuple[str, float, float], list] = {}
    sub = {t: i for i, t in enumerate(p.tracks[1:])}
    row = {r: i * p.block for i, r in enumerate(p.shown)}
    labels: list[tuple[float, float, str, str]] = []
    chunks = chunked([p])
    for s in p.spans:
        t, cat = track(s), category(str(s["kind"]))
        y0 = row[int(s["rank"])]
        y, h = (y0, 1.0) if t == "compute" else (y0 + 1.05 + 0.4 * sub[t], 0.32)
        a, b = float(s["start_s"]), float(s["end_s"])
        by.setdefault((cat, y, h), []).append((a, max(b - a, 0.0)))
        used.add(cat)
        mb, chunk = int(s.get("microbatch", -1)), int(s.get("chunk", -1))
        text = "" if mb < 0 else f"{mb}.{chunk}" if chunks and chunk >= 0 else f"{mb}"
        if cat in OPS and text and (b - a) * px_per_s > 6 * len(text) + 6:
            dark = cat in ("fwd", "wgrad")
            labels.append(((a + b) / 2, y0 + 0.5, text, "white" if dark else "black"))
    for (cat, y, h), bars in by.items():
        st = STYLES.get(cat, STYLES["other"])
        ax.broken_barh(bars, (y, h), facecolors=st.color, hatch=st.hatch or None,
                       edgecolor="white" if st.hatch else "none", linewidth=0)
    labelled = bool(labels) and px_per_unit >= 11 and len(labels) <= 600
    for x, y, text, color in labels if labelled else ():
        ax.text(x, y, text, ha="center", va="center", fontsize=7, clip_on=True, color=color)
    ticks = [row[r] + 0.5 for r in p.shown]
    ax.set_yticks(ticks, [f"rank {r}" for r in p.shown], fontsize=fontsize)
    minor, names = [], []
    for r in p.shown:  # sub-row names when there is room
        if p.label_rows:
            for t, j in sub.items():
                minor.append(row[r] + 1.05 + 0.4 * j + 0.16)
                names.append(TRACK_LABELS[t])
    ax.set_yticks(minor, names, minor=True, fontsize=max(5.0, fontsize - 2.5))
    ax.tick_params(axis="y", which="minor", length=0, pad=2)
    ax.tick_params(axis="y", which="major", length=0)
    ax.set_ylim(len(p.shown) * p.block - 0.3, -0.1)  # first rank on top
    ax.grid(axis="x", alpha=0.3)
    ax.grid(axis="y", visible=False)
    end = max((float(s["end_s"]) for s in p.spans), default=0.0)
    if end:
        ax.axvline(end, color="black", lw=0.8, ls="--")
    if p.header:
        ax.set_title(p.header, loc="left", fontsize=9)
    return labelled


def gantt_panels(panels: Sequence[tuple[str, Sequence[dict]]], title: str = "",
                 subtitle: str = "", max_ranks: int = 16) -> Any:
    """Gantt figure of one step per panel (e.g. simulated above measured), one
    shared time axis (seconds); returns a matplotlib Figure (not pyplot)."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    ps = [_panel(t, s, max_ranks) for t, s in panels]
    cats = {category(str(s["kind"])) for p in ps for s in p.spans}
    ncol = 6
    legend_rows = math.ceil(len(cats) / ncol)
    sub = textwrap.wrap(subtitle, 150)  # fits the figure's width at the title's size
    heads = bool(title) + len(sub)
    heights = _heights(ps, heads, legend_rows)
    for p, h in zip(ps, heights, strict=True):  # room to name each rank's sub-rows?
        p.label_rows = h * DPI / p.units * 0.4 >= 8.5
    heights = _heights(ps, heads, legend_rows)
    height = sum(heights) + _overhead(ps, heads, legend_rows)
    fig = Figure(figsize=(WIDTH_IN, min(MAX_HEIGHT_IN, height)),
                 layout="constrained")
    axes = fig.subplots(len(ps), 1, sharex=True, squeeze=False,
                        gridspec_kw={"height_ratios": heights})[:, 0]
    end = max((float(s["end_s"]) for p in ps for s in p.spans), default=0.0) or 1.0
    px_per_s = (WIDTH_IN - 1.3) * DPI / (end * 1.01)
    used: set = set()
    labelled = False
    for ax, p, h in zip(axes, ps, heights, strict=True):
        px_per_unit = h * DPI / p.units
        fontsize = max(6.0, min(9.0, px_per_unit * p.block * 0.45))
        labelled = _draw(ax, p, fontsize, px_per_s, px_per_unit, used) or labelled
        ax.set_xlim(0, end * 1.01)
        if not p.spans:
            ax.text(0.5, 0.5, "no timeline", transform=ax.transAxes, ha="center")
    axes[-1].set_xlabel("time within the step (s)" + (
        "; numbers in bars: micro-batch" + (".chunk" if chunked(ps) else "") if labelled else ""))
    if title or sub:
        fig.suptitle("\n".join([title] * bool(title) + sub), fontsize=11)
    handles = [Patch(facecolor=st.color, hatch=st.hatch or None,
                     edgecolor="white" if st.hatch else st.color, label=st.label)
               for c, st in STYLES.items() if c in used]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=min(ncol, len(handles)),
                   fontsize=8, frameon=False)
    return fig


def simulated_note(spans: Sequence[dict], world_size: int) -> str:
    """'8 of 32 ranks simulated: ...' when the spans hold fewer ranks than the plan has."""
    n = len({int(s["rank"]) for s in spans})
    if not world_size or n >= world_size:
        return ""
    return (f"{n:,} of {world_size:,} ranks simulated: one per pipeline stage of each simulated "
            "data-parallel replica (tensor-parallel peers and the other replicas run the same)")


def gantt(spans: Sequence[dict], title: str = "", subtitle: str = "",
          max_ranks: int = 16) -> Any:
    """Gantt figure of one step's spans (one panel); see `gantt_panels`."""
    return gantt_panels([("", spans)], title, subtitle, max_ranks)


THREADS = ("compute", "tp", "cp", "ep", "pp send fwd", "pp send bwd", "dp grad reduce",
           "dp param all-gather", "comm")  # Chrome-trace threads (tid: index), per rank


def _metadata(spans: Sequence[dict]) -> list[dict]:
    """Process (rank) and thread (track) names and their order."""
    used: dict[int, set] = {}
    for s in spans:
        used.setdefault(int(s["rank"]), set()).add(THREADS.index(thread(s)))
    meta: list[dict] = []
    for r in sorted(used):
        meta += [{"ph": "M", "name": "process_name", "pid": r, "args": {"name": f"rank {r}"}},
                 {"ph": "M", "name": "process_sort_index", "pid": r, "args": {"sort_index": r}}]
        for t in sorted(used[r]):
            meta += [{"ph": "M", "name": "thread_name", "pid": r, "tid": t,
                      "args": {"name": THREADS[t]}},
                     {"ph": "M", "name": "thread_sort_index", "pid": r, "tid": t,
                      "args": {"sort_index": t}}]
    return meta


def _event(s: dict) -> dict:
    return {"ph": "X", "name": str(s["kind"]), "cat": track(s), "pid": int(s["rank"]),
            "tid": THREADS.index(thread(s)), "ts": float(s["start_s"]) * 1e6,
            "dur": (float(s["end_s"]) - float(s["start_s"])) * 1e6,
            "args": {"microbatch": int(s.get("microbatch", -1)),
                     "chunk": int(s.get("chunk", -1))}}


def _other(spans: Sequence[dict], note: str) -> dict:
    ranks = sorted({int(s["rank"]) for s in spans})
    return {"ranks": ranks, "note": note or f"ranks present: {', '.join(map(str, ranks))}"}


def chrome_trace(spans: Sequence[dict], note: str = "") -> dict:
    """Chrome-trace JSON (Perfetto, chrome://tracing) of the spans: one process
    per rank, one named thread per track; ts and dur in microseconds; args carry
    microbatch and chunk; `otherData` lists the ranks present (and `note`)."""
    return {"traceEvents": _metadata(spans) + [_event(s) for s in spans],
            "displayTimeUnit": "ms", "otherData": _other(spans, note)}


def write_chrome_trace(spans: Sequence[dict], path: str | Path, note: str = "") -> str:
    """Write `chrome_trace(spans, note)` to `path`, one event at a time (a
    million spans need no second copy in memory); returns the path."""
    with open(path, "w") as f:
        f.write('{"displayTimeUnit": "ms", "otherData": ' + json.dumps(_other(spans, note))
                + ', "traceEvents": [')
        sep = ""
        for e in _metadata(spans):
            f.write(sep + json.dumps(e))
            sep = ", "
        for s in spans:
            f.write(sep + json.dumps(_event(s)))
            sep = ", "
        f.write("]}")
    return str(path)
