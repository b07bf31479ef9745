"""Checkpoints with torch.distributed.checkpoint (DCP), safe against half writes.

Layout of a run directory's checkpoints:

    DIR/checkpoints/step_00000012/      a complete checkpoint after 12 steps
        .metadata, __0_0.distcp, ...    DCP files: {"model": ..., "optim": ...}
        rng_rank0.pt, rng_rank1.pt ...  each rank's RNG states (torch.save)
        meta.json                       step, scheduler state, world size, plan name
        COMPLETE                        written last, by rank 0, after a barrier
    DIR/checkpoints/.tmp_step_00000018/ being written (never taken for complete)

All ranks write into `.tmp_step_N`; after a barrier rank 0 writes meta.json
and COMPLETE and renames the folder to `step_N`, so a folder named `step_*`
with a COMPLETE file is always whole. Model keys are the unsharded GPT FQNs
(`layers.3.attention.wq.weight`), whatever the layout: DCP reshards on load,
and `load_full_model_state` reads any layout back in one process.
"""

from __future__ import annotations

import collections
import io
import json
import logging
import os
import pathlib
import pickle
import random
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.distributed.checkpoint.filesystem as dcp_fs
import torch.distributed.checkpoint.metadata as dcp_md
from torch import nn
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_state_dict,
)

from runtime.rundir import save_error
from sandbox.errors import SandboxError

COMPLETE = "COMPLETE"
META = "meta.json"
# optimizer state keyed by parameter FQN ("state.layers.0....exp_avg",
# "param_groups.layers.0....lr"): the same keys in every layout, so ranks owning
# different parameters (pipeline stages) never collide in DCP and any layout loads
OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)


def step_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:08d}"


def _step_of(path: Path) -> int:
    try:
        return int(path.name.split("_")[-1])
    except ValueError:
        return -1


def latest_complete(run_dir: str | Path) -> Path | None:
    """The newest `checkpoints/step_*` folder with a COMPLETE marker, or None."""
    done = complete_checkpoints(run_dir)
    return done[0] if done else None


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Every `checkpoints/step_*` folder with a COMPLETE marker, newest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.glob("step_*") if p.is_dir() and (p / COMPLETE).is_file()
            and _step_of(p) >= 0]
    return sorted(done, key=_step_of, reverse=True)


def newest_intact(run_dir: str | Path) -> tuple[Path | None, list[str]]:
    """The newest complete checkpoint that verifies, and one line per newer one
    that does not (why it was passed over). Nothing is changed or deleted."""
    skipped = []
    for ck in complete_checkpoints(run_dir):
        try:
            verify(ck)
            return ck, skipped
        except SandboxError as e:
            skipped.append(str(e).splitlines()[0])
    return None, skipped


def set_aside(run_dir: str | Path, kept: Path | None) -> list[Path]:
    """Rename the complete checkpoints newer than `kept` (the ones a resume
    passed over as corrupt) to `corrupt_step_N`: never deleted, and out of the
    way of the saves that will write those steps again. Returns the new paths."""
    floor = _step_of(kept) if kept is not None else -1
    moved = []
    for ck in complete_checkpoints(run_dir):
        if _step_of(ck) > floor:
            target = ck.with_name(f"corrupt_{ck.name}")
            n = 1
            while target.exists():
                target, n = ck.with_name(f"corrupt_{ck.name}.{n}"), n + 1
            os.replace(ck, target)
            moved.append(target)
    return moved


def read_meta(ckpt_dir: str | Path) -> dict[str, Any]:
    """meta.json of a complete checkpoint (step, scheduler, world_size, ...)."""
    path = Path(ckpt_dir) / META
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SandboxError(f"{path}: corrupt checkpoint ({e.__class__.__name__})") from None


@contextmanager
def _quiet():
    """DCP logs whole tracebacks of a bad file before raising; keep one line."""
    logs = [logging.getLogger(), logging.getLogger("torch.distributed")]
    levels = [log.level for log in logs]
    for log in logs:
        log.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for log, level in zip(logs, levels, strict=True):
            log.setLevel(level)


