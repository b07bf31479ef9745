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

import datetime
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _worker(rank: int, world: int, rdv: str, jobs: list, threads: int, dtype: str,
            budget: Any, out: str, progress: str) -> None:
    from runtime.calibrate import _run_job

    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"file://{rdv}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=300))
    results = []

    def agree_max(x: float) -> float:
        t = torch.tensor([float(x)], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.item()

    from runtime import microbench

    microbench.set_lockstep(dist.barrier, agree_max)
    try:
        for job in jobs:
            dist.barrier()
            results.append(_run_job(job, torch.device("cpu"), dtype, budget))
            if rank == 0:
                with open(progress, "a") as f:
                    f.write(".")
        dist.barrier()
    finally:
        microbench.set_lockstep(None)
        dist.destroy_process_group()
    Path(f"{out}.{rank}").write_bytes(pickle.dumps(results))


def run_concurrently(jobs: list, processes: int, threads: int, dtype: str, budget: Any,
                     on_job=None) -> list:
    """Kernel results (flattened, in job order) of the slowest rank per job."""
    with tempfile.TemporaryDirectory() as tmp:
        rdv, out, prog = (os.path.join(tmp, n) for n in ("rdv", "out", "progress"))
        Path(prog).write_text("")
        ctx = mp.start_processes(_worker, nprocs=processes, join=False, start_method="spawn",
                                 args=(processes, rdv, jobs, threads, dtype, budget, out, prog))
        seen = 0
        while True:
            finished = ctx.join(timeout=0.2)
            done = len(Path(prog).read_text())
            for _ in range(done - seen):
                if on_job:
                    on_job()
            seen = done
            if finished:
                break
        per_rank = [pickle.loads(Path(f"{out}.{r}").read_bytes()) for r in range(processes)]
    merged = []
    for j in range(len(jobs)):
        for i in range(len(per_rank[0][j])):
            merged.append(max((rk[j][i] for rk in per_rank), key=lambda k: k.time.median))
    return merged
