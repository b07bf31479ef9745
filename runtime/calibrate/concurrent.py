"""Kernel benchmarks run by N CPU processes at once, as N ranks run them.

One rank of an N-process plan shares the machine's cores, caches and memory
bandwidth with N - 1 others doing the same work. `run_concurrently(jobs, N,
threads, ...)` spawns N processes (gloo over a file:// rendezvous, only for
barriers), each with `threads` intra-op threads; before every job all of
them meet at a barrier, then all run it, every timed sample in lockstep
(`microbench.set_lockstep`: same calls per sample, a barrier before each),
so that every sample is taken while all ranks compute, as in a data- or
tensor-parallel step. The result for a job is the slowest rank's (largest
median), as the slowest rank sets a step's pace.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from runtime.calibrate import kernels as microbench
from runtime.calibrate.jobs import Budget, Job, run_job
from runtime.spawn import Worker, spawn


def _worker(w: Worker, jobs: list[Job], dtype: str,
            budget: Budget) -> list[list[microbench.KernelResult]]:
    results = []

    def agree_max(x: float) -> float:
        t = torch.tensor([float(x)], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.item()

    microbench.set_lockstep(dist.barrier, agree_max)
    try:
        for job in jobs:
            dist.barrier()
            results.append(run_job(job, torch.device("cpu"), dtype, budget))
            w.tick()
        dist.barrier()
    finally:
        microbench.set_lockstep(None)
    return results


def run_concurrently(jobs: list[Job], processes: int, threads: int, dtype: str,
                     budget: Budget, on_job=None) -> list[microbench.KernelResult]:
    """Kernel results (flattened, in job order) of the slowest rank per job."""
    per_rank = spawn(_worker, processes, jobs, dtype, budget, threads=threads, on_tick=on_job)
    merged = []
    for j in range(len(jobs)):
        for i in range(len(per_rank[0][j])):
            merged.append(max((rk[j][i] for rk in per_rank), key=lambda k: k.time.median))
    return merged
