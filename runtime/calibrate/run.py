"""Calibrate the simulator on this machine: kernels and collectives, measured.

`calibrate(device="cpu"|"cuda", quick=False)` runs `runtime.calibrate.kernels` (the
model's GEMM shapes, attention, memory-bound ops, a large copy, AdamW) and
`runtime.calibrate.layer` (a whole layer and its AdamW step, plain and, with as
many processes as tp, tensor-parallel) for each process count a plan may use
on this machine (on CPU every process gets the intra-op threads a rank of
`sandbox run` gets, `rank_threads()`, and with more than one process all of
them run each kernel at once: `runtime.calibrate.concurrent`), then
`runtime.calibrate.collectives` (gloo on CPU, NCCL on GPU) for each group size.
It returns a `Calibration` holding every measurement with its spread (median,
quartiles, min, max over repeats); `Calibration.to_profile()` turns it into
the simulator's profile (`sandbox.profile`), and `write(path)` writes that as
TOML plus, in a `[measurements]` table the profile loader ignores, the raw
points so nothing measured is lost.

Units: seconds, bytes, FLOP/s, bytes/s; efficiencies are achieved / peak
of `sandbox.presets` (the CPU "GPU" peak from /proc/cpuinfo, or the GPU
datasheet figure).
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from runtime.calibrate import kernels as mb
from runtime.calibrate.collectives import CollectivePoint, CollectiveResult, bench_collectives
from runtime.calibrate.concurrent import run_concurrently
from runtime.calibrate.jobs import Budget, kernel_plan, run_job
from sandbox import presets
from sandbox.planfile import load
from sandbox.specs import GPU


@dataclass
class ProcessKernels:
    """Kernel results measured with the threads one of `processes` ranks gets."""

    processes: int
    threads: int
    peak_flops: float  # FLOP/s of one rank (sandbox.presets), fp32 on CPU
    kernels: list[mb.KernelResult] = field(default_factory=list)

    def efficiency(self, k: mb.KernelResult) -> float:
        return k.rate / self.peak_flops if k.flops > 0 else 0.0


@dataclass
class Calibration:
    """Everything one calibration measured, and where and how."""

    device: str
    machine: dict[str, Any]
    kernels: list[ProcessKernels]
    collectives: list[CollectiveResult]
    wall_s: float
    budget: Budget

    def to_dict(self) -> dict:
        return {
            "device": self.device, "machine": self.machine, "wall_s": self.wall_s,
            "kernels": [{"processes": pk.processes, "threads": pk.threads,
                         "peak_flops": pk.peak_flops,
                         "results": [{**k.to_dict(), "efficiency": pk.efficiency(k)}
                                     for k in pk.kernels]} for pk in self.kernels],
            "collectives": [c.to_dict() for c in self.collectives],
        }

    @classmethod
    def from_dict(cls, d: dict) -> Calibration:
        """Back from `to_dict()` (e.g. the `--json` file), to re-derive profiles."""
        kernels = []
        for pk in d["kernels"]:
            ks = [mb.KernelResult(r["kind"], r["name"], tuple(r["shape"]), r["dtype"],
                                  r["pass"], r["threads"], r["flops"], r["bytes"],
                                  mb.Stat(**r["time"])) for r in pk["results"]]
            kernels.append(ProcessKernels(pk["processes"], pk["threads"], pk["peak_flops"], ks))
        colls = [CollectiveResult(c["backend"], c["group_size"], c["device"],
                                  [CollectivePoint(q["op"], q["bytes"], mb.Stat(**q["time"]))
                                   for q in c["points"]]) for c in d["collectives"]]
        return cls(d["device"], d["machine"], kernels, colls, d["wall_s"], Budget())

    def summary(self) -> str:
        """A few lines: headline rates with their spread (IQR / median)."""
        lines = [f"calibration on {self.machine.get('cpu') or self.device} "
                 f"({self.machine.get('cores')} cores, torch {self.machine.get('torch')}, "
                 f"load {self.machine.get('loadavg_1m')}, other jobs "
                 f"{_cores(self.machine.get('foreign_cores'))}), {self.wall_s:.1f} s"]
        for pk in self.kernels:
            gemms = [k for k in pk.kernels if k.kind == "gemm" and k.pass_ == "fwd+bwd"]
            best = max(gemms, key=lambda k: k.flops, default=None)
            copy = next((k for k in pk.kernels if k.kind == "copy"), None)
            head = f"  {pk.processes} process(es) x {pk.threads} thread(s):"
            if best is not None:
                head += (f" GEMM {best.shape} fwd+bwd {best.rate / 1e9:.1f} GFLOP/s "
                         f"(eff {pk.efficiency(best):.2f}, spread {best.time.iqr_rel:.0%})")
            if copy is not None:
                head += f"; copy {copy.rate / 1e9:.1f} GB/s (spread {copy.time.iqr_rel:.0%})"
            lines.append(head)
        for c in self.collectives:
            for op in sorted({q.op for q in c.points}):
                f = c.fit(op)
                lines.append(f"  {c.backend} x{c.group_size} {op}: latency "
                             f"{f.latency_s * 1e6:.0f} us, bus bandwidth "
                             f"{f.busbw_bytes_per_s / 1e9:.2f} GB/s")
        return "\n".join(lines)

    def to_profile(self, processes: int | None = None) -> Any:
        """The simulator's profile (`sandbox.profile.Profile`) for one rank of
        `processes` ranks (default: the most measured)."""
        from runtime.calibrate.profile import to_profile

        return to_profile(self, processes)

    def write(self, path: str | Path, processes: int | None = None) -> Path:
        """Write the profile TOML (see `runtime.calibrate.profile`)."""
        from runtime.calibrate.profile import write_profile

        return write_profile(self, Path(path), processes)


def _cores(x: float | None) -> str:
    return "?" if x is None else f"{x:.2f} cores"


def rank_threads() -> int:
    """Intra-op threads of one CPU rank of `sandbox run`: `runtime.launch` starts
    every rank with OMP_NUM_THREADS (default 1, whatever the world size), and
    torch sizes its pool from it."""
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS") or 1))
    except ValueError:
        return 1


def machine_info(device: str) -> dict[str, Any]:
    """Host, CPU, cores, torch and (on GPU) the device name, for provenance."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {"host": platform.node(), "cpu": cpu, "cores": os.cpu_count() or 1,
            "python": platform.python_version(), "torch": torch.__version__,
            "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
        info["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
    return info


def rank_gpu(device: str, processes: int) -> GPU:
    """The `GPU` spec one rank has on this machine (as `localhost` builds it)."""
    if device == "cpu":
        return load({"cluster": {"preset": "localhost", "gpus_per_node": processes}}).cluster.gpu
    name = presets._match_gpu(torch.cuda.get_device_name(0))
    return GPU(name=name, **presets.GPUS[name])


def calibrate(device: str = "cpu", quick: bool = False, budget: Budget | None = None,
              processes: tuple[int, ...] | None = None,
              group_sizes: tuple[int, ...] | None = None,
              dtypes: tuple[str, ...] | None = None, progress: bool = True) -> Calibration:
    """Measure this machine. See the module docstring.

    processes: rank counts to measure kernels for (CPU default: 1 and 2,
    each rank with `rank_threads()` threads; GPU: 1). group_sizes: collective
    group sizes (CPU default: 2, plus 4 when there are at least 4 cores;
    GPU: every visible GPU count >= 2, or none with one GPU). dtypes: fp32 on
    CPU; bf16 and fp32 on GPU.
    """
    from tqdm import tqdm

    t0 = time.perf_counter()
    budget = budget or (Budget.quick() if quick else Budget())
    cores = os.cpu_count() or 1
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("calibrate --device cuda: no CUDA device visible")
        processes = processes or (1,)
        n_gpu = torch.cuda.device_count()
        group_sizes = group_sizes if group_sizes is not None else tuple(
            g for g in (2, 4, 8) if g <= n_gpu)
        dtypes = dtypes or ("bf16", "fp32")
    else:
        processes = processes or (1, 2)
        group_sizes = group_sizes if group_sizes is not None else tuple(
            g for g in (2, 4) if g == 2 or g <= cores)
        dtypes = dtypes or ("fp32",)
    load = mb.ForeignLoad().start()  # other jobs' CPU use while measuring
    plans = {p: kernel_plan(budget, p if device == "cpu" else None) for p in processes}
    ops = 4
    total = len(dtypes) * sum(len(j) for j in plans.values()) + len(group_sizes) * ops * len(
        budget.collective_sizes)
    bar = tqdm(total=total, desc="calibrate", unit="pt", disable=not progress, leave=False)
    dev = torch.device(device if device == "cpu" else "cuda:0")
    threads_before = torch.get_num_threads()
    kernels = []
    try:
        for p in processes:
            jobs = plans[p]
            threads = rank_threads() if device == "cpu" else threads_before
            torch.set_num_threads(threads)
            gpu = rank_gpu(device, p)
            for dtype in dtypes:
                peak = gpu.peak_flops(dtype)
                pk = ProcessKernels(p, threads, peak)
                bar.set_postfix_str(f"kernels, {p} rank(s) x {threads} thread(s)")
                if device == "cpu" and p > 1:  # all ranks busy at once, as in a run
                    pk.kernels.extend(run_concurrently(jobs, p, threads, dtype, budget,
                                                       on_job=bar.update))
                else:
                    for job in jobs:
                        pk.kernels.extend(run_job(job, dev, dtype, budget))
                        bar.update()
                kernels.append(pk)
    finally:
        torch.set_num_threads(threads_before)
    collectives = []
    for g in group_sizes:
        bar.set_postfix_str(f"collectives x{g}")
        collectives.append(bench_collectives(g, list(budget.collective_sizes), device,
                                             repeats=budget.repeats + 2,
                                             min_time_s=budget.collective_min_time_s,
                                             on_point=bar.update))
    bar.close()
    info = machine_info(device)
    info["foreign_cores"] = load.stop()
    return Calibration(device, info, kernels, collectives, time.perf_counter() - t0, budget)
