"""Matplotlib figures for reports and notebooks.

Every function returns a `matplotlib.figure.Figure` built without pyplot (no
global state, any backend; Jupyter shows a returned Figure inline). Inputs in
the contract's units (seconds, GB = 1e9 bytes, tokens per second); memory
axes drawn in GiB (`sandbox.units`).
matplotlib is imported inside the functions so that `import sandbox` stays
light.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sandbox.timeline import OKABE_ITO
from sandbox.units import seconds

# the parts of `breakdown_s`, stacked in this order (context- and expert-parallel
# traffic last, drawn only when a plan has it, so other plans keep their colours)
BREAKDOWN = ("compute", "tp_comm", "pp_comm", "dp_comm", "bubble", "optimizer", "other",
             "cp_comm", "ep_comm")
MEMORY = ("params", "grads", "optimizer", "activations", "other")
# (colour, hatch, legend label) of each breakdown part: the timeline's Okabe-Ito styles
_C = OKABE_ITO
BREAKDOWN_STYLES = {"compute": (_C["blue"], "", "compute"),
                    "tp_comm": (_C["vermillion"], "", "TP comm"),
                    "pp_comm": (_C["black"], "", "PP comm"),
                    "dp_comm": (_C["purple"], "", "DP comm"),
                    "bubble": ("#BBBBBB", "", "pipeline bubble"),
                    "optimizer": (_C["yellow"], "", "optimizer"),
                    "other": ("#777777", "//", "host overhead"),
                    "cp_comm": (_C["sky"], "//", "CP comm"),
                    "ep_comm": (_C["green"], "//", "EP comm")}
_DARK = ("compute", "tp_comm", "pp_comm", "other")  # white labels on these
SERIES = (("o", "-"), ("s", "--"), ("^", "-."), ("D", ":"), ("v", "-"), ("P", "--"))
STYLE = {"font.size": 11, "axes.titlesize": 13, "axes.labelsize": 11, "legend.fontsize": 9,
         "xtick.labelsize": 9, "ytick.labelsize": 10, "axes.grid": True, "grid.alpha": 0.3}


def _figure(width: float, height: float, ncols: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(1, ncols)
    return fig, axes


RECOMPUTE_SHORT = {"none": "none", "selective": "sel", "full": "full"}


def plan_label(plan: Any) -> str:
    """Short name of a plan's parallel layout: `TP8 PP16 v3 DP8 mb1 Z1 rc-sel`
    (recompute: rc-none, rc-sel, rc-full)."""
    p = plan.parallel if hasattr(plan, "parallel") else plan
    get = (lambda k: p[k]) if isinstance(p, dict) else (lambda k: getattr(p, k))
    v = f" v{get('vpp')}" if get("vpp") > 1 else ""
    sched = {"gpipe": " gpipe", "zero-bubble": " ZB"}.get(get("schedule"), "")
    return (f"TP{get('tp')} PP{get('pp')}{v} DP{get('dp')} mb{get('micro_batch')} "
            f"Z{get('zero')} rc-{RECOMPUTE_SHORT.get(get('recompute'), get('recompute'))}"
            f"{sched}")


def _gpu_name(name: str) -> str:
    """`a100-80g` -> `A100 80GB`, `h100-sxm` -> `H100 SXM`."""
    return " ".join(w[:-1] + "GB" if w[:-1].isdigit() and w.endswith("g") else w.upper()
                    for w in name.split("-"))


def plan_title(plan: Any) -> str:
    """Model, cluster (GPU count and kind) and layout of a plan, e.g.
    `gpt3-175b on 1,024 x A100 80GB (dgx-a100-80g): TP8 PP16 v3 DP8 mb1 Z1 rc-sel`."""
    c = plan.cluster
    gpu = "mixed GPUs" if getattr(c, "node_gpus", None) else _gpu_name(c.gpu.name)
    return f"{plan.model.name} on {plan.world_size:,} x {gpu} ({c.name}): {plan_label(plan)}"


def _wrap(label: str, width: int = 16) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(label, width)) or label


def breakdown_bars(names: Sequence[str], breakdowns: Sequence[dict], title: str = ""):
    """Stacked bars of each plan's step time by component, seconds."""
    import matplotlib

    with matplotlib.rc_context(STYLE):
        fig, ax = _figure(max(6.0, 1.3 * len(names) + 3), 4.8)
        x = range(len(names))
        bottom = [0.0] * len(names)
        totals = [sum(float(v) for v in b.values()) or 1e-12 for b in breakdowns]
        for part in BREAKDOWN:
            vals = [float(b.get(part, 0.0)) for b in breakdowns]
            if not any(vals):
                continue
            style = BREAKDOWN_STYLES[part]
            ax.bar(x, vals, bottom=bottom, label=style[2], color=style[0], hatch=style[1],
                   edgecolor="white", linewidth=0.5)
            for xi, v, b0, t in zip(x, vals, bottom, totals, strict=True):
                if v / t >= 0.06:  # the share of a visible part, inside its segment
                    ax.annotate(f"{v / t:.0%}", (xi, b0 + v / 2), ha="center", va="center",
                                fontsize=8, color="white" if part in _DARK else "black")
            bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
        for xi, total in zip(x, bottom, strict=True):
            ax.annotate(seconds(total), (xi, total), ha="center", va="bottom", fontsize=9)
        ax.set_xticks(list(x), [_wrap(n) for n in names])
        ax.set_ylabel("time per step (s)")
        ax.set_ylim(0, max(bottom + [1e-9]) * 1.12)
        fig.suptitle(_wrap(title or "Where the step time goes", 50), fontsize=12)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
        return fig


