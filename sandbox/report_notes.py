"""The "why" under each report figure: one sentence computed from the results.

Each function reads simulated results (the `simulate` contract as dicts) and
names what the figure shows and the mechanism behind it: the largest
overhead of each plan's step and where it comes from, the biggest part of
memory, what one step's timeline spends, how throughput scales. No number
in a note is written by hand: all come from the results passed in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sandbox import units as u

# the mechanism behind each non-compute part of `breakdown_s`
MECHANISM = {
    "tp_comm": "tensor-parallel all-reduces of activations, on the critical path of every layer",
    "pp_comm": "pipeline sends between stages not hidden behind compute",
    "bubble": "the pipeline's fill and drain, stages idle until micro-batches reach them",
    "dp_comm": "gradient reduction and parameter gathers not hidden behind compute",
    "cp_comm": "context-parallel key/value exchange not hidden behind attention",
    "ep_comm": "expert-parallel all-to-all dispatch and combine",
    "optimizer": "the optimizer step",
    "other": "host overhead (kernel launches the GPU waits on)",
}
LABEL = {"tp_comm": "TP communication", "pp_comm": "PP communication", "bubble": "the bubble",
         "dp_comm": "DP communication", "cp_comm": "CP communication",
         "ep_comm": "EP communication", "optimizer": "the optimizer", "other": "host overhead"}
MEMORY_LABEL = {"params": "parameters", "grads": "gradients", "optimizer": "optimizer states",
                "activations": "activations", "other": "buffers and workspace"}


def largest_overhead(breakdown: Mapping[str, float]) -> tuple[str, float]:
    """The biggest non-compute part of a step's breakdown: (name, seconds);
    ("", 0.0) when the step is all compute."""
    parts = [(k, float(v)) for k, v in breakdown.items() if k != "compute" and v > 0]
    return max(parts, key=lambda kv: kv[1], default=("", 0.0))


def breakdown_note(names: Sequence[str], results: Sequence[Mapping[str, Any]]) -> str:
    """Which plan is fastest and what each loses its time to, with the mechanism."""
    if not results:
        return ""
    steps = [float(d["step_time_s"]) for d in results]
    best = min(range(len(steps)), key=steps.__getitem__)
    clauses = []
    for name, d in zip(names, results, strict=True):
        part, s = largest_overhead(d.get("breakdown_s", {}))
        share = s / float(d["step_time_s"])
        if not part or share < 0.01:
            clauses.append(f"{name} is all compute")
        else:
            clauses.append(f"{name} loses {u.percent(share)} to {LABEL.get(part, part)} "
                           f"({MECHANISM.get(part, part)})")
    if len(results) == 1:
        return f"{u.seconds(steps[0])} per step: {clauses[0]}."
    return (f"Fastest: {names[best]} at {u.seconds(steps[best])} per step; "
            + "; ".join(clauses) + ".")


def memory_note(names: Sequence[str], memories: Sequence[Mapping[str, float]],
                fits: Sequence[bool]) -> str:
    """The least and the most memory per GPU, what dominates the most, what does not fit."""
    if not memories:
        return ""
    totals = [float(m.get("total", 0.0)) for m in memories]
    lo = min(range(len(totals)), key=totals.__getitem__)
    hi = max(range(len(totals)), key=totals.__getitem__)
    parts = {k: float(v) for k, v in memories[hi].items() if k != "total"}
    big = max(parts, key=parts.get, default="")
    text = f"{names[lo]} needs the least memory per GPU ({u.gib(totals[lo])})"
    if len(memories) == 1:
        text = f"{names[0]} needs {u.gib(totals[0])} per GPU"
        if big:
            text += f", {u.percent(parts[big] / totals[0])} of it {MEMORY_LABEL.get(big, big)}"
    elif hi != lo and big:
        text += (f"; {names[hi]} the most ({u.gib(totals[hi])}), "
                 f"{u.percent(parts[big] / totals[hi])} of it {MEMORY_LABEL.get(big, big)}")
    out = [n for n, f in zip(names, fits, strict=True) if not f]
    if out:
        text += f"; does not fit: {', '.join(out)}"
    return text + "."


def timeline_note(result: Mapping[str, Any]) -> str:
    """What one simulated step spends: computing, waiting, communicating (critical rank)."""
    bd, step = result.get("breakdown_s", {}), float(result["step_time_s"])
    shares = [(LABEL.get(k, k), float(v) / step) for k, v in bd.items()
              if k != "compute" and float(v) / step >= 0.01]
    shares.sort(key=lambda kv: -kv[1])
    busy = u.percent(float(bd.get("compute", 0.0)) / step)
    text = f"The busiest rank computes {busy} of the step"
    if shares:
        text += "; " + ", ".join(f"{label} {u.percent(s)}" for label, s in shares)
    return text + " (thin rows: communication in flight, overlapped where it runs beside compute)."


def scaling_note(curves: Mapping[str, Any]) -> str:
    """Weak-scaling efficiency of each curve: tokens/s per GPU at the largest size
    over that at the smallest (micro-batches per replica fixed)."""
    clauses = []
    for name, df in curves.items():
        if len(df) < 2:
            continue
        first, last = df.iloc[0], df.iloc[-1]
        eff = (last["tokens_per_s"] / last["gpus"]) / (first["tokens_per_s"] / first["gpus"])
        clauses.append(f"{name} {u.percent(eff, 0)}")
    if not clauses:
        return ""
    g = [int(v) for df in curves.values() if len(df) >= 2 for v in (df["gpus"].min(),
                                                                  df["gpus"].max())]
    return (f"Throughput per GPU kept from {min(g):,} to {max(g):,} GPUs (adding data-parallel "
            f"replicas; the gradient reduction grows with them): " + ", ".join(clauses) + ".")
