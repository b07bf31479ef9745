"""Profile one training step of a plan with torch.profiler, per rank.

`profile_step(plan, steps=...)` spawns one process per rank (`runtime.spawn`:
gloo on CPU), applies the plan with `runtime.parallel.parallelize` and runs
the training loop's step (`runtime.step.train_step`, constant LR): warm-up
steps, then `steps` timed steps (wall seconds per step, slowest rank), then
one more under torch.profiler with three labelled regions: `fwd_bwd`
(`Parallelized.step`), `clip` (unscale + `clip_grad_norm_`) and `optimizer`
(`opt.step`, the replicas' after-step sync, `zero_grad`).

Memory: the peak resident set of each process, and that peak minus the
resident set before the model was built (`model_mem_gb`: weights, gradients,
optimizer states, activations and allocator slack, without the ~0.3 GB of
Python and torch libraries).

`analyse(events, plan)` turns a rank's profiler events into a breakdown of
that step in seconds:

- compute: main-thread time inside top-level `aten::` ops of `fwd_bwd`
  (not counting collectives and waits);
- exposed communication by class (`tp_comm`, `dp_comm`, `pp_comm+bubble`):
  the part of `fwd_bwd` where the main thread runs no compute op while a
  collective of that class is in flight (gloo runs collectives on its own
  threads; send/recv block the main thread). A blocked pipeline recv cannot
  be split into transfer and bubble, so they are one field;
- optimizer: the `optimizer` region; other: the rest of the step (Python,
  framework overhead, clip).

Classes: send/recv are `pp`; other collectives are `tp` when only tp > 1,
`dp` when only dp > 1, otherwise (pp-only plans: loss and tied-embedding
all-reduces) `other`; with both tp and dp > 1 the class is `tp+dp`.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch.profiler import ProfilerActivity, profile

import sandbox
from runtime.calibrate.run import rank_threads
from runtime.parallel.mesh import build_mesh
from runtime.parallel.parallelize import parallelize
from runtime.spawn import Worker, spawn
from runtime.step import train_step
from sandbox.specs import Plan

REGIONS = ("fwd_bwd", "clip", "optimizer")
_COMM = ("gloo:", "nccl:", "c10d::", "_c10d_functional::", "record_param_comms")
_BLOCK = ("wait", "gloo:send", "gloo:recv", "c10d::send", "c10d::recv")


@dataclass
class StepProfile:
    """Per-rank results: step wall times (s) and one analysed step."""

    world_size: int
    threads: int
    step_times_s: list[float]  # slowest rank, per timed step
    ranks: list[dict] = field(default_factory=list)  # analyse() per rank + "intervals"

    def slowest_rank(self) -> dict:
        return max(self.ranks, key=lambda r: r["step_s"])

    def to_dict(self) -> dict:
        return {"world_size": self.world_size, "threads": self.threads,
                "step_times_s": self.step_times_s, "ranks": self.ranks}


def _union(iv: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[list[float]] = []
    for a, b in sorted(iv):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def _length(iv: list[tuple[float, float]]) -> float:
    return sum(b - a for a, b in iv)


def _intersect(x: list[tuple[float, float]], y: list[tuple[float, float]]) -> list:
    out, i, j = [], 0, 0
    while i < len(x) and j < len(y):
        a, b = max(x[i][0], y[j][0]), min(x[i][1], y[j][1])
        if a < b:
            out.append((a, b))
        if x[i][1] < y[j][1]:
            i += 1
        else:
            j += 1
    return out


def _subtract(x: list[tuple[float, float]], y: list[tuple[float, float]]) -> list:
    out = []
    for a, b in x:
        cur = a
        for c, d in y:
            if d <= cur or c >= b:
                continue
            if c > cur:
                out.append((cur, c))
            cur = max(cur, d)
        if cur < b:
            out.append((cur, b))
    return out


def comm_class(name: str, plan: Plan) -> str:
    """Which breakdown field a collective event belongs to (module docstring)."""
    p = plan.parallel
    if any(k in name for k in ("send", "recv")):
        return "pp_comm+bubble"
    if p.tp > 1 and p.dp > 1:
        return "tp+dp"
    if p.tp > 1:
        return "tp_comm"
    if p.dp > 1:
        return "dp_comm"
    return "other"


def analyse(events: list[dict], plan: Plan) -> dict:
    """Breakdown (seconds) and labelled intervals of one profiled step.

    events: dicts with name, thread, start_us, end_us, depth (0 = no parent,
    1 = child of a region, ...) and parent (name of the parent event).
    """
    regions = {e["name"]: (e["start_us"], e["end_us"]) for e in events if e["name"] in REGIONS}
    main = next(e["thread"] for e in events if e["name"] == "fwd_bwd")
    t0 = regions["fwd_bwd"][0]
    t_end = max(b for _, b in regions.values())
    fb = [regions["fwd_bwd"]]
    is_comm = [any(e["name"].startswith(k) for k in _COMM) for e in events]
    blocking = _union([(e["start_us"], e["end_us"]) for e, c in zip(events, is_comm, strict=True)
                       if e["thread"] == main and (c or any(k in e["name"] for k in _BLOCK))])
    compute = _union([(e["start_us"], e["end_us"]) for e in events
                      if e["thread"] == main and e["name"].startswith("aten::")
                      and not e["parent"].startswith("aten::")])
    compute = _intersect(_subtract(compute, blocking), fb)
    idle = _subtract(fb, compute)
    classes: dict[str, list[tuple[float, float]]] = {}
    for e, c in zip(events, is_comm, strict=True):
        if c and e["name"].startswith(("gloo:", "nccl:")):
            classes.setdefault(comm_class(e["name"], plan), []).append(
                (e["start_us"], e["end_us"]))
    out: dict = {"step_s": (t_end - t0) / 1e6, "compute": _length(compute) / 1e6}
    covered: list[tuple[float, float]] = []
    intervals: dict[str, list] = {"compute": compute}
    for name, iv in sorted(classes.items()):
        exposed = _subtract(_intersect(idle, _union(iv)), covered)
        covered = _union(covered + exposed)
        out[name] = _length(exposed) / 1e6
        out[f"{name}_in_flight"] = _length(_union(iv)) / 1e6
        intervals[name] = _union(iv)
    for r in ("clip", "optimizer"):
        if r in regions:
            out[r] = (regions[r][1] - regions[r][0]) / 1e6
            intervals[r] = [regions[r]]
    out["other"] = max(0.0, out["step_s"] - out["compute"] - out["optimizer"]
                       - sum(out[k] for k in classes))
    out["intervals_s"] = {k: [((a - t0) / 1e6, (b - t0) / 1e6) for a, b in v]
                          for k, v in intervals.items()}
    return out


def _events(prof) -> list[dict]:
    out = []
    for e in prof.events():
        parent = e.cpu_parent
        depth = 0
        p = parent
        while p is not None and depth < 50:
            depth, p = depth + 1, p.cpu_parent
        out.append({"name": e.name, "thread": e.thread, "start_us": e.time_range.start,
                    "end_us": e.time_range.end, "depth": depth,
                    "parent": parent.name if parent is not None else ""})
    return out


def _batch(plan: Plan, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(step)
    ids = torch.randint(0, plan.model.vocab, (plan.parallel.global_batch, plan.model.seq_len + 1),
                        generator=gen)
    return ids[:, :-1], ids[:, 1:]


def _worker(w: Worker, plan_dict: dict, warmup: int, steps: int) -> dict:
    plan = sandbox.load(plan_dict)
    mesh = build_mesh(plan, "cpu") if w.world > 1 else None
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # bytes
    par = parallelize(plan, mesh, torch.device("cpu"))
    opt = par.build_optimizer()
    dp_rank = mesh["dp"].get_local_rank() if mesh is not None else 0
    share = plan.parallel.global_batch // plan.parallel.dp
    rows = slice(dp_rank * share, (dp_rank + 1) * share)

    def one(step: int) -> None:
        x, y = _batch(plan, step)
        train_step(par, opt, x[rows], y[rows], step + 1, plan.train.grad_clip,
                   mark=torch.profiler.record_function)

    times = []
    for s in range(warmup + steps):
        dist.barrier()
        t = time.perf_counter()
        one(s)
        el = torch.tensor([time.perf_counter() - t], dtype=torch.float64)
        dist.all_reduce(el, op=dist.ReduceOp.MAX)
        if s >= warmup:
            times.append(el.item())
    dist.barrier()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        one(warmup + steps)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"times": times, "events": _events(prof), "base_rss": base_rss, "peak_rss": peak_rss}


def profile_step(plan: Plan, warmup: int = 1, steps: int = 3, threads: int | None = None,
                 keep_events: bool = False) -> StepProfile:
    """Run the plan on `plan.world_size` CPU processes; see the module docstring.

    threads: intra-op threads per process (default: a `sandbox run` rank's,
    `runtime.calibrate.run.rank_threads()`).
    """
    world = plan.world_size
    threads = threads or rank_threads()
    raw = spawn(_worker, world, plan.to_dict(), warmup, steps, threads=threads)
    ranks = []
    for r, d in enumerate(raw):
        a = analyse(d["events"], plan)
        a["rank"] = r
        a["peak_rss_gb"] = d["peak_rss"] / 1e9
        a["model_mem_gb"] = (d["peak_rss"] - d["base_rss"]) / 1e9
        if keep_events:
            a["events"] = d["events"]
        ranks.append(a)
    return StepProfile(world, threads, raw[0]["times"], ranks)
