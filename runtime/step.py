"""The one training step: what every loop (`Trainer`, the step profiler, the
tests' harness) runs per optimizer step.

    forward + backward over this rank's parts (`Parallelized.step`)
    -> unscale the gradients (fp16 loss scale) -> clip the global norm
    -> optimizer step (skipped on an fp16 overflow) -> replicas' after-step
    sync (local SGD, parameter server) -> LR schedule -> zero the gradients

`Divergence.check` stops a run after a step that diverged: with fp32 or
bf16 a loss that is NaN or infinite; with fp16 the dynamic loss scale has its
say first (a non-finite gradient norm skips the step and halves the scale,
which is normal) and the run stops only when a step is skipped while the
scale is already at its minimum: the gradients overflow unscaled and no scale
can help. The error names the step and the checkpoints kept; metrics.jsonl
keeps every step logged, the diverged one included, and no checkpoint is
saved after it.

`mark(name)` wraps the phases "fwd_bwd", "clip" and "optimizer" (e.g.
`torch.profiler.record_function`, which `runtime.calibrate.step_profile`
splits a step by).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from runtime.loss_scale import DynamicLossScale
from runtime.parallel.parallelize import Parallelized
from sandbox.errors import SandboxError


@dataclass(frozen=True)
class StepResult:
    """One step's mean loss, gradient norm before clipping, learning rate and
    loss scale it ran with, and whether the optimizer stepped."""

    loss: float
    grad_norm: float
    lr: float
    loss_scale: float
    updated: bool
    aux_loss: float | None = None  # MoE load-balancing loss (logged apart from `loss`)


def _no_mark(name: str) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


def train_step(par: Parallelized, optimizer: torch.optim.Optimizer, tokens: torch.Tensor,
               targets: torch.Tensor, step: int, grad_clip: float, *,
               scheduler: Any = None, scaler: DynamicLossScale | None = None,
               sync: bool = False, after_backward: Callable[[], None] | None = None,
               mark: Callable[[str], contextlib.AbstractContextManager] = _no_mark,
               ) -> StepResult:
    """Run optimizer step `step` (1-based) on this dp rank's batch.

    tokens, targets: (sequences of this dp rank, seq_len) int64. grad_clip:
    max global gradient norm (0: off). scheduler: an LR scheduler stepped
    after the update (None: constant). scaler: fp16 dynamic loss scale (a
    non-finite norm skips the optimizer step; the schedule still advances).
    sync: a checkpoint or the last step follows, replicas must end equal.
    after_backward: called right after forward + backward (failure injection).
    """
    scale = par.loss_scale
    with mark("fwd_bwd"):
        loss = par.step(tokens, targets)
    if after_backward is not None:
        after_backward()
    with mark("clip"):
        par.unscale_grads()
        norm = par.clip_grad_norm_(grad_clip)
    lr = optimizer.param_groups[0]["lr"]
    with mark("optimizer"):
        updated = scaler is None or scaler.update(math.isfinite(norm))
        if updated:
            optimizer.step()
        par.after_optimizer_step(step, sync=sync)
        if scheduler is not None:
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        par.loss_scale = scaler.scale  # for the next step
    return StepResult(loss, norm, lr, scale, updated, par.aux_loss)


class Divergence:
    """The divergence rule of one run directory (see the module docstring)."""

    def __init__(self, out: Path, scaler: DynamicLossScale | None):
        self.out, self.scaler = Path(out), scaler
        self.skipped_in_a_row = 0

    def why(self, res: StepResult) -> str | None:
        """What is wrong after this step, or None when training may go on."""
        if self.scaler is None:
            return None if math.isfinite(res.loss) else f"loss is {res.loss}"
        self.skipped_in_a_row = 0 if res.updated else self.skipped_in_a_row + 1
        if res.updated and not math.isfinite(res.loss):
            return f"loss is {res.loss}"
        if not res.updated and res.loss_scale <= self.scaler.min_scale:
            return (f"fp16 gradients not finite even at the minimum loss scale "
                    f"({res.loss_scale:g}; {self.skipped_in_a_row} steps in a row skipped, "
                    f"loss {res.loss:.4g})")
        return None

    def error(self, step: int, why: str) -> SandboxError:
        """The one-line stop of step `step`, naming the checkpoints kept."""
        from runtime import checkpoint as ckpt

        kept = sorted(int(p.name.rsplit("_", 1)[1]) for p in ckpt.complete_checkpoints(self.out))
        saved = (f"checkpoints kept: step{'s' * (len(kept) > 1)} {', '.join(map(str, kept))} in "
                 f"{self.out / 'checkpoints'}" if kept else "no checkpoint saved yet")
        return SandboxError(f"step {step}: {why}; stopping ({saved}; metrics in "
                            f"{self.out / 'metrics.jsonl'})")
