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
from collections.abc import Callable

COMPONENTS = ("compute", "tp_comm", "pp_comm", "dp_comm")


def tp_ladders(rows: list[dict], model_key: Callable[[dict], str]) -> list[dict]:
    """Groups of rows with equal (model, GPUs, pp, micro-batch) and at least three
    TP degrees; each point is the mean measured and predicted step time (s) per TP."""
    groups: dict[tuple[str, int, int, int], list[dict]] = {}
    for r in rows:
        groups.setdefault((model_key(r), r.get("gpus", 0), r["pp"], r["micro_batch"]),
                          []).append(r)
    ladders = []
    for (model, _, pp, mb), members in sorted(groups.items()):
        by_tp: dict[int, list[dict]] = {}
        for r in members:
            by_tp.setdefault(r["tp"], []).append(r)
        if len(by_tp) < 3:
            continue
        points = {tp: {"measured_s": statistics.fmean(r["measured_s"] for r in v),
                       "predicted_s": statistics.fmean(r["predicted_s"] for r in v)}
                  for tp, v in sorted(by_tp.items())}
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
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        groups.setdefault((model_key(r), r["tp"]), []).append(r)
    out = []
    for (model, tp), members in sorted(groups.items()):
        ranges = {}
        for c in COMPONENTS:
            ks = [k for r in members if (k := single_cause_factor(r, c)) is not None]
            ranges[c] = (min(ks), max(ks)) if ks else None
        out.append({"model": model, "tp": tp, "rows": len(members), "factors": ranges})
    return out


def spearman_under_noise(rows: list[dict], model_key: Callable[[dict], str],
                         spearman: Callable[[list[float], list[float]], float],
                         sigmas: tuple[float, ...] = (0.03, 0.05), draws: int = 300,
                         seed: int = 0) -> dict[str, dict[str, float]]:
    """Per model: median Spearman between the measured times and the measured
    times times exp(N(0, sigma)), for each sigma (keys like "0.03")."""
    rng = random.Random(seed)
    by_model: dict[str, list[float]] = {}
    for r in rows:
        by_model.setdefault(model_key(r), []).append(r["measured_s"])
    out = {}
    for model, times in sorted(by_model.items()):
        if len(times) < 3:
            continue
        out[model] = {f"{sigma:g}": statistics.median(
            spearman(times, [t * rng.lognormvariate(0, sigma) for t in times])
            for _ in range(draws)) for sigma in sigmas}
    return out


def _range(lo_hi: tuple[float, float] | None) -> str:
    return "" if lo_hi is None else f"{lo_hi[0]:.2f} to {lo_hi[1]:.2f}"


def markdown(rows: list[dict], model_key: Callable[[dict], str],
             spearman: Callable[[list[float], list[float]], float]) -> list[str]:
    """The three views as markdown sections (lines)."""
    noise = spearman_under_noise(rows, model_key, spearman)
    sigmas = sorted({s for v in noise.values() for s in v}, key=float)
    lines = ["## multi-node: Spearman of the simulator and of random error", "",
             "Spearman per model of the simulator, and the median Spearman of a model "
             "whose only error is random (log-normal, spread sigma per row) on the same "
             "measured times.", "",
             "| model | rows | simulator | " + " | ".join(f"random {100 * float(s):.0f}%"
                                                      for s in sigmas) + " |",
             "|---|---|---|" + "---|" * len(sigmas)]
    for model, rho in noise.items():
        mine = [r for r in rows if model_key(r) == model]
        sim_rho = spearman([r["measured_s"] for r in mine], [r["predicted_s"] for r in mine])
        lines.append(f"| {model} | {len(mine)} | {sim_rho:.3f} | "
                     + " | ".join(f"{rho[s]:.3f}" for s in sigmas) + " |")
    ladders = tp_ladders(rows, model_key)
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
    for g in single_cause_factors(rows, model_key):
        cells = [_range(g["factors"][c]) for c in COMPONENTS]
        lines.append(f"| {g['model']} | {g['tp']} | {g['rows']} | " + " | ".join(cells) + " |")
    return lines
