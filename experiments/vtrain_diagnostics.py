"""Where the simulator misses vTrain rows: three views computed from the rows alone.

Each row carries `measured_s`, `predicted_s`, `breakdown_s` (seconds per
component, from `sim.simulate`) and its layout (`tp`, `dp`, `pp`,
`micro_batch`).

- `tp_ladders`: rows of one model with the same pipeline depth and
  micro-batch that differ only in how a stage's GPUs are split between tensor
  and data parallelism (tp * dp is the same, so every GPU does the same FLOPs
  per step). The simulator's answer changes smoothly along such a ladder
  (more TP: more TP traffic, fewer micro-batches per pipeline, smaller bubble);
  a measured step that jumps against its neighbours on both sides is a cost the
  layout does not explain.
- `single_cause_factors`: for each row and each breakdown component, the
  factor that component alone would need for the prediction to equal the
  measurement, k = 1 + (measured - predicted) / component. A real mis-modelled
  cost (a slow link, a slow kernel) needs one factor for every row that uses
  it; factors that scatter over an order of magnitude within one (model, TP)
  group point at something outside the plan.
- `spearman_under_noise`: the Spearman a model would reach whose only error is
  random, log-normal with spread sigma per row, on the same measured times
  (median of seeded draws): what rank agreement random error alone costs on
  rows this close together, to compare with the simulator's.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable, Hashable
from typing import Any

COMPONENTS = ("compute", "tp_comm", "pp_comm", "dp_comm")


def spearman(xs: list[float], ys: list[float]) -> float:
    """Spearman rank correlation (ties get their mean rank)."""
    def ranks(v: list[float]) -> list[float]:
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(v):
            j = i
            while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    rx, ry = ranks(xs), ranks(ys)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    num = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    den = (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5
    return num / den if den else float("nan")


def group_by(rows: list[dict], key: Callable[[dict], Hashable]) -> dict[Any, list[dict]]:
    """Rows by `key(row)`, keys sorted."""
    groups: dict[Any, list[dict]] = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    return dict(sorted(groups.items()))


def tp_ladders(rows: list[dict], model_key: Callable[[dict], str]) -> list[dict]:
    """Groups of rows with equal (model, GPUs, pp, micro-batch) and at least three
    TP degrees; each point is the mean measured and predicted step time (s) per TP."""
    groups = group_by(rows, lambda r: (model_key(r), r.get("gpus", 0), r["pp"],
                                       r["micro_batch"]))
    ladders = []
    for (model, _, pp, mb), members in groups.items():
        by_tp = group_by(members, lambda r: r["tp"])
        if len(by_tp) < 3:
            continue
        points = {tp: {"measured_s": statistics.fmean(r["measured_s"] for r in v),
                       "predicted_s": statistics.fmean(r["predicted_s"] for r in v)}
                  for tp, v in by_tp.items()}
        ladders.append({"model": model, "pp": pp, "micro_batch": mb, "points": points})
    return ladders


def single_cause_factor(row: dict, component: str) -> float | None:
    """Factor on one predicted component that would make predicted == measured;
    None where the plan has none of that component."""
    part = row["breakdown_s"].get(component, 0.0)
    if part <= 0:
        return None
    return 1 + (row["measured_s"] - row["predicted_s"]) / part


def single_cause_factors(rows: list[dict], model_key: Callable[[dict], str]) -> list[dict]:
    """Per (model, TP) group: the range (min, max) of each component's single-cause
    factor over the group's rows."""
    out = []
    for (model, tp), members in group_by(rows, lambda r: (model_key(r), r["tp"])).items():
        ranges = {}
        for c in COMPONENTS:
            ks = [k for r in members if (k := single_cause_factor(r, c)) is not None]
            ranges[c] = (min(ks), max(ks)) if ks else None
        out.append({"model": model, "tp": tp, "rows": len(members), "factors": ranges})
    return out


