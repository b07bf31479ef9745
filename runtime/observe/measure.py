"""What the runtime measures for `sandbox compare`: a run and one profiled step.

`measure(plan, out)` runs the plan (`runtime.launch.run` into out/run):
step time (median after warm-up), tokens/s, peak memory and the spread of
the per-step times (metrics.jsonl); the run's one extra last step is traced
with torch.profiler (`sandbox run --profile-step`, `runtime.observe.step_trace`, on
CPU or GPU), which splits a step into compute, exposed communication by
class, optimizer and other. The prediction and the comparison are `sandbox.compare`'s; this
module never asks the simulator. Units: seconds, GB, tokens/s.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from runtime.calibrate.kernels import ForeignLoad
from runtime.launch import run
from runtime.observe.step_trace import read_breakdowns
from runtime.observe.summary import WARMUP_STEPS
from runtime.rundir import read_metrics
from sandbox.compare import FIELDS
from sandbox.specs import Plan


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


def provenance(plan: Plan, steps: int) -> dict:
    """Where and when a measurement was taken (host, cores, versions, load)."""
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

    steps: runtime steps (default: train.steps, at most 8), timed; one more
    is traced. profile_steps: unused (kept for callers; the run's own steps
    are the timed ones now).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    steps = steps or min(plan.train.steps, 8)
    load_before = os.getloadavg()[0]
    foreign = ForeignLoad().start()
    # one more step, traced by the run itself (`sandbox run --profile-step`)
    result = run(plan, out / "run", steps=steps + 1, progress=progress,
                 no_final_checkpoint=True, profile_step=steps + 1)
    metrics = [r for r in read_metrics(out / "run" / "metrics.jsonl") if not r.get("profiled")]
    not_measured = ["bubble and pp_comm separately (a blocked recv is both: one field)",
                    "other (framework overhead) is measured but not compared"]
    ranks = read_breakdowns(out / "run", steps + 1)
    prof = {"world_size": plan.world_size, "source": "sandbox run --profile-step",
            "step": steps + 1, "ranks": ranks} if ranks else None
    if prof is not None:
        (out / "step_profile.json").write_text(json.dumps(prof))
    if not _has_cuda():
        not_measured.append("device memory: on CPU peak_mem_gb is the resident set of the "
                            "process (Python and torch libraries included); model_mem_gb "
                            "subtracts the resident set before the model was built")
    prov = provenance(plan, steps)
    prov["loadavg_1m"] = [load_before, os.getloadavg()[0]]
    prov["foreign_cores"] = foreign.stop()
    return Measurement(measured_fields(result.to_dict(), metrics, prof),
                       noise(metrics, WARMUP_STEPS), prof, not_measured, steps, prov)


def _has_cuda() -> bool:
    return torch.cuda.is_available()