def memory_bars(names: Sequence[str], memories: Sequence[dict], capacity_gb: float,
                title: str = "", reserve: float = 0.0):
    """Stacked bars of memory per GPU by component against the GPU's capacity.

    `memories` and `capacity_gb` in GB (1e9 bytes, the contract's unit); the
    axis in GiB, the capacity line labelled with the GPU's nominal GiB (85.9 GB:
    80 GiB) and, when `reserve` > 0, a second line where the reserved fraction
    (`cluster.memory_reserve`) begins: a plan fits below it.
    """
    import matplotlib

    from sandbox.units import gib, share, to_gib

    cap = to_gib(capacity_gb)
    with matplotlib.rc_context(STYLE):
        fig, ax = _figure(max(6.0, 1.3 * len(names) + 3), 4.8)
        x = range(len(names))
        bottom = [0.0] * len(names)
        colors = matplotlib.colormaps["Set2"]
        for i, part in enumerate(MEMORY):
            vals = [to_gib(float(m.get(part, 0.0))) for m in memories]
            if not any(vals):
                continue
            ax.bar(x, vals, bottom=bottom, label=part, color=colors(i))
            bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
        ax.axhline(cap, color="crimson", linestyle="--", linewidth=1.5,
                   label=f"GPU capacity {gib(capacity_gb)}")
        if reserve > 0:
            ax.axhline(cap * (1 - reserve), color="darkorange", linestyle=":", linewidth=1.5,
                       label=f"fits below {gib(capacity_gb * (1 - reserve))} "
                             f"({share(reserve)} reserved)")
        ax.set_xticks(list(x), [_wrap(n) for n in names])
        ax.set_ylabel("memory per GPU (GiB)")
        ax.set_ylim(0, max(bottom + [cap]) * 1.15)
        fig.suptitle(_wrap(title or "Memory per GPU (most loaded stage)", 50), fontsize=12)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
        return fig


def timeline(spans: Sequence[dict], title: str = "", max_ranks: int = 16, subtitle: str = ""):
    """Gantt chart of one step: spans are `{rank, stream, kind, start_s, end_s}`
    (with `microbatch`, `chunk`), drawn by `sandbox.timeline.gantt`: each rank's
    compute with its bubbles, its communication on thin sub-rows, at most
    `max_ranks` ranks (evenly spread, first and last kept, noted when sampled)."""
    from sandbox.timeline import gantt

    return gantt(spans, title or "Pipeline timeline of one step", subtitle, max_ranks=max_ranks)