def _allowed(module: str, name: str) -> Any:
    """What a DCP `.metadata` pickle may name, or None: DCP's own metadata
    types, torch.Size, dtypes and layouts, and paths (all `dcp.save` writes)."""
    if module == dcp_md.__name__:
        obj = getattr(dcp_md, name, None)
        return obj if isinstance(obj, type) else None
    if (module, name) == (dcp_fs.__name__, "_StorageInfo"):
        return dcp_fs._StorageInfo
    if module == "torch":
        obj = getattr(torch, name, None)
        return obj if obj is torch.Size or isinstance(obj, torch.dtype) else None
    if (module, name) == ("torch.serialization", "_get_layout"):
        return torch.serialization._get_layout
    if module == "pathlib" and name in ("Path", "PosixPath", "WindowsPath", "PurePosixPath",
                                        "PureWindowsPath"):
        return getattr(pathlib, name)
    if (module, name) == ("collections", "OrderedDict"):
        return collections.OrderedDict
    return None


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP metadata and nothing else: any other global is refused, so a
    planted `__reduce__` cannot run code (DCP's own reader uses plain pickle)."""

    def find_class(self, module: str, name: str) -> Any:
        obj = _allowed(module, name)
        if obj is None:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in DCP metadata")
        return obj


class SafeReader(FileSystemReader):
    """DCP's FileSystemReader with `.metadata` read by the allow-list unpickler;
    every DCP load in the sandbox goes through it."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> dcp_md.Metadata:
        path = self._get_metadata_path(kwargs.get("rank"))
        with self.fs.create_stream(path, "rb") as f:
            md = _MetadataUnpickler(io.BytesIO(f.read())).load()
        if not isinstance(md, dcp_md.Metadata):
            raise pickle.UnpicklingError("DCP metadata is not a Metadata object")
        if getattr(md, "storage_meta", None) is None:
            md.storage_meta = dcp_md.StorageMeta()
        md.storage_meta.load_id = self.load_id
        return md


def _check_storage(ckpt_dir: Path) -> Any:
    """DCP metadata (read safely), every .distcp file at least as long as the
    data it indexes (catches truncated and missing shards without reading
    tensors), and the RNG files loadable as plain tensors."""
    if not (ckpt_dir / ".metadata").is_file():
        raise SandboxError(f"{ckpt_dir}: corrupt checkpoint (no .metadata)")
    try:
        with _quiet():
            md = SafeReader(str(ckpt_dir)).read_metadata()
    except Exception as e:  # noqa: BLE001 - any unreadable metadata is a corrupt checkpoint
        raise SandboxError(f"{ckpt_dir}: corrupt checkpoint (unreadable .metadata: "
                           f"{e.__class__.__name__})") from None
    ends: dict[str, int] = {}
    for info in (md.storage_data or {}).values():
        name = info.relative_path
        ends[name] = max(ends.get(name, 0), info.offset + info.length)
    for name, end in ends.items():
        path = ckpt_dir / name
        size = path.stat().st_size if path.is_file() else -1
        if size < end:
            what = "missing" if size < 0 else f"truncated ({size} of {end} bytes)"
            raise SandboxError(f"{path}: corrupt checkpoint ({what})")
    for rng in sorted(ckpt_dir.glob("rng_rank*.pt")):
        _load_rng(rng)
    return md


def _load_rng(path: Path) -> dict[str, Any]:
    """A rank's RNG states: tensors and plain values only (`weights_only=True`)."""
    try:
        state = torch.load(path, weights_only=True)
        if not isinstance(state, dict) or "torch" not in state:
            raise ValueError("not an RNG state")
        return state
    except Exception as e:  # noqa: BLE001 - a refused or unreadable file is corruption
        raise SandboxError(f"{path}: corrupt checkpoint (unreadable RNG state: "
                           f"{e.__class__.__name__})") from None


def verify(ckpt_dir: str | Path) -> dict[str, Any]:
    """Check a checkpoint without loading tensors: meta.json, DCP metadata and
    shard sizes. Returns meta.json; raises SandboxError (one line) on a problem."""
    ckpt_dir = Path(ckpt_dir)
    meta = read_meta(ckpt_dir)
    _check_storage(ckpt_dir)
    return meta


def _module_view(parts: list[nn.Module]) -> nn.Module:
    """One module whose parameter names are the GPT FQNs of all parts this rank
    owns (unwrapping DDP), so state dicts do not depend on the layout."""
    mods = [p.module if isinstance(p, nn.parallel.DistributedDataParallel) else p
            for p in parts]
    if len(mods) == 1:
        return mods[0]
    view = nn.Module()
    layers = nn.ModuleDict()
    for m in mods:
        for name, child in m.named_children():
            if name == "layers":
                for k, block in child.items():
                    layers[k] = block
            elif child is not None:
                setattr(view, name, child)
    view.layers = layers
    return view


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "random": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["random"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def save(run_dir: str | Path, step: int, parts: list[nn.Module],
         optimizer: torch.optim.Optimizer, scheduler: Any = None,
         extra: dict[str, Any] | None = None) -> Path:
    """Collectively save model, optimizer, scheduler, step and RNG after `step`
    steps; returns the complete checkpoint folder. Every rank must call it. A failed
    write (a full disk) raises SandboxError naming the folder (removed: space back)."""
    final = step_dir(run_dir, step)
    tmp = final.with_name(f".tmp_{final.name}")
    rank = _rank()
    try:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)  # a leftover of a killed save
            tmp.mkdir(parents=True)
        _barrier()
        model_sd, optim_sd = get_state_dict(_module_view(parts), optimizer, options=OPTIONS)
        with _quiet():
            dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp))
        torch.save(_rng_state(), tmp / f"rng_rank{rank}.pt")
        _barrier()
        if rank == 0:
            meta = {"step": step, "world_size": dist.get_world_size() if dist.is_initialized()
                    else 1, "scheduler": scheduler.state_dict() if scheduler is not None
                    else None, "torch": torch.__version__, **(extra or {})}
            (tmp / META).write_text(json.dumps(meta, indent=1))
            with open(tmp / COMPLETE, "w") as f:
                f.write(f"{step}\n")
                f.flush()
                os.fsync(f.fileno())
            if final.exists():  # an older save of the same step (e.g. before a restart)
                shutil.rmtree(final)
            os.replace(tmp, final)
    except (OSError, RuntimeError, CheckpointException) as e:  # DCP wraps each rank's error
        error = save_error(tmp, e)  # before freeing the space: a full disk shows
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise error from None
    _barrier()
    return final


