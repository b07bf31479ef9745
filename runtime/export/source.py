"""Where export gets its inputs: a run directory's plan and weights, and data.

This is the one adapter between export and the training side of the
runtime. A run directory holds `plan.toml` and `checkpoints/step_%08d/`
(torch.distributed.checkpoint files of any parallel layout plus a `COMPLETE`
marker), read with `runtime.checkpoint`; the token batches come from the
plan's `train.data` through `runtime.data.loader`.

Every problem with the user's input becomes a `SandboxError` (one line).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

import sandbox
from runtime import checkpoint
from runtime.data import loader as data
from runtime.model import GPT, build_model
from sandbox.errors import SandboxError
from sandbox.specs import Plan


@dataclass
class LoadedRun:
    """A trained run: its plan, the newest complete checkpoint and the model."""

    run_dir: Path
    plan: Plan
    checkpoint: Path
    model: GPT
    tokenizer: Path | None = None  # the run's tokenizer.json (None: byte-level data)


def load_run(run_dir: str | Path) -> LoadedRun:
    """Read a run directory into one unsharded fp32 GPT on CPU (eval mode)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SandboxError(f"{run_dir}: no such run directory")
    plan_path = run_dir / "plan.toml"
    if not plan_path.is_file():
        raise SandboxError(f"{run_dir}: not a run directory (no plan.toml)")
    plan = sandbox.load(plan_path)
    ckpt = checkpoint.latest_complete(run_dir)
    if ckpt is None:
        raise SandboxError(f"{run_dir}: no complete checkpoint under checkpoints/")
    model = build_model(plan.model, seed=plan.train.seed)
    try:
        state = checkpoint.load_full_model_state(ckpt)
        missing, unexpected = model.load_state_dict(state, strict=False)
    except SandboxError:
        raise
    except (Exception, BaseException) as e:  # DCP's CheckpointException is a BaseException
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        first = str(e).strip().splitlines()[-1][:160] if str(e).strip() else ""
        raise SandboxError(f"{ckpt}: corrupt checkpoint ({e.__class__.__name__}: "
                           f"{first})") from None
    missing = [k for k in missing if not k.endswith("output.weight") or not
               plan.model.tied_embeddings]
    if missing or unexpected:
        raise SandboxError(f"{ckpt}: checkpoint does not match the plan's model "
                           f"(missing {len(missing)}, unexpected {len(unexpected)} tensors)")
    tok = run_dir / "tokenizer.json"
    return LoadedRun(run_dir, plan, ckpt, model.float().eval(), tok if tok.is_file() else None)


def heldout_batches(batch: int, seq: int, n_batches: int,
                    source: str = "builtin") -> list[torch.Tensor]:
    """`n_batches` consecutive, non-overlapping (batch, seq) windows of held-out data."""
    view = data.split_view("heldout", source, seq)
    need = batch * seq
    if len(view) < need * n_batches:
        raise SandboxError(f"held-out split too small for {n_batches} batches of {batch}x{seq}")
    toks = view.read(0, need * n_batches)
    return [toks[i * need:(i + 1) * need].view(batch, seq) for i in range(n_batches)]


def train_batches(batch: int, seq: int, seed: int = 0,
                  source: str = "builtin") -> Iterator[torch.Tensor]:
    """Endless random (batch, seq + 1) windows of the training split."""
    view = data.split_view("train", source, seq)
    gen = torch.Generator().manual_seed(seed)
    while True:
        starts = torch.randint(0, len(view) - seq - 1, (batch,), generator=gen)
        yield view.windows(starts, seq + 1)
