"""Training data: a local corpus, a byte-level tokenizer and layout-free batches.

Sources (`train.data`):

- `"builtin"`: this Python's standard-library `.py` sources (made locally,
  never downloaded), files in sorted path order, capped at `BUILTIN_BYTES`;
- a `.txt` file, a `.jsonl` file (each line an object with a `"text"` field),
  or a directory searched recursively for both (sorted paths).

Tokenizer: one token per byte (ids 0..255), so any model with vocab >= 256
can train on any text. The stream is kept as uint8 (`byte_tokens`, one copy
per process); only each batch becomes int64. Data files must be regular files
(a FIFO or /dev/zero is refused before it is opened) of at most `DATA_LIMIT`
bytes in all; `check_data` (the launcher's check) stats .txt files rather
than reading them. The last `HELDOUT_FRACTION` of the token stream (at
least one sequence) is held out for evaluation.

Prepared data (`sandbox prepare-data`, `runtime.data.shards`): `train.data` names
a folder holding meta.json, tokenizer.json and token shards that every rank
memory-maps; its split is the one meta.json records. `split_view` gives
either kind of split with one interface (`windows`, `read`).

Batches depend on (seed, step) alone, never on the parallel layout:
`global_batch(step)` returns the whole step's (global_batch, seq_len) tokens
and targets, and data-parallel rank r takes rows `[r*B/dp, (r+1)*B/dp)`
(`dp_slice`), so every layout trains on the same sequences.
"""

from __future__ import annotations

import json
import os
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from runtime.data.shards import TokenRange, check_prepared, is_prepared, open_prepared
from sandbox.errors import SandboxError
from sandbox.files import regular_file_size
from sandbox.specs import Plan

BUILTIN_BYTES = 4_000_000  # size cap of the builtin corpus, bytes
DATA_LIMIT = 1 << 30  # bytes: the most train.data may hold (kept in memory on every rank)
HELDOUT_FRACTION = 0.05  # the last 5% of the token stream is held out
BYTE_VOCAB = 256  # byte-level tokenizer: ids 0..255
EVAL_BATCHES = 4  # global batches of held-out windows per evaluation


def encode(text: str) -> torch.Tensor:
    """Text -> 1-D int64 byte ids (UTF-8)."""
    return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).long()


def decode(ids: torch.Tensor | list[int]) -> str:
    """Byte ids -> text (invalid UTF-8 sequences become U+FFFD)."""
    values = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
    return bytes(int(i) & 0xFF for i in values).decode("utf-8", errors="replace")