def _tied_aliases(state: dict[str, Any], saved: set[str]) -> dict[str, Any]:
    """Read a pipeline stage's own copy of a tied head (`output.weight`) from
    the embedding's entries when the checkpoint has none for it (written
    without pipeline parallelism, where the optimizer knows the shared
    parameter by its first name only). Same tensors, renamed keys."""
    out: dict[str, Any] = {}
    for section, sub in state.items():
        renamed = {}
        for key, value in sub.items():
            alias = key.replace("output.weight", "tok_embeddings.weight")
            if (f"{section}.{key}" not in saved and alias != key
                    and f"{section}.{alias}" in saved and alias not in sub):
                key = alias
            renamed[key] = value
        out[section] = renamed
    return out


def load(ckpt_dir: str | Path, parts: list[nn.Module], optimizer: torch.optim.Optimizer,
         scheduler: Any = None) -> dict[str, Any]:
    """Collectively restore what `save` wrote (resharding to this layout).
    Returns meta.json (its "step" is where training continues). A corrupt or
    mismatching checkpoint raises SandboxError; nothing is deleted."""
    ckpt_dir = Path(ckpt_dir)
    meta = verify(ckpt_dir)
    view = _module_view(parts)
    model_sd, optim_sd = get_state_dict(view, optimizer, options=OPTIONS)
    state = {"model": model_sd, "optim": optim_sd}
    try:
        with _quiet():
            saved = set(_check_storage(ckpt_dir).state_dict_metadata)
            aliased = _tied_aliases(state, saved)
            dcp.load(aliased, storage_reader=SafeReader(str(ckpt_dir)))
            for section, sub in state.items():  # non-tensor values are replaced, not copied
                names = _tied_aliases({section: {k: k for k in sub}}, saved)[section]
                for new_key, key in names.items():
                    sub[key] = aliased[section][new_key]
        set_state_dict(view, optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optim"], options=OPTIONS)
    except BaseException as e:  # DCP's CheckpointException is a BaseException
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        first = (str(e).strip().splitlines() or [""])[-1][:160]
        raise SandboxError(f"{ckpt_dir}: cannot load checkpoint ({e.__class__.__name__}: "
                           f"{first})") from None
    if scheduler is not None and meta.get("scheduler"):
        scheduler.load_state_dict(meta["scheduler"])
    rng = ckpt_dir / f"rng_rank{_rank()}.pt"
    if rng.is_file() and meta.get("world_size") == (dist.get_world_size()
                                                    if dist.is_initialized() else 1):
        _set_rng_state(_load_rng(rng))
    return meta


def load_full_model_state(ckpt_dir: str | Path) -> dict[str, torch.Tensor]:
    """The model weights of a checkpoint of any layout as one unsharded state
    dict (GPT FQNs -> CPU tensors), in a single process with no process group.
    Raises SandboxError (one line) on a corrupt checkpoint."""
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

    ckpt_dir = Path(ckpt_dir)
    md = _check_storage(ckpt_dir)
    try:
        with _quiet():
            keys = {k for k in md.state_dict_metadata if k.startswith("model.")}
            if not keys:
                raise SandboxError(f"{ckpt_dir}: checkpoint holds no model weights")
            state = _load_state_dict_from_keys(keys, storage_reader=SafeReader(str(ckpt_dir)))
    except SandboxError:
        raise
    except BaseException as e:
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        first = (str(e).strip().splitlines() or [""])[-1][:160]
        raise SandboxError(f"{ckpt_dir}: corrupt checkpoint ({e.__class__.__name__}: "
                           f"{first})") from None
    model = state.get("model", state)
    if not isinstance(model, dict) or not model:
        raise SandboxError(f"{ckpt_dir}: checkpoint holds no model weights")
    return {k.removeprefix("model."): v for k, v in model.items()}
