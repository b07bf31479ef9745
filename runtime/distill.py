"""Small single-process training loops used by export: knowledge distillation
of a pruned student from its unpruned teacher, and plain next-token training
(for test fixtures and benchmarks when no `sandbox run` output is at hand).

Both run in fp32 on CPU with AdamW and a cosine learning rate after a short
warm-up.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from runtime.model import GPT


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


def _lr(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def _loop(model: GPT, batches: Iterator[torch.Tensor], steps: int, lr: float,
          loss_fn) -> TrainLog:
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 20)
    first = last = float("nan")
    t0 = time.perf_counter()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = _lr(step, steps, lr, warmup)
        batch = next(batches)
        loss = loss_fn(batch[:, :-1], batch[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        last = loss.item()
        first = last if step == 0 else first
    model.eval()
    return TrainLog(steps, first, last, time.perf_counter() - t0)


def train_ce(model: GPT, batches: Iterator[torch.Tensor], steps: int,
             lr: float = 1e-3) -> TrainLog:
    """Next-token cross-entropy training on (batch, seq + 1) windows."""

    def loss_fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = model(x)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    return _loop(model, batches, steps, lr, loss_fn)


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

    return _loop(student, batches, steps, lr, loss_fn)


def train_run(run_dir, model_preset: str, steps: int, batch: int = 8, lr: float = 1e-3,
              seed: int = 0, **model_fields) -> TrainLog:
    """Train a preset briefly in this process and save it as a run directory.

    A stand-in for `sandbox run` in tests and benchmarks: same layout
    (plan.toml, checkpoints/step_N/ with DCP files and COMPLETE).
    """
    import sandbox
    from runtime import export_source as src
    from runtime.model import build_model

    plan = sandbox.load({"model": {"preset": model_preset, **model_fields},
                         "train": {"steps": steps, "seed": seed, "lr": lr,
                                   "precision": "fp32"}})
    torch.manual_seed(seed)
    model = build_model(plan.model, seed=seed)
    log = train_ce(model, src.train_batches(batch, plan.model.seq_len, seed), steps, lr)
    src.save_run(run_dir, plan, model, steps)
    return log