def builtin_bytes(limit: int = BUILTIN_BYTES) -> bytes:
    """Deterministic bytes of the standard library's .py sources (no tests)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "site-packages", "dist-packages", "idle_test", "__pycache__"}
    paths = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in skip]  # prune before descending
        paths += [Path(folder) / f for f in files if f.endswith(".py")]
    chunks, total = [], 0
    for path in sorted(paths):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        chunks.append(data)
        total += len(data)
        if total >= limit:
            break
    return b"".join(chunks)[:limit]


def jsonl_texts(path: Path, digest: Any = None) -> Iterator[tuple[int, str]]:
    """(line number, "text" field) of each non-blank line of a JSONL file; one
    clear error per bad line. `digest` (a hashlib object) sees every raw line."""
    with path.open("rb") as f:
        for n, line in enumerate(f, 1):
            if digest is not None:
                digest.update(line)
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise SandboxError(f"{path}:{n}: not valid JSON") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise SandboxError(f"{path}:{n}: expected an object with a \"text\" string")
            yield n, obj["text"]


def _jsonl_bytes(path: Path) -> bytearray:
    """The "text" fields of a JSONL file joined by newlines, UTF-8."""
    out = bytearray()
    for n, text in jsonl_texts(path):
        if out:
            out += b"\n"
        try:
            out += text.encode("utf-8")
        except UnicodeEncodeError:
            raise SandboxError(f"{path}:{n}: text is not valid Unicode (a lone "
                               "surrogate)") from None
    return out


def _regular_size(path: Path) -> int:
    """Bytes of a regular data file (`sandbox.files.regular_file_size`)."""
    return regular_file_size(path, "train.data file (.txt or .jsonl)")


def data_files(source: str, capped: bool = True) -> list[Path]:
    """The files of a data source (a file, or a directory's .txt/.jsonl files in
    sorted order), each a regular file, at most `DATA_LIMIT` bytes in all
    (unless not `capped`: prepare-data streams them). Nothing is read."""
    path = Path(source).expanduser()
    if not path.exists():
        raise SandboxError(f"{path}: no such data file or directory (train.data)")
    if path.is_dir():
        try:
            files = sorted(p for p in path.rglob("*")
                           if p.suffix in (".txt", ".jsonl") and not p.is_dir())
        except OSError as e:
            raise SandboxError(f"{path}: cannot list data directory ({e.strerror})") from None
        if not files:
            raise SandboxError(f"{path}: no .txt or .jsonl files in the data directory")
    else:
        if path.suffix not in (".txt", ".jsonl"):
            raise SandboxError(f"{path}: data must be a .txt or .jsonl file or a directory "
                               "of them")
        files = [path]
    total = sum(_regular_size(p) for p in files)
    limit = DATA_LIMIT
    if capped and total > limit:
        raise SandboxError(f"{path}: {total:,} bytes of data, more than train.data may hold "
                           f"({limit:,}; raw text is kept in memory: use sandbox prepare-data "
                           "for token shards that are memory-mapped)")
    return files


def _read_file(path: Path, size: int) -> bytearray:
    """A .txt file's bytes (read once, into one buffer) or a .jsonl file's texts."""
    try:
        if path.suffix == ".jsonl":
            return _jsonl_bytes(path)
        buf = bytearray(size)
        with path.open("rb") as f:
            got = f.readinto(buf)
        return buf[:got] if got < size else buf
    except OSError as e:
        raise SandboxError(f"{path}: cannot read data ({e.strerror or e.__class__.__name__})") \
            from None


def _source_bytes(source: str) -> bytearray:
    if source == "builtin":
        return bytearray(builtin_bytes())
    files = data_files(source)
    if len(files) == 1:
        return _read_file(files[0], _regular_size(files[0]))
    out = bytearray()
    for i, p in enumerate(files):
        if i:
            out += b"\n"
        out += _read_file(p, _regular_size(p))
    return out


@lru_cache(maxsize=4)
def byte_tokens(source: str = "builtin") -> torch.Tensor:
    """The whole token stream of a data source, 1-D uint8 byte ids (one byte per
    token: 8x smaller than int64; batches are converted when they are cut)."""
    raw = _source_bytes(source)
    if not raw:
        raise SandboxError(f"{source}: the data is empty")
    return torch.frombuffer(raw, dtype=torch.uint8)


def load_tokens(source: str = "builtin") -> torch.Tensor:
    """The whole token stream of a data source, 1-D int64 byte ids (a copy)."""
    return byte_tokens(source).long()


def split_point(n_tokens: int, seq_len: int) -> int:
    """Index where the held-out part of an n-token stream begins."""
    return n_tokens - max(int(n_tokens * HELDOUT_FRACTION), seq_len + 1)


def byte_split(split: str, source: str = "builtin", seq_len: int = 0) -> torch.Tensor:
    """The "train" or "heldout" part of a source's token stream, uint8 (a view)."""
    toks = byte_tokens(source)
    cut = split_point(len(toks), seq_len)
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    return toks[:cut] if split == "train" else toks[cut:]


def token_split(split: str, source: str = "builtin", seq_len: int = 0) -> torch.Tensor:
    """The "train" or "heldout" part of a source's token stream, int64 (a copy)."""
    return byte_split(split, source, seq_len).long()


def token_count(source: str) -> int:
    """Tokens of a data source, checking it as `byte_tokens` would but keeping
    nothing: .txt files are only stat-ed, .jsonl files parsed and dropped; a
    prepared directory's count is its meta.json's."""
    if is_prepared(source):
        return open_prepared(source).tokens
    if source == "builtin":
        return len(byte_tokens(source))
    files = data_files(source)
    n = len(files) - 1  # the newlines joining them
    for p in files:
        n += len(_read_file(p, 0)) if p.suffix == ".jsonl" else _regular_size(p)
    if n <= 0:
        raise SandboxError(f"{source}: the data is empty")
    return n


