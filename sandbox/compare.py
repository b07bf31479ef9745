"""Predicted vs measured: run a plan for real and simulate it, side by side.

The front door that asks both interpreters (each imported lazily, inside
`compare`: sim and runtime never import each other). `compare(plan, out,
steps=None)`:

1. simulates the plan (`sandbox.api.simulate`), the prediction;
2. measures it (`runtime.observe.measure.measure`): a run into `out/run` (step time,
   median after warm-up, tokens/s, peak memory, the spread of the per-step
   times) and one more training step under torch.profiler
   (`runtime.calibrate.step_profile`), which splits a step into compute,
   exposed communication by class, optimizer and other (the runtime has no
   profiling hook, so this is a separate short run of the same plan);
3. combines them (`combine`) and writes `out/compare.json` (`predicted`, `measured`, `error`, plus
   `noise`, `provenance`, `not_measured`) and `out/timeline.png`.

`error[field] = (predicted - measured) / measured` for every field both sides
have: step_time_s, tokens_per_s, peak_mem_gb (the simulator's memory per GPU
vs the process's peak resident memory on CPU / allocated memory on GPU), and
`model_mem_gb` (the simulator's memory per GPU vs the peak resident set
above the one before the model was built, on CPU), and the breakdown fields
the profiler can separate (see `runtime.calibrate.step_profile`: compute, tp_comm,
dp_comm, optimizer, and pp_comm+bubble against the sum of the simulator's
pp_comm and bubble). The profiled step runs slower than an unprofiled one,
so its breakdown is kept as fractions scaled to the measured median step
time (`measured.breakdown_s`); the raw seconds are in
`measured.breakdown_profiled_s`.
"""

from __future__ import annotations

import html
import json
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
        lines = [f"{'field':<18}{'predicted':>14}{'measured':>14}{'error':>9}"]
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
        body = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th>"
                       f"<td>{_fmt(p, k.removeprefix('breakdown '))}</td>"
                       f"<td>{_fmt(m, k.removeprefix('breakdown '))}</td><td>{_pct(e)}</td></tr>"
                       for k, p, m, e in rows)
        return (f"<table><caption>{html.escape(self.plan.model.name)}: predicted vs measured"
                f"</caption><tr><th></th><th>predicted</th><th>measured</th><th>error</th></tr>"
                f"{body}</table>")


def _fmt(v: Any, field: str = "") -> str:
    """A predicted or measured value as shown (`sandbox.units`): memory in GiB,
    times SI-scaled, rates with prefixes; the field names the unit."""
    from sandbox import units as u

    if not isinstance(v, (int, float)) or v is None:
        return "-"
    if field.endswith("_gb"):
        return u.gib(v)
    if field == "tokens_per_s":
        return u.rate(v, "tok/s")
    if field.endswith("_s") or field in BREAKDOWN:
        return u.seconds(v)
    return f"{v:.4g}"


def _pct(e: float | None) -> str:
    return f"{100 * e:+.1f}%" if e is not None else "-"


def _row(k: str, p: Any, m: Any, e: Any) -> str:
    return f"{k:<18}{_fmt(p, k):>14}{_fmt(m, k):>14}{_pct(e):>9}"


def combine(plan: Plan, simres: Any, m: Any, out: str | Path | None = None,
            plot: bool = True) -> Comparison:
    """A prediction (`sim.simulate(plan)`) and a measurement
    (`runtime.observe.measure.Measurement`) -> Comparison; with `out`, writes
    compare.json and timeline.png there."""
    predicted = predicted_fields(simres.to_dict())
    cmp = Comparison(plan, predicted, m.measured, errors(predicted, m.measured), m.noise,
                     m.provenance, list(m.not_measured))
    if out is not None:
        from sandbox.outputs import output_dir, writing

        out = output_dir(out, "out")
        with writing(out, "out"):
            out.mkdir(exist_ok=True)
        if plot:
            from sandbox.timeline_plot import plot_timelines

            with writing(out / "timeline.png", "out"):
                cmp.plot = str(plot_timelines(simres, m.profile, out / "timeline.png",
                                              title=_title(plan)))
        with writing(out / "compare.json", "out"):
            (out / "compare.json").write_text(json.dumps(cmp.to_dict(), indent=2) + "\n")
    return cmp


def compare(plan: Plan, out: str | Path, steps: int | None = None, profile_steps: int = 2,
            progress: bool = True, plot: bool = True) -> Comparison:
    """Simulate, measure and combine; see the module docstring and `measure`.

    sim/ and runtime/ are imported here, lazily: neither imports the other,
    both speak only the sandbox specs."""
    from runtime.launch import check_runnable
    from runtime.observe.measure import measure
    from sandbox.outputs import output_dir
    from sim import simulate

    output_dir(out, "out")  # before simulating or training
    check_runnable(plan if steps is None else plan.replace(steps=steps))  # before any work
    simres = simulate(plan)
    m = measure(plan, out, steps, profile_steps, progress)
    return combine(plan, simres, m, out, plot)


def _title(plan: Plan) -> str:
    p = plan.parallel
    return (f"{plan.model.name}: dp {p.dp} tp {p.tp} pp {p.pp}, micro_batch {p.micro_batch}, "
            f"global_batch {p.global_batch}")