def spearman_under_noise(rows: list[dict], model_key: Callable[[dict], str],
                         sigmas: tuple[float, ...] = (0.03, 0.05), draws: int = 300,
                         seed: int = 0) -> dict[str, dict[str, float]]:
    """Per model: median Spearman between the measured times and the measured
    times times exp(N(0, sigma)), for each sigma (keys like "0.03")."""
    rng = random.Random(seed)
    out = {}
    for model, members in group_by(rows, model_key).items():
        times = [r["measured_s"] for r in members]
        if len(times) < 3:
            continue
        out[model] = {f"{sigma:g}": statistics.median(
            spearman(times, [t * rng.lognormvariate(0, sigma) for t in times])
            for _ in range(draws)) for sigma in sigmas}
    return out


def _range(lo_hi: tuple[float, float] | None) -> str:
    return "" if lo_hi is None else f"{lo_hi[0]:.2f} to {lo_hi[1]:.2f}"


def summarize(rows: list[dict], model_key: Callable[[dict], str]) -> dict[str, Any]:
    """The three views, as the JSON summary keeps them."""
    return {"tp_ladders": tp_ladders(rows, model_key),
            "single_cause_factors": single_cause_factors(rows, model_key),
            "spearman_under_random_error": spearman_under_noise(rows, model_key)}


def markdown(summary: dict[str, Any]) -> list[str]:
    """The three views as markdown sections (lines), from `summarize`'s keys plus
    the simulator's `spearman_by_model` and `models` (rows per model)."""
    noise = summary["spearman_under_random_error"]
    sigmas = sorted({s for v in noise.values() for s in v}, key=float)
    lines = ["## multi-node: Spearman of the simulator and of random error", "",
             "Spearman per model of the simulator, and the median Spearman of a model "
             "whose only error is random (log-normal, spread sigma per row) on the same "
             "measured times.", "",
             "| model | rows | simulator | " + " | ".join(f"random {100 * float(s):.0f}%"
                                                      for s in sigmas) + " |",
             "|---|---|---|" + "---|" * len(sigmas)]
    for model, rho in noise.items():
        lines.append(f"| {model} | {summary['models'][model]} | "
                     f"{summary['spearman_by_model'][model]:.3f} | "
                     + " | ".join(f"{rho[s]:.3f}" for s in sigmas) + " |")
    ladders = summary["tp_ladders"]
    tps = sorted({tp for lad in ladders for tp in lad["points"]})
    lines += ["", "## multi-node: same stage, different TP split (measured / predicted, s)", "",
              "Rows with the same model, pipeline depth and micro-batch; tp * dp is fixed, so "
              "every GPU does the same FLOPs. Read across a line: the prediction changes "
              "smoothly with the split; a measured time far from both neighbours is a cost "
              "the layout does not explain.", "",
              "| model | PP | mb | " + " | ".join(f"TP {t}" for t in tps) + " |",
              "|---|---|---|" + "---|" * len(tps)]
    for lad in ladders:
        cells = [f"{p['measured_s']:.2f} / {p['predicted_s']:.2f}" if (p := lad["points"].get(t))
                 else "" for t in tps]
        lines.append(f"| {lad['model']} | {lad['pp']} | {lad['micro_batch']} | "
                     + " | ".join(cells) + " |")
    lines += ["", "## multi-node: what one cause would have to be", "",
              "Factor on one predicted component alone that would make each row's prediction "
              "equal its measurement, k = 1 + (measured - predicted) / component; range over "
              "the group's rows (a negative k: that component cannot explain the row).", "",
              "| model | TP | rows | " + " | ".join(COMPONENTS) + " |",
              "|---|---|---|" + "---|" * len(COMPONENTS)]
    for g in summary["single_cause_factors"]:
        cells = [_range(g["factors"][c]) for c in COMPONENTS]
        lines.append(f"| {g['model']} | {g['tp']} | {g['rows']} | " + " | ".join(cells) + " |")
    return lines
