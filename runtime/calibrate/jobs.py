"""What `calibrate` measures: the budget, one kernel job, and running a job.

`kernel_plan(budget)` lists the `Job`s (deduplicated GEMM shapes of the
measured models, attention, a whole block, memory-bound ops, a large copy,
AdamW); `run_job` times one with `runtime.calibrate.kernels` /
`runtime.calibrate.layer`. Both the in-process loop (`calibrate.run`) and the
concurrent ranks (`calibrate.concurrent`) run jobs through here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from runtime.calibrate import kernels as mb
from runtime.calibrate.collectives import default_sizes
from runtime.calibrate.layer import bench_layer
from sandbox.planfile import load
from sandbox.specs import Model

MODELS = ("tiny", "gpt-mini")  # whose GEMM / attention shapes are measured


@dataclass(frozen=True)
class Budget:
    """How much to measure: repeats per point, the time one repeat should last
    (s; collectives: `collective_min_time_s`, longer, as their small-message
    times jitter with thread wake-ups), the micro-batches, tp degrees, square
    GEMM sizes, collective sizes (bytes), copy size (bytes), AdamW parameters
    and the models whose shapes are measured."""

    repeats: int = 7
    min_time_s: float = 0.004
    collective_min_time_s: float = 0.02
    micro_batches: tuple[int, ...] = (1, 4)
    tps: tuple[int, ...] = (1, 2)
    squares: tuple[int, ...] = (1024,)
    collective_sizes: tuple[int, ...] = tuple(default_sizes())
    copy_bytes: int = 256 << 20
    adamw_params: int = 4_000_000
    models: tuple[str, ...] = MODELS

    @staticmethod
    def quick() -> Budget:
        """A few seconds: for tests and smoke checks, not for a real profile."""
        return Budget(repeats=5, min_time_s=0.002, collective_min_time_s=0.002,
                      micro_batches=(1,), tps=(1,),
                      squares=(), collective_sizes=tuple(default_sizes(quick=True)),
                      copy_bytes=32 << 20, adamw_params=500_000)


@dataclass(frozen=True)
class Job:
    """One kernel measurement.

    kind: gemm | attention | block | memory | copy | adamw. gemm: `shape`
    (tokens, in, out features) named `name`; attention / block / memory: the
    `model`'s shapes at `micro_batch` sequences split over `tp` ranks
    (block: with `sequence_parallel`); `backward`: forward + backward
    (gemm, attention).
    """

    kind: str
    name: str = ""
    shape: tuple[int, ...] = ()
    backward: bool = False
    model: Model | None = None
    micro_batch: int = 0
    tp: int = 1
    sequence_parallel: bool = False


def model_specs(names: tuple[str, ...] = MODELS) -> list[Model]:
    """The model specs of preset `names`."""
    return [load({"model": {"preset": name}}).model for name in names]


def kernel_plan(budget: Budget, max_tp: int | None = None) -> list[Job]:
    """The kernel measurements to take (GEMM shapes deduplicated);
    tensor-parallel shapes only up to `max_tp` (a rank of p processes never
    runs tp > p)."""
    jobs: list[Job] = []
    seen: set = set()

    def gemm(t: int, k: int, n: int, bwd: bool, name: str) -> None:
        if (t, k, n, bwd) not in seen:
            seen.add((t, k, n, bwd))
            jobs.append(Job("gemm", name=name, shape=(t, k, n), backward=bwd))

    for spec in model_specs(budget.models):
        for b in budget.micro_batches:
            for tp in budget.tps:
                if spec.heads % tp or (max_tp is not None and tp > max_tp):
                    continue
                for name, t, k, n in mb.gemm_shapes(spec, b, tp):
                    for bwd in (False, True):
                        gemm(t, k, n, bwd, name)
                for bwd in (False, True):
                    jobs.append(Job("attention", model=spec, micro_batch=b, tp=tp, backward=bwd))
                # the whole layer; tensor-parallel over all p processes only
                if tp == 1 or tp == max_tp:
                    for sp in ((False,) if tp == 1 else (True, False)):
                        jobs.append(Job("block", model=spec, micro_batch=b, tp=tp,
                                        sequence_parallel=sp))
            jobs.append(Job("memory", model=spec, micro_batch=b))
    for h in budget.squares:
        for bwd in (False, True):
            gemm(1024, h, h, bwd, f"square{h}")
    jobs.append(Job("copy"))
    jobs.append(Job("adamw"))
    return jobs


def run_job(job: Job, device: torch.device, dtype: str, b: Budget) -> list[mb.KernelResult]:
    """Time one job (`b.repeats` repeats of at least `b.min_time_s` seconds)."""
    if job.kind == "gemm":
        t, k, n = job.shape
        return [mb.bench_linear(t, k, n, device, dtype, job.backward, b.repeats, b.min_time_s,
                                job.name)]
    if job.kind == "attention":
        return [mb.bench_attention(job.model, job.micro_batch, device, dtype, job.backward,
                                   job.tp, b.repeats, b.min_time_s)]
    if job.kind == "block":
        return bench_layer(job.model, job.micro_batch, device, dtype, job.tp,
                           job.sequence_parallel, b.repeats, b.min_time_s)
    if job.kind == "memory":
        return mb.bench_memory_ops(job.model, job.micro_batch, device, dtype, b.repeats,
                                   b.min_time_s)
    if job.kind == "copy":
        return [mb.bench_copy(b.copy_bytes, device, b.repeats, b.min_time_s)]
    if job.kind == "adamw":
        return [mb.bench_adamw(b.adamw_params, device, max(3, b.repeats // 2), b.min_time_s)]
    raise ValueError(f"calibrate: unknown job kind '{job.kind}'")
