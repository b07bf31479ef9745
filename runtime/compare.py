"""Predicted vs measured: run a plan for real and simulate it, side by side.

`compare(plan, out, steps=None)`:

1. simulates the plan (`sandbox.simulate`), the prediction;
2. runs it with the runtime (`runtime.launch.run` into `out/run`): step time
   (median after warm-up), tokens/s, peak memory, and the spread of the
   per-step times (metrics.jsonl);
3. profiles one more training step with torch.profiler
   (`runtime.step_profile`), which splits a step into compute, exposed
   communication by class, optimizer and other (the runtime has no profiling
   hook, so this is a separate short run of the same plan, same threads);
4. writes `out/compare.json` (`predicted`, `measured`, `error`, plus
   `noise`, `provenance`, `not_measured`) and `out/timeline.png`.

`error[field] = (predicted - measured) / measured` for every field both sides
have: step_time_s, tokens_per_s, peak_mem_gb (the simulator's memory per GPU
vs the process's peak resident memory on CPU / allocated memory on GPU), and
`model_mem_gb` (the simulator's memory per GPU vs the peak resident set
above the one before the model was built, on CPU), and the breakdown fields
the profiler can separate (see `runtime.step_profile`: compute, tp_comm,
dp_comm, optimizer, and pp_comm+bubble against the sum of the simulator's
pp_comm and bubble). The profiled step runs slower than an unprofiled one,
so its breakdown is kept as fractions scaled to the measured median step
time (`measured.breakdown_s`); the raw seconds are in
`measured.breakdown_profiled_s`.
"""

from __future__ import annotations

import html
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox.specs import Plan

FIELDS = ("step_time_s", "tokens_per_s", "peak_mem_gb")
BREAKDOWN = ("compute", "tp_comm", "dp_comm", "pp_comm+bubble", "optimizer")


def rel_error(predicted: float | None, measured: float | None) -> float | None:
    """(predicted - measured) / measured, or None when either is missing or 0."""
    if predicted is None or measured is None or not measured:
        return None
    return (predicted - measured) / measured


def predicted_fields(sim: dict) -> dict[str, Any]:
    """The simulator's contract dict reduced to the compared fields."""
    mem = sim.get("memory_gb_per_gpu")
    mem_total = mem.get("total") if isinstance(mem, dict) else mem
    bd = dict(sim.get("breakdown_s") or {})
    out = {"step_time_s": sim.get("step_time_s"), "tokens_per_s": sim.get("tokens_per_s"),
           "peak_mem_gb": mem_total, "breakdown_s": bd}
    if bd:
        out["breakdown_s"]["pp_comm+bubble"] = bd.get("pp_comm", 0.0) + bd.get("bubble", 0.0)
    return out


def measured_fields(summary: dict, metrics: list[dict], profile: dict | None) -> dict[str, Any]:
    """The run's summary plus the profiled step's breakdown (slowest rank)."""
    out = {k: summary.get(k) for k in FIELDS}
    out["breakdown_s"] = {}
    if profile is not None:
        r = max(profile["ranks"], key=lambda x: x["step_s"])
        raw = {k: v for k, v in r.items() if isinstance(v, float)
               and k not in ("step_s", "peak_rss_gb", "model_mem_gb")}
        # the profiler slows the step down: keep its fractions, scaled to the
        # unprofiled median step time
        scale = (out["step_time_s"] or r["step_s"]) / r["step_s"]
        out["breakdown_s"] = {k: v * scale for k, v in raw.items()}
        out["breakdown_profiled_s"] = {**raw, "step_s": r["step_s"], "rank": r["rank"]}
        out["model_mem_gb"] = max(x["model_mem_gb"] for x in profile["ranks"])
    return out


def noise(metrics: list[dict], warmup: int) -> dict[str, Any]:
    """Spread of the per-step times after warm-up (seconds and relative)."""
    times = [r["step_time_s"] for r in metrics[warmup:]] or [r["step_time_s"] for r in metrics]
    if not times:
        return {}
    med = statistics.median(times)
    out = {"steps": len(times), "median_s": med, "min_s": min(times), "max_s": max(times),
           "range_rel": (max(times) - min(times)) / med}
    if len(times) >= 4:
        q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
        out["iqr_rel"] = (q3 - q1) / med
    return out


def errors(predicted: dict, measured: dict) -> dict[str, Any]:
    out: dict[str, Any] = {k: rel_error(predicted.get(k), measured.get(k)) for k in FIELDS}
    out["model_mem_gb"] = rel_error(predicted.get("peak_mem_gb"), measured.get("model_mem_gb"))
    pb, mb = predicted.get("breakdown_s", {}), measured.get("breakdown_s", {})
    out["breakdown_s"] = {k: rel_error(pb.get(k), mb.get(k)) for k in BREAKDOWN
                          if k in pb and k in mb}
    return out


