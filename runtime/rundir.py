"""A run directory is owned: one launch at a time, and a finished run is never overwritten.

`DIR/.lock` holds the owner's host, pid and start time as JSON; it is created
with O_EXCL, so of two launches into one folder exactly one gets it. A lock
whose process is gone (same host, pid not alive) is stale and taken over,
saying so; a lock of another host is never taken (its process cannot be
checked from here): the message names it, and removing the file by hand is
the way out. `sandbox run` takes the lock before it writes anything and
passes it to its workers (`SANDBOX_RUN_LOCK`); `torchrun -m runtime.train`
started by hand takes it on global rank 0.

`holds_run(DIR)` is what every entry point without `--resume` refuses: a
folder with metrics, a summary or checkpoints. `read_metrics` / `trim_metrics`
read and cut back `DIR/metrics.jsonl` (one JSON object per step).

Writing a run's files: a failed write (a full disk, a read-only file system)
is one line naming the path (`writing(path)`, `write_error`), never a bare
"No space left on device"; `save_error` does the same for a checkpoint, whose
writers hide the cause (DCP wraps each rank's exception; torch.save reports a
full disk as "unexpected pos N vs M"); `reserve` sets blocks aside for a log
so that the last lines of a run that filled the disk still reach it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sandbox.errors import SandboxError

LOCK = ".lock"
LOCK_ENV = "SANDBOX_RUN_LOCK"  # the token of the lock a launcher holds for its workers
RUN_FILES = ("metrics.jsonl", "summary.json")


def holds_run(out: Path) -> str | None:
    """What in `out` shows an earlier run (a file name), or None."""
    for name in RUN_FILES:
        if (out / name).exists():
            return name
    ck = out / "checkpoints"
    if ck.is_dir() and any(ck.iterdir()):
        return "checkpoints/"
    return None


def refuse_existing_run(out: Path) -> None:
    """Raise unless `out` is free for a new run (no --resume)."""
    if out.exists() and not out.is_dir():
        raise SandboxError(f"{out}: exists and is not a directory")
    found = holds_run(out) if out.is_dir() else None
    if found:
        raise SandboxError(f"{out}: already holds a run ({found}); use --resume to continue "
                           f"it or choose another --out")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class RunLock:
    """The lock of one run directory (a context manager; `release()` is idempotent)."""

    def __init__(self, out: Path, token: str):
        self.path, self.token = Path(out) / LOCK, token

    @classmethod
    def acquire(cls, out: Path) -> RunLock:
        """Take the lock of `out` (creating the folder), or raise naming its owner."""
        out = Path(out)
        with writing(out):
            out.mkdir(parents=True, exist_ok=True)
        token = f"{socket.gethostname()}:{os.getpid()}:{time.time_ns()}"
        owner = {"host": socket.gethostname(), "pid": os.getpid(),
                 "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "token": token}
        for _ in range(2):  # a second try after removing a stale lock
            try:
                fd = os.open(out / LOCK, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                cls._clear_stale(out)
                continue
            except OSError as e:
                raise write_error(out / LOCK, e) from None
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(owner, f)
            except OSError as e:  # a full disk: no half-written lock left behind
                (out / LOCK).unlink(missing_ok=True)
                raise write_error(out / LOCK, e) from None
            return cls(out, token)
        raise SandboxError(f"{out}: could not take the run lock")

    @staticmethod
    def _clear_stale(out: Path) -> None:
        path = out / LOCK
        try:
            held = json.loads(path.read_text())
            host, pid = str(held["host"]), int(held["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            raise SandboxError(f"{path}: unreadable run lock; if no run uses {out}, "
                               "remove it") from None
        if host != socket.gethostname():
            raise SandboxError(f"{out}: in use by pid {pid} on {host} (since "
                               f"{held.get('started', '?')}); if that run is gone, remove "
                               f"{path}")
        if _alive(pid):
            raise SandboxError(f"{out}: in use by a run (pid {pid}, since "
                               f"{held.get('started', '?')}); wait for it or choose another "
                               "--out")
        print(f"note: {path}: stale lock of pid {pid} (no longer running) taken over",
              flush=True)
        path.unlink(missing_ok=True)

    @classmethod
    def held_by_launcher(cls, out: Path) -> RunLock | None:
        """The lock a launcher took for this worker (its token in the environment)."""
        token = os.environ.get(LOCK_ENV)
        if not token:
            return None
        try:
            held = json.loads((Path(out) / LOCK).read_text())
        except (OSError, ValueError):
            return None
        return cls(out, token) if held.get("token") == token else None

    def release(self) -> None:
        """Remove the lock if it is still ours."""
        try:
            if json.loads(self.path.read_text()).get("token") == self.token:
                self.path.unlink()
        except (OSError, ValueError):
            pass

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The metrics.jsonl lines that parse (a torn last line is skipped)."""
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def trim_metrics(path: Path, last_step: int) -> None:
    """Keep only metrics lines with step <= last_step (atomic rewrite)."""
    rows = [r for r in read_metrics(path) if r.get("step", 0) <= last_step]
    tmp = path.with_suffix(".jsonl.tmp")
    try:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise write_error(path, e) from None


