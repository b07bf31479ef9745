"""Trained run directories for export tests, made in this process in seconds.

A stand-in for `sandbox run` (which starts torchrun): the same layout,
`plan.toml` and `checkpoints/step_%08d/` with single-process DCP files and a
`COMPLETE` marker, which `runtime.export.source.load_run` reads like any run.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
import torch.nn.functional as F

import sandbox
from runtime.export.distill import TrainLog, train_loop
from runtime.export.source import train_batches
from runtime.model import GPT, build_model
from sandbox.specs import Plan


def train_ce(model: GPT, batches: Iterator[torch.Tensor], steps: int,
             lr: float = 1e-3) -> TrainLog:
    """Next-token cross-entropy training on (batch, seq + 1) windows (the
    distillation's loop and learning-rate schedule)."""

    def loss_fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = model(x)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    return train_loop(model, batches, steps, lr, loss_fn)


def save_run(run_dir: str | Path, plan: Plan, model: GPT, step: int) -> Path:
    """Write a single-process run directory (plan + one DCP checkpoint)."""
    run_dir = Path(run_dir)
    ckpt = run_dir / "checkpoints" / f"step_{step:08d}"
    ckpt.mkdir(parents=True, exist_ok=True)
    (run_dir / "plan.toml").write_text(plan.to_toml())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # single process: no process group is expected
        dcp.save({"model": model.state_dict()}, checkpoint_id=str(ckpt))
    (ckpt / "COMPLETE").write_text(f"{step}\n")
    return ckpt


def train_run(run_dir: str | Path, model_preset: str, steps: int, batch: int = 8,
              lr: float = 1e-3, seed: int = 0, **model_fields) -> TrainLog:
    """Train a preset for `steps` steps of (`batch`, context) tokens in this
    process (fp32, CPU) and save it as a run directory."""
    plan = sandbox.load({"model": {"preset": model_preset, **model_fields},
                         "train": {"steps": steps, "seed": seed, "lr": lr,
                                   "precision": "fp32"}})
    torch.manual_seed(seed)
    model = build_model(plan.model, seed=seed)
    log = train_ce(model, train_batches(batch, plan.model.seq_len, seed), steps, lr)
    save_run(run_dir, plan, model, steps)
    return log
