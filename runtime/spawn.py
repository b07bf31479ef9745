"""Spawn N local processes in one process group, run a function on each, collect results.

`spawn(fn, world, *args)` starts `world` processes (start method "spawn"),
joins them in a gloo (or NCCL) process group over a file:// rendezvous in a
temporary directory, calls `fn(worker, *args)` on each with a `Worker`
(rank, world, `tick()` for progress), and returns every rank's return value
in rank order (pickled through files in a private temporary folder that this
process made; nothing a user hands us is unpickled). `on_tick()` is called in this process
once per `tick()` of rank 0 (a progress bar). Used by the calibration
benchmarks, the step profiler and the tests' multi-process harnesses;
`sandbox run` uses torchrun instead (`runtime.launch`).
"""

from __future__ import annotations

import datetime
import pickle
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


@dataclass(frozen=True)
class Worker:
    """One spawned process: its rank, the world size and a progress file."""

    rank: int
    world: int
    progress: str

    def tick(self) -> None:
        """Report one unit of work done (counted on rank 0 only)."""
        if self.rank == 0:
            with open(self.progress, "a") as f:
                f.write(".")


def _entry(rank: int, world: int, tmp: str, backend: str, threads: int | None,
           timeout_s: float, fn: Callable[..., Any], args: tuple) -> None:
    if threads is not None:
        torch.set_num_threads(threads)
    if backend == "nccl":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    dist.init_process_group(backend, init_method=f"file://{tmp}/rdv", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=timeout_s))
    try:
        result = fn(Worker(rank, world, f"{tmp}/progress"), *args)
    finally:
        dist.destroy_process_group()
    Path(f"{tmp}/out.{rank}").write_bytes(pickle.dumps(result))


def spawn(fn: Callable[..., Any], world: int, *args: Any, backend: str = "gloo",
          threads: int | None = 1, timeout_s: float = 300.0,
          on_tick: Callable[[], None] | None = None) -> list[Any]:
    """fn(worker, *args) on `world` processes -> their return values by rank.

    fn: a module-level function (it is pickled). threads: intra-op threads
    per process (None: torch's default). timeout_s: the process group's
    collective timeout, seconds. A failing rank raises here
    (`torch.multiprocessing.ProcessRaisedException`).
    """
    with tempfile.TemporaryDirectory() as tmp:
        progress = Path(tmp) / "progress"
        progress.write_text("")
        ctx = mp.start_processes(_entry, nprocs=world, join=False, start_method="spawn",
                                 args=(world, tmp, backend, threads, timeout_s, fn, args))
        seen, finished = 0, False
        while not finished:
            finished = ctx.join(timeout=0.2)
            done = len(progress.read_text())
            for _ in range(done - seen):
                if on_tick is not None:
                    on_tick()
            seen = done
        return [pickle.loads(Path(f"{tmp}/out.{r}").read_bytes()) for r in range(world)]

