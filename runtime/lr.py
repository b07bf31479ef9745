"""Learning-rate schedules (`train.lr_schedule`).

- `cosine`: linear warmup from lr/warmup_steps to lr over `warmup_steps`
  steps, then cosine decay to `lr * min_lr_ratio` at step `steps`;
- `constant`: lr at every step.

`step` is the 0-based index of the optimizer step about to be taken.
"""

from __future__ import annotations

import math

import torch

from sandbox.specs import Train


def lr_at(step: int, train: Train) -> float:
    """Learning rate of the optimizer step `step` (0-based)."""
    lr = train.lr
    if train.lr_schedule == "constant":
        return lr
    if train.lr_schedule != "cosine":
        raise ValueError(f"train.lr_schedule: unknown value {train.lr_schedule!r}")
    warmup = min(train.warmup_steps, max(train.steps - 1, 0))
    if step < warmup:
        return lr * (step + 1) / warmup
    low = lr * train.min_lr_ratio
    progress = min(1.0, (step - warmup) / max(1, train.steps - warmup))
    return low + (lr - low) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer,
                    train: Train) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR following `lr_at`; its state (last_epoch) is the step count."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_at(step, train) / train.lr)
