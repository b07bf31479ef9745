"""`sandbox run --profile-step N`: a torch.profiler trace of one training step.

Each rank writes, for step N of the run itself (same data, same layout):

    DIR/profile/step_N.rank_R.trace.json      Chrome-trace JSON (chrome://tracing,
                                               Perfetto), CPU and, on GPUs, CUDA
    DIR/profile/step_N.rank_R.breakdown.json  the step split into compute, exposed
                                               communication by class, optimizer, other

The breakdown (seconds) is what `sandbox compare` reports as measured:

- on CPU, `runtime.calibrate.step_profile.analyse` (main-thread aten ops,
  gloo collectives in flight while the main thread computes nothing);
- on GPUs, `analyse_device`: compute is the union of the step's CUDA
  kernels that are not collectives; a communication class's exposed time is
  the union of its NCCL kernels minus compute; optimizer is the compute of
  the kernels that start after the `optimizer` region begins; other is the
  rest of the step (launch gaps, host work).

Memory: the peak resident set and `model_mem_gb`: on CPU that peak minus
the resident set before the model was built (as
`runtime.calibrate.step_profile`), on a GPU the peak allocated device memory.
The profiled step is slower than the others (the profiler's overhead): its
metrics line says `"profiled": true` and the summary leaves it out.
"""

from __future__ import annotations

import json
import resource
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from runtime.calibrate.step_profile import (
    REGIONS,
    _intersect,
    _length,
    _subtract,
    _union,
    analyse,
    comm_class,
)
from sandbox.specs import Plan

PROFILE_DIR = "profile"


def read_breakdowns(out: Path, step: int) -> list[dict]:
    """Every rank's breakdown of profiled step `step`, in rank order."""
    files = sorted((Path(out) / PROFILE_DIR).glob(f"step_{step}.rank_*.breakdown.json"),
                   key=lambda p: int(p.name.split(".rank_")[1].split(".")[0]))
    return [json.loads(p.read_text()) for p in files]


def trace_paths(out: Path, step: int, rank: int) -> tuple[Path, Path]:
    """(Chrome trace, breakdown) files of one rank's profiled step."""
    d = Path(out) / PROFILE_DIR
    return d / f"step_{step}.rank_{rank}.trace.json", d / f"step_{step}.rank_{rank}.breakdown.json"


def events_of(prof: Any) -> list[dict]:
    """The profiler's events as dicts (name, thread, start/end in us, parent, device)."""
    out = []
    for e in prof.events():
        parent = e.cpu_parent
        device = "cuda" if "CUDA" in str(getattr(e, "device_type", "")).upper() else "cpu"
        out.append({"name": e.name, "thread": e.thread, "start_us": e.time_range.start,
                    "end_us": e.time_range.end, "depth": 0, "device": device,
                    "parent": parent.name if parent is not None else ""})
    return out


def analyse_device(events: list[dict], plan: Plan) -> dict:
    """Breakdown (seconds) of a GPU step from its CUDA kernels (module docstring)."""
    regions = {e["name"]: (e["start_us"], e["end_us"]) for e in events
               if e["name"] in REGIONS and e["device"] == "cpu"}
    kernels = [e for e in events if e["device"] == "cuda"]
    t0 = regions["fwd_bwd"][0]
    t_end = max([b for _, b in regions.values()] + [e["end_us"] for e in kernels])
    is_comm = ["nccl" in e["name"].lower() for e in kernels]
    compute = _union([(e["start_us"], e["end_us"]) for e, c in zip(kernels, is_comm, strict=True)
                      if not c])
    opt_start = regions.get("optimizer", (t_end, t_end))[0]
    optimizer = _intersect(compute, [(opt_start, t_end)])
    out: dict = {"step_s": (t_end - t0) / 1e6,
                 "compute": _length(_subtract(compute, optimizer)) / 1e6,
                 "optimizer": _length(optimizer) / 1e6}
    classes: dict[str, list[tuple[float, float]]] = {}
    for e, c in zip(kernels, is_comm, strict=True):
        if c:
            classes.setdefault(comm_class(e["name"], plan), []).append(
                (e["start_us"], e["end_us"]))
    covered: list[tuple[float, float]] = []
    intervals = {"compute": _subtract(compute, optimizer), "optimizer": optimizer}
    for name, iv in sorted(classes.items()):
        exposed = _subtract(_subtract(_union(iv), compute), covered)
        covered = _union(covered + exposed)
        out[name] = _length(exposed) / 1e6
        out[f"{name}_in_flight"] = _length(_union(iv)) / 1e6
        intervals[name] = _union(iv)
    out["other"] = max(0.0, out["step_s"] - out["compute"] - out["optimizer"]
                       - sum(out[k] for k in classes))
    out["intervals_s"] = {k: [((a - t0) / 1e6, (b - t0) / 1e6) for a, b in v]
                          for k, v in intervals.items()}
    return out


class StepTrace:
    """Context manager around one step: yields the phase marker for
    `runtime.step.train_step`, writes the trace and the breakdown on exit."""

    def __init__(self, out: Path, step: int, rank: int, device: torch.device, plan: Plan,
                 base_rss: int = 0):
        self.out, self.step, self.rank, self.device, self.plan = out, step, rank, device, plan
        self.base_rss = base_rss  # resident set before the model was built, bytes
        acts = [ProfilerActivity.CPU]
        if device.type == "cuda":
            acts.append(ProfilerActivity.CUDA)
        self.prof = profile(activities=acts)

    def __enter__(self):
        self.prof.__enter__()
        return record_function

    def __exit__(self, *exc: object) -> None:
        self.prof.__exit__(*exc)
        if exc[0] is not None:
            return
        trace, breakdown = trace_paths(self.out, self.step, self.rank)
        trace.parent.mkdir(parents=True, exist_ok=True)
        self.prof.export_chrome_trace(str(trace))
        events = events_of(self.prof)
        cpu = [e for e in events if e["device"] == "cpu"]
        if self.device.type == "cuda":
            b = analyse_device(events, self.plan)
        else:
            b = analyse(cpu, self.plan)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        model = (torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda"
                 else peak - self.base_rss)
        b.update(rank=self.rank, step=self.step, device=self.device.type, trace=trace.name,
                 peak_rss_gb=peak / 1e9, model_mem_gb=model / 1e9)
        breakdown.write_text(json.dumps(b, indent=2) + "\n")
