"""What a sweep writes next to its study: `trials.csv` (one row per trial: number,
state, value, params, seconds, error), `best.toml` (the base plan with the best
complete trial's values, validated) and `sweep.png` (the objective by trial, with
the best so far, and by each parameter)."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from sandbox.outputs import save_figure, writing
from sandbox.sweep_spec import SweepSpec

FILES = ("trials.csv", "best.toml", "sweep.png")


def trial_rows(spec: SweepSpec, study: Any) -> list[dict]:
    """One dict per trial, in trial order."""
    rows = []
    for t in study.trials:
        secs = ((t.datetime_complete - t.datetime_start).total_seconds()
                if t.datetime_complete and t.datetime_start else None)
        row = {"number": t.number, "state": t.state.name, spec.objective: t.value,
               **{p.name: t.params.get(p.name) for p in spec.space},
               "seconds": secs, "error": t.user_attrs.get("error", "")}
        rows.append(row)
    return rows


def _complete(study: Any) -> list:
    import optuna

    return [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]


def best_trial(spec: SweepSpec, study: Any) -> Any:
    """The best complete trial, or None."""
    done = _complete(study)
    if not done:
        return None
    pick = min if spec.direction == "minimize" else max
    return pick(done, key=lambda t: t.value)


def plot(spec: SweepSpec, study: Any) -> Any:
    """The sweep figure: objective by trial number, then one panel per parameter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = _complete(study)
    n = 1 + len(spec.space)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False)
    ax = axes[0][0]
    xs, ys = [t.number for t in done], [t.value for t in done]
    ax.scatter(xs, ys, s=18, label="complete")
    if ys:
        pick = min if spec.direction == "minimize" else max
        best = [pick(ys[: i + 1]) for i in range(len(ys))]
        ax.step(xs, best, where="post", color="C1", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(spec.objective)
    ax.set_title(f"{spec.objective} by trial ({spec.direction})")
    ax.legend(fontsize=8)
    for i, p in enumerate(spec.space, start=1):
        a = axes[i // cols][i % cols]
        vals = [t.params.get(p.name) for t in done]
        if p.choices:
            labels = [str(c) for c in p.choices]
            a.scatter([labels.index(str(v)) for v in vals], ys, s=18)
            a.set_xticks(range(len(labels)), labels)
        else:
            a.scatter(vals, ys, s=18)
            if p.log:
                a.set_xscale("log")
        a.set_xlabel(p.name)
        a.set_ylabel(spec.objective)
    for j in range(n, rows * cols):
        axes[j // cols][j % cols].set_visible(False)
    fig.tight_layout()
    return fig


def write_outputs(spec: SweepSpec, study: Any, out: Path) -> tuple[str, ...]:
    """Write trials.csv, best.toml (when a trial completed) and sweep.png -> the names."""
    rows = trial_rows(spec, study)
    names = ["number", "state", spec.objective, *[p.name for p in spec.space], "seconds",
             "error"]
    with writing(out / "trials.csv", "--out"), open(out / "trials.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=names)
        w.writeheader()
        w.writerows(rows)
    written = ["trials.csv"]
    best = best_trial(spec, study)
    if best is not None:
        plan = spec.plan_for(dict(best.params))
        head = (f"# best of sweep '{spec.name}': trial {best.number}, {spec.objective} = "
                f"{best.value:.6g}\n")
        with writing(out / "best.toml", "--out"):
            (out / "best.toml").write_text(head + plan.to_toml())
        written.append("best.toml")
    import matplotlib.pyplot as plt

    fig = plot(spec, study)
    save_figure(fig, out / "sweep.png", "--out")
    plt.close(fig)
    written.append("sweep.png")
    return tuple(written)
