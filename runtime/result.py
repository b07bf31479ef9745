"""What a run leaves behind, read back for notebooks: `RunResult`.

`RunResult.load(DIR)` reads DIR/summary.json (`.to_dict()`, the DESIGN.md
contract) and DIR/metrics.jsonl (`.metrics`, a pandas DataFrame, one row per
step); it renders as a table in Jupyter and `.plot()` draws the loss curve.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUMMARY_FIELDS = ("world_size", "step_time_s", "tokens_per_s", "mfu", "peak_mem_gb",
                  "final_loss", "eval_loss", "device", "steps", "precision")


@dataclass
class RunResult:
    """A finished run: its directory, summary.json and metrics.jsonl."""

    out: Path
    summary: dict[str, Any]
    metrics: Any = field(repr=False)  # pandas.DataFrame

    @classmethod
    def load(cls, out: str | Path) -> RunResult:
        import pandas as pd

        from runtime.rundir import read_metrics

        out = Path(out)
        summary_path = out / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        return cls(out, summary, pd.DataFrame(read_metrics(out / "metrics.jsonl")))

    def to_dict(self) -> dict[str, Any]:
        """summary.json as a dict."""
        return dict(self.summary)

    def __str__(self) -> str:
        s = self.summary
        if not s:
            return f"run {self.out}: no summary"
        return (f"run {self.out}: {s.get('steps')} steps on {s.get('device')}, "
                f"final loss {s.get('final_loss'):.4f}, step {s.get('step_time_s'):.4g} s, "
                f"{s.get('tokens_per_s'):.4g} tokens/s, MFU {100 * s.get('mfu'):.2f}%, "
                f"peak memory {s.get('peak_mem_gb'):.3g} GB")

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th>"
                       f"<td>{html.escape(_fmt(self.summary.get(k)))}</td></tr>"
                       for k in SUMMARY_FIELDS if k in self.summary)
        table = f"<table><caption>run {html.escape(str(self.out))}</caption>{rows}</table>"
        if len(self.metrics):
            table += self.metrics.tail(10).to_html(index=False, float_format="%.4g")
        return table

    def plot(self, ax: Any = None) -> Any:
        """Training loss per step (and held-out loss where evaluated); returns the Axes."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(6, 3.5))
        m = self.metrics
        if len(m):
            ax.plot(m["step"], m["loss"], label="train loss")
            if "eval_loss" in m:
                ev = m.dropna(subset=["eval_loss"])
                ax.plot(ev["step"], ev["eval_loss"], "o--", label="held-out loss")
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats/token)")
        ax.set_title(f"{self.summary.get('plan', '')} on {self.summary.get('device', '')}")
        ax.legend()
        return ax


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
