"""What a training process measures about itself, and the run's summary.json.

`peak_memory_gb` (device memory on GPU, resident set size on CPU),
`peak_flops` (the device spec MFU is taken against) and `run_summary`
(DESIGN.md's summary fields plus provenance), used by `runtime.train`.
"""

from __future__ import annotations

import resource
import statistics
from typing import Any

import torch
import torch.distributed as dist

from sandbox.specs import GPU, Plan

WARMUP_STEPS = 2  # steps left out of the median step time


def peak_memory_gb(device: torch.device) -> float:
    """Peak memory of this process in GB: allocated device memory on GPU,
    resident set size (ru_maxrss, KiB on Linux) on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def peak_flops(plan: Plan, device: torch.device, world: int) -> tuple[float, str]:
    """Dense peak FLOP/s of one device for MFU, and the name of that device
    spec: the plan's GPU, or this machine's CPU spec when a GPU plan runs on CPU."""
    gpu, precision = plan.cluster.gpu, plan.train.precision
    if device.type == "cpu":
        precision = "fp32"  # CPU runs train in fp32
        if gpu.name != "cpu":
            from sandbox.presets import localhost_cluster

            gpu = GPU(**localhost_cluster(world)["gpu"])
    return gpu.peak_flops(precision), gpu.name


def max_over_ranks(value: float, device: torch.device) -> float:
    """The largest `value` over every rank (the value itself without a process group)."""
    if not dist.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def run_summary(plan: Plan, device: torch.device, backend: str, world: int,
                times: list[float], last: dict[str, Any], start: int) -> dict[str, Any]:
    """summary.json: DESIGN.md fields plus provenance. times: seconds of each
    step trained by this process; last: the last metrics row; start: the step
    resumed from. Collective (every rank calls it)."""
    from sandbox.counts import model_flops_per_step

    steady = times[WARMUP_STEPS:] if len(times) > WARMUP_STEPS else times
    step_time = statistics.median(steady) if steady else float("nan")
    peak, peak_name = peak_flops(plan, device, world)
    flops = model_flops_per_step(plan.model, plan.parallel.global_batch)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {
        "world_size": world,
        "step_time_s": step_time,
        "tokens_per_s": plan.tokens_per_step / step_time,
        "mfu": flops / (step_time * world * peak),
        "peak_mem_gb": max_over_ranks(peak_memory_gb(device), device),
        "final_loss": last.get("loss"),
        "eval_loss": last.get("eval_loss"),
        "device": f"{name} ({backend}) x{world}",
        "steps": plan.train.steps,
        "resumed_from_step": start,
        "precision": "fp32" if device.type == "cpu" else plan.train.precision,
        "compiled": bool(plan.train.compile and device.type == "cuda"),
        "flops_per_step": flops,
        "peak_flops_per_device": peak,
        "peak_flops_source": peak_name,
        "torch": torch.__version__,
        "plan": plan.model.name,
        "parallel": {k: getattr(plan.parallel, k) for k in
                     ("dp", "tp", "pp", "vpp", "zero", "schedule", "micro_batch",
                      "global_batch", "dp_mode", "grad_compression", "sync_every")},
    }