def scaling_curves(curves: dict, title: str = ""):
    """GPUs vs tokens/s and vs MFU; `curves` maps a plan name to a DataFrame
    with columns gpus, tokens_per_s, mfu."""
    import matplotlib

    with matplotlib.rc_context(STYLE):
        fig, (left, right) = _figure(12.0, 5.2, ncols=2)
        top = 0.0
        for i, (name, df) in enumerate(curves.items()):
            marker, line = SERIES[i % len(SERIES)]
            kw = {"marker": marker, "linestyle": line, "markersize": 7, "label": name,
                  "markerfacecolor": "none", "color": f"C{i % 10}"}
            left.plot(df["gpus"], df["tokens_per_s"] / df["gpus"], **kw)
            right.plot(df["gpus"], 100 * df["mfu"], **kw)
            top = max([top, *(100 * df["mfu"])])
        gpus = sorted({int(g) for df in curves.values() for g in df["gpus"]})
        for ax in (left, right):
            ax.set_xscale("log", base=2)
            ax.set_xticks(gpus, [f"{g:,}" for g in gpus])
            ax.minorticks_off()
            ax.set_xlabel("GPUs (data-parallel size varied)")
        left.set_ylabel("throughput per GPU (tokens/s)")
        left.set_ylim(0, max([1.0, *(float((df["tokens_per_s"] / df["gpus"]).max())
                                     for df in curves.values() if len(df))]) * 1.15)
        left.set_title("Throughput per GPU (flat = perfect scaling)", fontsize=11)
        right.set_ylabel("MFU (%)")
        right.set_ylim(0, min(100.0, top * 1.2 + 1.0))
        right.set_title("Model FLOPs utilisation", fontsize=11)
        fig.legend(*left.get_legend_handles_labels(), loc="outside lower center",
                   ncol=min(3, len(curves)), frameon=False)
        fig.suptitle(title or "Scaling with data parallelism (microbatches per replica fixed)")
        return fig


def predicted_vs_measured(labels: Sequence[str], predicted: Sequence[float],
                          measured: Sequence[float], unit: str = "s",
                          what: str = "step time", title: str = ""):
    """Grouped bars of predicted and measured values with the relative error."""
    import matplotlib

    with matplotlib.rc_context(STYLE):
        fig, ax = _figure(max(6.0, 1.4 * len(labels) + 3), 4.6)
        x = list(range(len(labels)))
        w = 0.38
        ax.bar([i - w / 2 for i in x], predicted, w, label="predicted (simulator)")
        ax.bar([i + w / 2 for i in x], measured, w, label="measured (runtime)")
        for i, (p, m) in enumerate(zip(predicted, measured, strict=True)):
            if m:
                ax.annotate(f"{(p - m) / m:+.0%}", (i, max(p, m)), ha="center", va="bottom",
                            fontsize=9)
        ax.set_xticks(x, [_wrap(lbl, 22) for lbl in labels])
        ax.set_ylabel(f"{what} ({unit})")
        ax.set_ylim(0, max(list(predicted) + list(measured) + [1e-12]) * 1.15)
        ax.set_title(title or f"Predicted vs measured {what}")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
        return fig


def search_scatter(result, title: str = ""):
    """A search result: step time vs memory per GPU, Pareto front highlighted.

    `result`: a `sim.search.SearchResult` (draws every simulated plan, its
    `all_simulated`) or a result table.
    """
    import matplotlib

    from sandbox.units import to_gib

    result = getattr(result, "all_simulated", result)

    with matplotlib.rc_context(STYLE):
        fig, ax = _figure(8.5, 5.0)
        front = result[result["pareto_time_memory"]].sort_values("memory_gb")
        ax.scatter(to_gib(result["memory_gb"]), result["step_time_s"], s=28, alpha=0.7,
                   label="simulated plans")
        ax.step(to_gib(front["memory_gb"]), front["step_time_s"], where="post",
                color="crimson", marker="o", label="Pareto front (time vs memory)")
        best = result.iloc[0]
        ax.annotate(f"best: {plan_label(best)}", (to_gib(best["memory_gb"]),
                                                  best["step_time_s"]),
                    xytext=(12, 18), textcoords="offset points", fontsize=9,
                    arrowprops={"arrowstyle": "->", "color": "0.3"})
        ax.set_xlabel("memory per GPU (GiB)")
        ax.set_ylabel("predicted step time (s)")
        ax.set_title(title or "Search: step time vs memory")
        ax.legend(loc="upper right")
        return fig