@dataclass
class Comparison:
    """compare.json as an object: `.to_dict()`, a table in Jupyter, the plot path."""

    plan: Plan
    predicted: dict
    measured: dict
    error: dict
    noise: dict
    provenance: dict
    not_measured: list[str] = field(default_factory=list)
    plot: str = ""

    def to_dict(self) -> dict:
        return {"plan": self.plan.to_dict(), "predicted": self.predicted,
                "measured": self.measured, "error": self.error, "noise": self.noise,
                "provenance": self.provenance, "not_measured": self.not_measured,
                "plot": self.plot}

    def __str__(self) -> str:
        lines = [f"{'field':<18}{'predicted':>12}{'measured':>12}{'error':>9}"]
        for k in FIELDS:
            lines.append(_row(k, self.predicted.get(k), self.measured.get(k), self.error.get(k)))
        for k, e in self.error.get("breakdown_s", {}).items():
            lines.append(_row(k, self.predicted["breakdown_s"].get(k),
                              self.measured["breakdown_s"].get(k), e))
        if self.noise:
            lines.append(f"measured step-time spread over {self.noise['steps']} steps: "
                         f"{100 * self.noise['range_rel']:.1f}% (max-min)/median")
        if self.plot:
            lines.append(f"timeline: {self.plot}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = []
        for k in FIELDS:
            rows.append((k, self.predicted.get(k), self.measured.get(k), self.error.get(k)))
        for k, e in self.error.get("breakdown_s", {}).items():
            rows.append((f"breakdown {k}", self.predicted["breakdown_s"].get(k),
                         self.measured["breakdown_s"].get(k), e))
        body = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{_fmt(p)}</td>"
                       f"<td>{_fmt(m)}</td><td>{_pct(e)}</td></tr>" for k, p, m, e in rows)
        return (f"<table><caption>{html.escape(self.plan.model.name)}: predicted vs measured"
                f"</caption><tr><th></th><th>predicted</th><th>measured</th><th>error</th></tr>"
                f"{body}</table>")


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, (int, float)) and v is not None else "-"


def _pct(e: float | None) -> str:
    return f"{100 * e:+.1f}%" if e is not None else "-"


def _row(k: str, p: Any, m: Any, e: Any) -> str:
    return f"{k:<18}{_fmt(p):>12}{_fmt(m):>12}{_pct(e):>9}"


def provenance(plan: Plan, steps: int) -> dict:
    import torch

    return {"date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "host": platform.node(), "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "loadavg_1m": os.getloadavg()[0],
            "steps": steps, "profile": plan.cluster.profile or None,
            "command": " ".join(sys.argv)}


@dataclass
class Measurement:
    """What the runtime measured for a plan (the `measure` half of compare)."""

    measured: dict
    noise: dict
    profile: dict | None
    not_measured: list[str]
    steps: int
    provenance: dict

    def to_dict(self) -> dict:
        return {"measured": self.measured, "noise": self.noise, "profile": self.profile,
                "not_measured": self.not_measured, "steps": self.steps,
                "provenance": self.provenance}

    @classmethod
    def from_dict(cls, d: dict) -> Measurement:
        return cls(**d)


def measure(plan: Plan, out: str | Path, steps: int | None = None, profile_steps: int = 2,
            progress: bool = True) -> Measurement:
    """Run the plan (`runtime.launch.run` into out/run) and profile one step.

    steps: runtime steps (default: train.steps, at most 8); profile_steps:
    timed steps of the profiling run before the profiled one.
    """
    from runtime.launch import run
    from runtime.microbench import ForeignLoad
    from runtime.step_profile import profile_step
    from runtime.train import WARMUP_STEPS, read_metrics

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    steps = steps or min(plan.train.steps, 8)
    load_before = os.getloadavg()[0]
    foreign = ForeignLoad().start()
    result = run(plan, out / "run", steps=steps, progress=progress, no_final_checkpoint=True)
    metrics = read_metrics(out / "run" / "metrics.jsonl")
    not_measured = ["bubble and pp_comm separately (a blocked recv is both: one field)",
                    "other (framework overhead) is measured but not compared"]
    prof = None
    if not _has_cuda():
        not_measured.append("device memory: on CPU peak_mem_gb is the resident set of the "
                            "process (Python and torch libraries included); model_mem_gb "
                            "subtracts the resident set before the model was built")
        prof = profile_step(plan, warmup=1, steps=profile_steps).to_dict()
        (out / "step_profile.json").write_text(json.dumps(prof))
    else:
        not_measured.append("breakdown on GPU (the step profiler runs CPU/gloo only)")
    prov = provenance(plan, steps)
    prov["loadavg_1m"] = [load_before, os.getloadavg()[0]]
    prov["foreign_cores"] = foreign.stop()
    return Measurement(measured_fields(result.to_dict(), metrics, prof),
                       noise(metrics, WARMUP_STEPS), prof, not_measured, steps, prov)


def combine(plan: Plan, simres: Any, m: Measurement, out: str | Path | None = None,
            plot: bool = True) -> Comparison:
    """A prediction (`sim.simulate(plan)`) and a `Measurement` -> Comparison;
    with `out`, writes compare.json and timeline.png there."""
    predicted = predicted_fields(simres.to_dict())
    cmp = Comparison(plan, predicted, m.measured, errors(predicted, m.measured), m.noise,
                     m.provenance, list(m.not_measured))
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        if plot:
            from runtime.timeline_plot import plot_timelines

            cmp.plot = str(plot_timelines(simres, m.profile, out / "timeline.png",
                                          title=_title(plan)))
        (out / "compare.json").write_text(json.dumps(cmp.to_dict(), indent=2) + "\n")
    return cmp


def compare(plan: Plan, out: str | Path, steps: int | None = None, profile_steps: int = 2,
            progress: bool = True, plot: bool = True) -> Comparison:
    """Simulate, measure and combine; see the module docstring and `measure`.

    The simulator is reached through `sandbox.simulate` (runtime/ does not
    import sim/: both speak only the sandbox specs)."""
    from sandbox.api import simulate

    simres = simulate(plan)
    m = measure(plan, out, steps, profile_steps, progress)
    return combine(plan, simres, m, out, plot)


def _title(plan: Plan) -> str:
    p = plan.parallel
    return (f"{plan.model.name}: dp {p.dp} tp {p.tp} pp {p.pp}, micro_batch {p.micro_batch}, "
            f"global_batch {p.global_batch}")


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()
