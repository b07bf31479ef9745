"""Reading a file a user hands us: a regular file, under a size limit, as text.

A plan path may be a FIFO (reading blocks forever), /dev/zero (endless) or a
multi-gigabyte file; each is refused with one line before anything is read.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from sandbox.errors import SandboxError

PLAN_FILE_LIMIT = 1 << 20  # bytes: the largest plan or profile TOML we read


def regular_file_size(path: str | Path, what: str = "file") -> int:
    """Bytes of `path`, refused with one line unless it is a regular file (a FIFO
    blocks a reader forever, /dev/zero never ends: neither is opened)."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise SandboxError(f"{path}: no such {what}") from None
    except OSError as e:
        raise SandboxError(f"{path}: cannot read ({e.strerror or e.__class__.__name__})") \
            from None
    if stat.S_ISDIR(st.st_mode):
        raise SandboxError(f"{path}: is a directory, not a {what}")
    if not stat.S_ISREG(st.st_mode):
        raise SandboxError(f"{path}: not a regular file (a pipe, device or socket), "
                           f"not a {what}")
    return st.st_size


def read_text_file(path: str | Path, what: str = "file",
                   limit: int = PLAN_FILE_LIMIT) -> str:
    """The UTF-8 text of `path`, refused unless it is a regular file of at most `limit` bytes."""
    path = Path(path)
    size = regular_file_size(path, what)
    if size > limit:
        raise SandboxError(f"{path}: {size:,} bytes, more than a {what} may hold "
                           f"({limit:,})")
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise SandboxError(f"{path}: more than {limit:,} bytes, more than a {what} may hold")
        return data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SandboxError(f"{path}: cannot read ({e.__class__.__name__})") from None
