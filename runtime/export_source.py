"""Where export gets its inputs: a run directory's plan and weights, and data.

This is the one adapter between export and the training side of the
runtime. A run directory holds `plan.toml` and `checkpoints/step_%08d/`
(torch.distributed.checkpoint files plus a `COMPLETE` marker). When
`runtime.checkpoint` (`latest_complete`, `load_full_model_state`) and
`runtime.data` are present they are used; otherwise the fallbacks here read
single-process DCP checkpoints holding ``{"model": state_dict}`` and use a
byte-level corpus of this Python's standard library sources.

Every problem with the user's input becomes a `SandboxError` (one line).
"""

from __future__ import annotations

import functools
import importlib
import logging
import sysconfig
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from runtime.model import GPT, build_model
from sandbox.errors import SandboxError
from sandbox.specs import Plan

CORPUS_BYTES = 4_000_000  # fallback corpus size, bytes
HELDOUT_FRACTION = 0.05  # last 5% of the fallback corpus is held out


@dataclass
class LoadedRun:
    """A trained run: its plan, the newest complete checkpoint and the model."""

    run_dir: Path
    plan: Plan
    checkpoint: Path
    model: GPT


@functools.cache
def _optional(name: str):
    """The module if it exists (decided once per process, so that one export
    never mixes the fallbacks with the real implementations)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name != name:
            raise
        return None


def latest_complete(run_dir: Path) -> Path | None:
    """Newest `checkpoints/step_*` folder with a COMPLETE marker, or None."""
    ck = _optional("runtime.checkpoint")
    if ck is not None and hasattr(ck, "latest_complete"):
        found = ck.latest_complete(run_dir)
        return Path(found) if found is not None else None
    steps = sorted(p for p in (run_dir / "checkpoints").glob("step_*")
                   if p.is_dir() and (p / "COMPLETE").exists())
    return steps[-1] if steps else None


def load_model_state(ckpt_dir: Path, model: GPT) -> dict[str, torch.Tensor]:
    """Unsharded model weights (GPT FQNs) from a checkpoint of any layout."""
    ck = _optional("runtime.checkpoint")
    if ck is not None and hasattr(ck, "load_full_model_state"):
        return ck.load_full_model_state(ckpt_dir)
    import torch.distributed.checkpoint as dcp

    state = {"model": model.state_dict()}
    logs = [logging.getLogger(), logging.getLogger("torch.distributed")]
    levels = [log.level for log in logs]
    for log in logs:  # DCP logs tracebacks of a bad file (on the root logger) before raising
        log.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # single process: no process group is expected
            dcp.load(state, checkpoint_id=str(ckpt_dir))
    finally:
        for log, level in zip(logs, levels, strict=True):
            log.setLevel(level)
    return state["model"]


def load_run(run_dir: str | Path) -> LoadedRun:
    """Read a run directory into one unsharded fp32 GPT on CPU (eval mode)."""
    import sandbox

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SandboxError(f"{run_dir}: no such run directory")
    plan_path = run_dir / "plan.toml"
    if not plan_path.is_file():
        raise SandboxError(f"{run_dir}: not a run directory (no plan.toml)")
    plan = sandbox.load(plan_path)
    ckpt = latest_complete(run_dir)
    if ckpt is None:
        raise SandboxError(f"{run_dir}: no complete checkpoint under checkpoints/")
    model = build_model(plan.model, seed=plan.train.seed)
    try:
        state = load_model_state(ckpt, model)
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
    return LoadedRun(run_dir, plan, ckpt, model.float().eval())


def save_run(run_dir: str | Path, plan: Plan, model: GPT, step: int) -> Path:
    """Write a single-process run directory (plan + one DCP checkpoint).

    For tests and benchmarks when no `sandbox run` output is at hand.
    """
    import torch.distributed.checkpoint as dcp

    run_dir = Path(run_dir)
    ckpt = run_dir / "checkpoints" / f"step_{step:08d}"
    ckpt.mkdir(parents=True, exist_ok=True)
    (run_dir / "plan.toml").write_text(plan.to_toml())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"model": model.state_dict()}, checkpoint_id=str(ckpt))
    (ckpt / "COMPLETE").write_text(f"{step}\n")
    return ckpt


# ------------------------------------------------------------------ data
def _stdlib_corpus(limit: int = CORPUS_BYTES) -> bytes:
    """Deterministic bytes of the standard library's .py sources."""
    root = Path(sysconfig.get_paths()["stdlib"])
    chunks, total = [], 0
    for path in sorted(root.glob("*.py")) + sorted(root.glob("*/*.py")):
        if "test" in path.parts or "site-packages" in path.parts:
            continue
        data = path.read_bytes()
        chunks.append(data)
        total += len(data)
        if total >= limit:
            break
    return b"".join(chunks)[:limit]


_CORPUS: dict[str, torch.Tensor] = {}


def token_split(split: str, source: str = "builtin", seq_len: int = 0) -> torch.Tensor:
    """The corpus split ("train" or "heldout") as a 1-D int64 tensor of byte ids.

    `source` is the plan's `train.data`; the fallback knows only "builtin".
    """
    data = _optional("runtime.data")
    if data is not None and hasattr(data, "token_split"):
        return data.token_split(split, source, seq_len)
    if source != "builtin":
        raise SandboxError(f"{source}: only the builtin corpus is available (train.data)")
    if "all" not in _CORPUS:
        _CORPUS["all"] = torch.frombuffer(bytearray(_stdlib_corpus()), dtype=torch.uint8).long()
    allt = _CORPUS["all"]
    cut = int(len(allt) * (1 - HELDOUT_FRACTION))
    return allt[:cut] if split == "train" else allt[cut:]


def heldout_batches(batch: int, seq: int, n_batches: int,
                    source: str = "builtin") -> list[torch.Tensor]:
    """`n_batches` consecutive, non-overlapping (batch, seq) windows of held-out data."""
    toks = token_split("heldout", source, seq)
    need = batch * seq
    if len(toks) < need * n_batches:
        raise SandboxError(f"held-out split too small for {n_batches} batches of {batch}x{seq}")
    return [toks[i * need:(i + 1) * need].view(batch, seq) for i in range(n_batches)]


def train_batches(batch: int, seq: int, seed: int = 0,
                  source: str = "builtin") -> Iterator[torch.Tensor]:
    """Endless random (batch, seq + 1) windows of the training split."""
    toks = token_split("train", source, seq)
    gen = torch.Generator().manual_seed(seed)
    while True:
        starts = torch.randint(0, len(toks) - seq - 1, (batch,), generator=gen)
        yield torch.stack([toks[s:s + seq + 1] for s in starts.tolist()])
