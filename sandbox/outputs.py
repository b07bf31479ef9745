"""Paths a command will write, checked before any work starts, and the writes
themselves, so that a bad `--out`, `--trace`, `--plot` or a full disk is one
line naming the flag and the path.

- `output_file(path, flag, suffixes)`: a file to (over)write: not empty, not a
  directory, an existing writable parent directory, one of `suffixes`;
- `output_dir(path, flag)`: a folder to write into (created if missing, its
  parent must exist): not empty, not a file;
- `writing(path, flag)`: a context manager turning an OSError while writing
  (no space left, read-only file system) into that one line.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from sandbox.errors import SandboxError

# matplotlib's savefig formats (Figure.canvas.get_supported_filetypes()), no import needed
IMAGE_SUFFIXES = (".png", ".pdf", ".svg", ".svgz", ".jpg", ".jpeg", ".tif", ".tiff", ".webp",
                  ".eps", ".ps", ".gif")


def why(e: BaseException) -> str:
    """A short reason for an OSError or ValueError from the os module."""
    if isinstance(e, OSError):
        if e.errno == errno.ENAMETOOLONG:
            return "the path or one of its names is too long"
        return (e.strerror or e.__class__.__name__).lower()
    if "null" in str(e):
        return "the path holds a NUL byte"
    return str(e) or e.__class__.__name__


def checked_path(path: str | os.PathLike, flag: str) -> Path:
    """`path` as a Path, refused when empty, holding a NUL byte or too long to stat."""
    text = os.fspath(path)
    if not isinstance(text, str) or not text.strip():
        raise SandboxError(f"{flag}: empty path; give a file or folder name")
    if "\0" in text:
        raise SandboxError(f"{flag} {text!r}: the path holds a NUL byte")
    p = Path(text)
    try:
        os.lstat(p)
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as e:
        if not isinstance(e, OSError) or e.errno != errno.ENOTDIR:
            raise SandboxError(f"{flag} {_short(text)}: {why(e)}") from None
    return p


def _short(text: str, n: int = 120) -> str:
    return text if len(text) <= n else f"{text[:n // 2]}...{text[-n // 2:]} ({len(text)} chars)"


def _writable_dir(folder: Path, flag: str, path: Path) -> None:
    """Refuse a missing, non-folder or unwritable `folder` (tried with a temporary file)."""
    if not folder.exists():
        raise SandboxError(f"{flag} {path}: no such directory {folder}")
    if not folder.is_dir():
        raise SandboxError(f"{flag} {path}: {folder} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".sandbox-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise SandboxError(f"{flag} {path}: cannot write in {folder} ({why(e)})") from None


def output_file(path: str | os.PathLike, flag: str, suffixes: Sequence[str] | None = None,
                make_parents: bool = False) -> Path:
    """`path` checked as a file to write (see the module docstring); raises SandboxError.

    make_parents: a missing parent folder is allowed (the caller creates it and
    says so) when its nearest existing ancestor is a writable folder."""
    p = checked_path(path, flag)
    if os.fspath(path).endswith(os.sep) or p.is_dir():
        raise SandboxError(f"{flag} {p}: is a directory; give a file name")
    if p.exists():
        mode = os.stat(p).st_mode
        if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            raise SandboxError(f"{flag} {p}: a pipe or socket, not a file to write")
        if stat.S_ISCHR(mode):
            return p  # a device such as /dev/null: writing there is the user's choice
        if not os.access(p, os.W_OK):
            raise SandboxError(f"{flag} {p}: exists and is not writable")
    if suffixes is not None and p.suffix.lower() not in suffixes:
        got = f"'{p.suffix}'" if p.suffix else "no extension"
        raise SandboxError(f"{flag} {p}: {got}; use one of {', '.join(suffixes)}")
    folder = p.parent
    while make_parents and not folder.exists() and folder != folder.parent:
        folder = folder.parent
    _writable_dir(folder, flag, p)
    return p


def output_dir(path: str | os.PathLike, flag: str) -> Path:
    """`path` checked as a folder to write into; it may exist or its parent must."""
    p = checked_path(path, flag)
    if p.exists():
        if not p.is_dir():
            raise SandboxError(f"{flag} {p}: exists and is not a directory; give a folder")
        _writable_dir(p, flag, p)
    else:
        _writable_dir(p.parent, flag, p)
    return p


@contextmanager
def writing(path: str | os.PathLike, flag: str) -> Iterator[None]:
    """Turn an OSError raised inside (disk full, read-only file system) into one line."""
    try:
        yield
    except OSError as e:
        raise SandboxError(f"{flag} {path}: cannot write ({why(e)})") from None


def check_input_paths(plan: object) -> None:
    """Refuse a plan's `train.data` or `cluster.profile` path holding a NUL byte
    or a name too long, before anything is started."""
    data = getattr(getattr(plan, "train", None), "data", "builtin")
    if data and data != "builtin":
        checked_path(data, "train.data")
    profile = getattr(getattr(plan, "cluster", None), "profile", "")
    if profile:
        checked_path(profile, "cluster.profile")


def save_figure(fig: object, path: str | os.PathLike, flag: str, dpi: int = 110) -> Path:
    """Render a matplotlib Figure in memory, then write it: a full disk or a
    device that refuses bytes is one line naming `path` (savefig alone may
    swallow the error). The format follows the suffix (PNG without one)."""
    import io

    p = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format=p.suffix.lstrip(".").lower() or "png", dpi=dpi)  # type: ignore
    with writing(p, flag), open(p, "wb") as f:
        f.write(buf.getvalue())
    return p
