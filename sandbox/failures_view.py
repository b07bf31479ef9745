"""Renderings of a whole run with failures (`sim.failures.FailureReport`):
the summary table of `sandbox simulate --failures` (text) and of Jupyter
(HTML), and the time to train against the checkpoint interval. Times in
seconds, hours or days as named, costs in USD. matplotlib is imported inside
the functions so that `import sandbox` stays light."""

from __future__ import annotations

import math
from typing import Any

from sandbox.plots import STYLE
from sandbox.report_html import table_html

DAY_H = 24.0
_SOURCE = {"plan's train.steps": "plan's train.steps; pass --tokens or --days for a whole run",
           "tokens": "given in tokens", "steps": "given in steps",
           "failure-free time": "given in failure-free days"}


def _fields(report: Any) -> dict:
    return report if isinstance(report, dict) else report.to_dict()


def _num(v: float | None) -> str:
    """A number for people: 4 significant digits, thousands separated."""
    if v is None or not math.isfinite(v):
        return "n/a"
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"


def _tokens(v: float) -> str:
    for scale, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M")):
        if v >= scale:
            return f"{v / scale:.4g}{unit}"
    return f"{v:,.0f}"


def _usd(v: float | None) -> str:
    if v is None:
        return "n/a"
    return f"${v / 1e6:,.1f}M" if v >= 1e6 else f"${v:,.0f}" if v >= 100 else f"${v:.2f}"


def _band(mean: float | None, p10: float | None, p90: float | None, fmt=_num) -> str:
    return f"{fmt(mean)}  (p10 {fmt(p10)}, p90 {fmt(p90)})"


def summary_rows(report: Any) -> list[tuple[str, str]]:
    """(label, value) rows of a `FailureReport` or its `to_dict()`: the budget,
    job MTBF, checkpoint cost and interval, interruptions with their top causes,
    goodput, time to train, lost time and cost (mean, p10, p90 over the runs)."""
    d = _fields(report)
    steps = d["budget_steps"]
    n = f"{steps:,.0f}" if float(steps).is_integer() else f"{steps:,.1f}"
    shares = sorted(((s, c) for c, s in d["interruption_share"].items() if s > 0), reverse=True)
    causes = ", ".join(f"{c} {s:.0%}" for s, c in shares[:3])
    yd = d["young_daly_interval_s"]
    days = d["expected_time_to_train_h"] / DAY_H
    return [
        ("budget", f"{n} step{'s' if steps != 1 else ''} = {_tokens(d['budget_tokens'])} tokens"
                   f" = {_num(d['failure_free_time_h'] / DAY_H)} failure-free days "
                   f"({_SOURCE.get(d['budget_source'], d['budget_source'])})"),
        ("job MTBF (h)", _num(d["job_mtbf_h"]) if d["job_mtbf_h"] is not None
         else "never fails (no failure rates)"),
        ("checkpoint cost (s)", f"write {_num(d['checkpoint_cost_s'])}, restore "
                                f"{_num(d['restore_cost_s'])}, restart {_num(d['restart_s'])}"),
        ("checkpoint interval", f"{_num(d['checkpoint_interval_s'])} s = "
                                f"{d['checkpoint_every_steps']:,} steps ({d['interval_source']}"
                                + (f"; Young/Daly {_num(yd)} s)" if yd is not None else ")")),
        ("interruptions", _band(d["expected_interruptions"], d["interruptions_p10"],
                                d["interruptions_p90"]) + (f"; {causes}" if causes else "")),
        ("goodput", f"{d['goodput']:.3f}  (first-order {d['first_order_goodput']:.3f})"),
        ("time to train (days)", _band(days, d["time_to_train_p10_h"] / DAY_H,
                                       d["time_to_train_p90_h"] / DAY_H)
         + (f"; {_num(d['expected_time_to_train_h'])} h" if days < 2 else "")),
        ("lost work / downtime / checkpoints (h)",
         " / ".join(_num(d[k]) for k in ("lost_work_h", "downtime_h", "checkpoint_time_h"))),
        ("cost (USD)", _band(d["expected_cost_usd"], d["cost_p10_usd"], d["cost_p90_usd"],
                             _usd)),
    ]


def _title(d: dict) -> str:
    return (f"failures: {d['runs']:,} simulated runs ({d['distribution']}, seed {d['seed']}); "
            "mean and p10-p90 over the runs")


def format_failures(report_dict: dict) -> str:
    """The failures section of `sandbox simulate`'s text output: an aligned table."""
    rows = summary_rows(report_dict)
    width = max(len(k) for k, _ in rows)
    return "\n".join([_title(report_dict), *(f"  {k:<{width}}  {v}" for k, v in rows)])


def failures_html(report: Any) -> str:
    """A `sim.failures.FailureReport` (or its dict) as an HTML table, the summary
    of `format_failures`."""
    d = _fields(report)
    return table_html(summary_rows(d), _title(d))


def plot_interval_sweep(report: Any, path: str | None = None):
    """Expected time to train (hours, days for runs over two days) against the
    checkpoint interval (s) of a `sim.failures.FailureReport`, with the p10-p90
    band of the runs -> Figure; saves a PNG to `path`."""
    import matplotlib
    from matplotlib.figure import Figure

    s, d = report.sweep, report.to_dict()
    scale, unit = (DAY_H, "days") if report.failure_free_time_h > 2 * DAY_H else (1.0, "h")
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(7.5, 5.5), layout="constrained")
        ax = fig.subplots()
        x = s["interval_s"]
        y, lo, hi = ([v / scale for v in s[k]] for k in (
            "mean_time_to_train_h", "p10_time_to_train_h", "p90_time_to_train_h"))
        ax.fill_between(x, lo, hi, alpha=0.2, label=f"p10-p90 of {report.runs} runs")
        ax.plot(x, y, "o-", ms=3, label=f"mean of {report.runs} runs")
        ax.axhline(report.failure_free_time_h / scale, color="gray", ls=":",
                   label="no failures, no checkpoints")
        if math.isfinite(report.young_daly_interval_s):
            ax.axvline(report.young_daly_interval_s, color="C3", ls="--",
                       label=f"Young/Daly √(2MC) = {report.young_daly_interval_s:.0f} s")
        ax.axvline(report.checkpoint_interval_s, color="C2", ls="-.",
                   label=f"{report.interval_source} = {report.checkpoint_interval_s:.0f} s")
        at = {k: v for k, v in summary_rows(d)
              if k in ("interruptions", "time to train (days)", "cost (USD)")}
        ax.set_title(f"at the chosen interval, mean (p10, p90) of {report.runs} runs:\n"
                     + "\n".join(f"{k}: {v.replace('  ', ' ')}" for k, v in at.items()),
                     loc="left", fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("checkpoint interval (s of compute)")
        ax.set_ylabel(f"time to train ({unit})")
        mtbf = f"{report.job_mtbf_h:.2f} h" if math.isfinite(report.job_mtbf_h) else "never"
        fig.suptitle(f"Time to train vs checkpoint interval (job MTBF {mtbf}, "
                     f"C = {report.checkpoint_cost_s:.3g} s)", fontsize=12)
        ax.legend(loc="upper right")
    if path:
        fig.savefig(path, dpi=120)
    return fig