FULL_BYTES = 1 << 20  # a file system with less free space than this is taken as full
FALLOC_FL_KEEP_SIZE = 1  # fallocate(2): allocate blocks without changing the file size


def _reason(why: str, full: bool) -> str:
    return f"{why}; free some space or choose another --out" if full else why


def write_error(path: str | Path, e: OSError) -> SandboxError:
    """The one-line error of a failed write to `path`."""
    why = e.strerror or e.__class__.__name__
    return SandboxError(f"{path}: cannot write ({_reason(why, e.errno == errno.ENOSPC)})")


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Turn an OSError in the block into `write_error(path, ...)`."""
    try:
        yield
    except OSError as e:
        raise write_error(path, e) from None


def write_all(f: object, data: bytes) -> None:
    """Write every byte to the unbuffered file `f` (open(..., "ab", buffering=0)):
    nothing is left in a buffer for a close to fail on; OSError on failure."""
    view = memoryview(data)
    while view:
        view = view[os.write(f.fileno(), view):]


def _oserror_in(e: BaseException) -> OSError | None:
    if isinstance(e, OSError):
        return e
    for failure in getattr(e, "failures", {}).values():  # DCP's CheckpointException
        inner = failure[0] if isinstance(failure, tuple) else failure
        if isinstance(inner, OSError):
            return inner
    cause = e.__cause__ or e.__context__
    return _oserror_in(cause) if cause is not None else None


def free_bytes(path: str | Path) -> int | None:
    """Free bytes of the file system holding `path` (or its nearest existing parent)."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def save_error(path: str | Path, e: BaseException) -> SandboxError:
    """The one-line error of a failed save into `path` (call it before freeing space)."""
    if (os_error := _oserror_in(e)) is not None:
        return write_error(path, os_error)
    free = free_bytes(path)
    if free is not None and free < FULL_BYTES:
        return SandboxError(f"{path}: cannot write (No space left on device: {free:,} bytes "
                            f"free); free some space or choose another --out")
    first = (str(e).strip().splitlines() or [e.__class__.__name__])[0][:200]
    return SandboxError(f"{path}: cannot write ({first})")


def reserve(f: object, nbytes: int) -> None:
    """Set `nbytes` of blocks aside past the end of the open file `f` (Linux
    fallocate with KEEP_SIZE; nothing elsewhere). Writes into them cannot fail
    for want of space; `os.ftruncate(fd, size)` gives back what is unused."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.fallocate(f.fileno(), FALLOC_FL_KEEP_SIZE,
                       ctypes.c_long(os.fstat(f.fileno()).st_size), ctypes.c_long(nbytes))
    except (OSError, AttributeError, ValueError):
        pass


def release_reserve(f: object) -> None:
    """Give back the blocks `reserve` set aside beyond what was written."""
    try:
        f.flush()
        size = os.fstat(f.fileno()).st_size
        os.ftruncate(f.fileno(), size + 1)  # growing then shrinking frees what lies past
        os.ftruncate(f.fileno(), size)  # the end (a same-size truncate may keep it)
    except (OSError, ValueError):
        pass
