"""Knowledge distillation of a pruned student from its unpruned teacher.

`train_loop` is the small single-process loop it runs: fp32 on CPU, AdamW
(weight decay 0.01), gradient clipping at norm 1, and the training
learning-rate schedule (`runtime.lr`, cosine) with a warm-up of
max(1, steps // 20) steps, decaying to 0.1 x lr.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from runtime.lr import lr_at
from runtime.model import GPT
from sandbox.specs import Train

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (inputs, targets) -> loss
MIN_LR_RATIO = 0.1  # the cosine decays to lr * MIN_LR_RATIO
WEIGHT_DECAY = 0.01
GRAD_CLIP = 1.0  # max global gradient norm


@dataclass
class TrainLog:
    """What a loop did: steps, first and last loss, wall time in seconds."""

    steps: int
    first_loss: float
    last_loss: float
    wall_s: float

    def to_dict(self) -> dict:
        return {"steps": self.steps, "first_loss": self.first_loss,
                "last_loss": self.last_loss, "wall_s": self.wall_s}


def schedule(steps: int, lr: float) -> Train:
    """The `train` settings whose `runtime.lr.lr_at` schedule the loop follows."""
    return Train(lr=lr, lr_schedule="cosine", warmup_steps=max(1, steps // 20),
                 min_lr_ratio=MIN_LR_RATIO, steps=steps)


def train_loop(model: GPT, batches: Iterator[torch.Tensor], steps: int, lr: float,
               loss_fn: LossFn) -> TrainLog:
    """`steps` optimizer steps of `loss_fn(batch[:, :-1], batch[:, 1:])` on
    (batch, seq + 1) token windows; leaves the model in eval mode."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=WEIGHT_DECAY)
    train = schedule(steps, lr)
    first = last = float("nan")
    t0 = time.perf_counter()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, train)
        batch = next(batches)
        loss = loss_fn(batch[:, :-1], batch[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        opt.step()
        last = loss.item()
        first = last if step == 0 else first
    model.eval()
    return TrainLog(steps, first, last, time.perf_counter() - t0)


def distill(student: GPT, teacher: GPT, batches: Iterator[torch.Tensor], steps: int,
            lr: float = 5e-4, temperature: float = 2.0, ce_weight: float = 0.1) -> TrainLog:
    """Knowledge distillation: KL(teacher || student) on logits softened by
    `temperature` (scaled by T^2, Hinton et al. 2015) plus `ce_weight` times
    the next-token cross-entropy on the data."""
    teacher.eval()
    t = temperature

    def loss_fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = F.log_softmax(teacher(x) / t, dim=-1)
        logits = student(x)
        v = logits.shape[-1]
        kl = F.kl_div(F.log_softmax(logits / t, dim=-1).reshape(-1, v), target.reshape(-1, v),
                      log_target=True, reduction="batchmean") * t * t
        if ce_weight:
            kl = kl + ce_weight * F.cross_entropy(logits.reshape(-1, v), y.reshape(-1))
        return kl

    return train_loop(student, batches, steps, lr, loss_fn)
