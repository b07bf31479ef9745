"""Renderings of a whole run with failures (`sim.failures.FailureReport`):
an HTML table for Jupyter and the time to train against the checkpoint
interval. Times in seconds or hours as named. matplotlib is imported inside
the functions so that `import sandbox` stays light."""

from __future__ import annotations

import math
from typing import Any

from sandbox.plots import STYLE
from sandbox.report_html import table_html


def failures_html(report: Any) -> str:
    """A `sim.failures.FailureReport` as an HTML table."""
    rows = [(k, f"{v:.4g}" if isinstance(v, float) else v)
            for k, v in report.to_dict().items() if not isinstance(v, dict | list)]
    rows += [(f"interruptions: {c}", f"{n:.1f} ({report.interruption_share[c]:.1%})")
             for c, n in report.interruptions_by_cause.items()]
    return table_html(rows, "whole run with failures")


def plot_interval_sweep(report: Any, path: str | None = None):
    """Expected time to train (h) against the checkpoint interval (s) of a
    `sim.failures.FailureReport` -> Figure; saves a PNG to `path`."""
    import matplotlib
    from matplotlib.figure import Figure

    s = report.sweep
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(7, 4.5), layout="constrained")
        ax = fig.subplots()
        x, y = s["interval_s"], s["mean_time_to_train_h"]
        ax.fill_between(x, s["p10_time_to_train_h"], s["p90_time_to_train_h"],
                        alpha=0.2, label="p10-p90 of runs")
        ax.plot(x, y, "o-", ms=3, label=f"mean of {report.runs} runs")
        ax.axhline(report.failure_free_time_h, color="gray", ls=":",
                   label="no failures, no checkpoints")
        if math.isfinite(report.young_daly_interval_s):
            ax.axvline(report.young_daly_interval_s, color="C3", ls="--",
                       label=f"Young/Daly √(2MC) = {report.young_daly_interval_s:.0f} s")
        ax.axvline(report.checkpoint_interval_s, color="C2", ls="-.",
                   label=f"{report.interval_source} = {report.checkpoint_interval_s:.0f} s")
        ax.set_xscale("log")
        ax.set_xlabel("checkpoint interval (s of compute)")
        ax.set_ylabel("time to train (h)")
        ax.set_title(f"Time to train vs checkpoint interval (job MTBF "
                     f"{report.job_mtbf_h:.2f} h, C = {report.checkpoint_cost_s:.3g} s)")
        ax.legend()
    if path:
        fig.savefig(path, dpi=120)
    return fig