def check_data(source: str, seq_len: int, vocab: int) -> int:
    """Raise SandboxError (one line naming the path) unless the source is
    readable (regular files, at most `DATA_LIMIT` bytes; or an intact prepared
    directory whose vocabulary fits `vocab`, `runtime.data.shards.check_prepared`)
    and long enough for seq_len-token training and held-out windows. Reads no
    more than it must (see `token_count`). Returns the number of tokens."""
    if is_prepared(source):
        return check_prepared(source, seq_len, vocab)
    if vocab < BYTE_VOCAB:
        raise SandboxError(f"model.vocab: {vocab} < {BYTE_VOCAB}; the byte-level tokenizer "
                           f"needs at least {BYTE_VOCAB} ids (or train a smaller BPE with "
                           "sandbox prepare-data --vocab N)")
    n = token_count(source)
    need = 2 * (seq_len + 1)
    if n < need:
        raise SandboxError(f"{source}: too little data ({n} bytes; seq_len {seq_len} "
                           f"needs at least {need})")
    return n


@dataclass(frozen=True)
class ByteRange:
    """A split of a byte-token stream (uint8, in memory); same interface as
    `runtime.data.shards.TokenRange`."""

    toks: torch.Tensor

    def __len__(self) -> int:
        return len(self.toks)

    def windows(self, starts: torch.Tensor, length: int) -> torch.Tensor:
        idx = starts[:, None] + torch.arange(length)[None, :]
        return self.toks[idx].long()  # only the batch becomes int64

    def read(self, lo: int, hi: int) -> torch.Tensor:
        return self.toks[lo:hi].long()


def split_view(split: str, source: str, seq_len: int) -> ByteRange | TokenRange:
    """The "train" or "heldout" split of any source, read window by window."""
    if is_prepared(source):
        return open_prepared(source).split(split)
    return ByteRange(byte_split(split, source, seq_len))


@dataclass(frozen=True)
class DataLoader:
    """Global batches of one plan: a function of (seed, step) alone."""

    source: str
    global_batch: int  # sequences per step
    seq_len: int  # tokens per sequence
    seed: int

    @classmethod
    def from_plan(cls, plan: Plan) -> DataLoader:
        return cls(plan.train.data, plan.parallel.global_batch, plan.model.seq_len,
                   plan.train.seed)

    def _windows(self, view: ByteRange | TokenRange,
                 starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = view.windows(starts, self.seq_len + 1)
        return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()

    def global_batch_at(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens, targets), each (global_batch, seq_len) int64, for 0-based `step`:
        random windows of the training split from a generator seeded by (seed, step)."""
        view = split_view("train", self.source, self.seq_len)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        starts = torch.randint(0, len(view) - self.seq_len, (self.global_batch,), generator=gen)
        return self._windows(view, starts)

    def eval_batches(self, n: int = EVAL_BATCHES) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """`n` fixed global batches of held-out windows, evenly spaced over the split."""
        view = split_view("heldout", self.source, self.seq_len)
        count = n * self.global_batch
        last = len(view) - self.seq_len - 1
        # float32 steps (as ever) rounded past the end of a long split: clamp
        starts = torch.linspace(0, last, count).long().clamp_(max=last)
        return [self._windows(view, s) for s in starts.split(self.global_batch)]


def global_batch(plan: Plan, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The plan's global batch of 0-based `step` (see `DataLoader.global_batch_at`)."""
    return DataLoader.from_plan(plan).global_batch_at(step)


def dp_slice(batch: torch.Tensor, dp_rank: int, dp: int) -> torch.Tensor:
    """Rows `[r*B/dp, (r+1)*B/dp)` of a global batch: data-parallel rank r's share."""
    share = batch.shape[0] // dp
    return batch[dp_rank * share:(dp_rank + 1) * share]
