"""A prepared data directory (`sandbox prepare-data`): token shards every rank memory-maps.

    DIR/tokenizer.json      the tokenizer (`runtime.data.tokenizer`)
    DIR/tokens_000000.bin   flat little-endian uint16 (vocab <= 65,536) or uint32 ids,
    DIR/tokens_000001.bin   consecutive pieces of one token stream
    DIR/meta.json           what the files are (written last: a folder without it is
                            not a prepared directory)

meta.json: `format` (1), `tokenizer` ("bpe" | "byte"), `vocab`, `eot` (the
document separator's id or null), `dtype`, `tokens` (the stream's length),
`shards` ([{file, tokens}]), `split` ({val_fraction, train: [0, cut], val:
[cut, tokens]}: the last `val_fraction` of the stream is held out),
`documents`, `sources` ([{path, bytes, sha256}]) and `created_by`.

`open_prepared(DIR)` checks meta.json against the files (one line naming the
problem) and memory-maps the shards read-only: pages are read on demand and
shared by every process of the machine through the page cache; each read
copies its windows out and unmaps what it touched (`Prepared.release`), so
a rank's resident memory does not grow with the data. `TokenRange` is a split of it:
its windows are cut where asked and only they become int64.
"""

from __future__ import annotations

import json
import mmap
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from sandbox.errors import SandboxError

META, TOKENIZER = "meta.json", "tokenizer.json"
FORMAT = 1
DTYPES = {"uint16": np.uint16, "uint32": np.uint32}


def shard_name(i: int) -> str:
    return f"tokens_{i:06d}.bin"


def dtype_for(vocab: int) -> str:
    """The smallest shard dtype that holds ids 0..vocab-1."""
    return "uint16" if vocab <= 1 << 16 else "uint32"


def is_prepared(source: str) -> bool:
    """Whether `source` names a prepared data directory (one holding meta.json)."""
    if source == "builtin":
        return False
    p = Path(source).expanduser()
    return p.is_dir() and (p / META).is_file()


def _field(meta: dict, name: str, kind: type, where: Path):
    v = meta.get(name)
    if not isinstance(v, kind) or isinstance(v, bool):
        raise SandboxError(f"{where}: field '{name}' missing or not {kind.__name__} "
                           "(re-run sandbox prepare-data)")
    return v


@dataclass
class Prepared:
    """An opened prepared directory: its meta.json and memory-mapped shards."""

    path: Path
    meta: dict
    shards: list[np.ndarray]
    offsets: np.ndarray  # token index where each shard begins, then the total

    @property
    def vocab(self) -> int:
        return int(self.meta["vocab"])

    @property
    def tokens(self) -> int:
        return int(self.offsets[-1])

    def release(self) -> None:
        """Unmap the pages read so far (MADV_DONTNEED: they stay in the page
        cache, shared, but leave this process's resident set). Called after
        every read: a fault maps a whole large folio (up to 2 MB) of a cached
        file, so kept mappings of random windows would add up to the file."""
        for m in self.shards:
            mm = getattr(m, "_mmap", None)
            if mm is not None and hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
                try:
                    mm.madvise(mmap.MADV_DONTNEED)
                except OSError:
                    pass

    def split(self, name: str) -> TokenRange:
        """The "train" or "heldout" (meta's "val") part of the stream."""
        if name not in ("train", "heldout"):
            raise ValueError(f"split must be 'train' or 'heldout', got {name!r}")
        lo, hi = self.meta["split"]["train" if name == "train" else "val"]
        return TokenRange(self, int(lo), int(hi))

    def read(self, lo: int, hi: int) -> np.ndarray:
        """Tokens [lo, hi) of the stream, int64 (a copy; may span shards)."""
        if not 0 <= lo <= hi <= self.tokens:
            raise ValueError(f"tokens [{lo}, {hi}) outside the stream of {self.tokens}")
        parts = []
        i = int(np.searchsorted(self.offsets, lo, side="right")) - 1
        while lo < hi:
            start = lo - int(self.offsets[i])
            take = min(hi - lo, len(self.shards[i]) - start)
            parts.append(self.shards[i][start:start + take])
            lo += take
            i += 1
        out = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
        self.release()
        return out


@dataclass(frozen=True)
class TokenRange:
    """Tokens [lo, hi) of a prepared stream (the interface of `runtime.data.loader`'s splits)."""

    data: Prepared
    lo: int
    hi: int

    def __len__(self) -> int:
        return self.hi - self.lo

    def windows(self, starts: torch.Tensor, length: int) -> torch.Tensor:
        """(len(starts), length) int64: tokens [s, s + length) for each start."""
        rows = [self.data.read(self.lo + s, self.lo + s + length) for s in starts.tolist()]
        return torch.from_numpy(np.stack(rows)) if rows else torch.zeros(0, length,
                                                                         dtype=torch.long)

    def read(self, lo: int, hi: int) -> torch.Tensor:
        """Tokens [lo, hi) of this range, int64."""
        hi = min(hi, len(self))
        return torch.from_numpy(self.data.read(self.lo + lo, self.lo + hi))


def read_meta(path: Path) -> dict:
    """DIR/meta.json checked field by field (one line naming what is wrong)."""
    where = path / META
    try:
        meta = json.loads(where.read_text(encoding="utf-8"))
    except OSError as e:
        raise SandboxError(f"{where}: cannot read ({e.strerror or e})") from None
    except (ValueError, RecursionError):
        raise SandboxError(f"{where}: not valid JSON (re-run sandbox prepare-data)") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise SandboxError(f"{where}: not a prepare-data meta.json of format {FORMAT}")
    vocab = _field(meta, "vocab", int, where)
    dtype = _field(meta, "dtype", str, where)
    if dtype not in DTYPES or vocab < 1 or vocab > np.iinfo(DTYPES[dtype]).max + 1:
        raise SandboxError(f"{where}: dtype '{dtype}' cannot hold vocab {vocab}")
    shards = _field(meta, "shards", list, where)
    total = _field(meta, "tokens", int, where)
    if not shards:
        raise SandboxError(f"{where}: no shards")
    for s in shards:
        name = s.get("file") if isinstance(s, dict) else None
        if not isinstance(name, str) or Path(name).name != name or not name.endswith(".bin") \
                or not isinstance(s.get("tokens"), int) or s["tokens"] <= 0:
            raise SandboxError(f"{where}: each shard must be {{\"file\": NAME.bin in the "
                               "folder, \"tokens\": a positive count}")
    if sum(s["tokens"] for s in shards) != total:
        raise SandboxError(f"{where}: the shards hold {sum(s['tokens'] for s in shards):,} "
                           f"tokens, 'tokens' says {total:,}")
    split = _field(meta, "split", dict, where)
    tr, va = split.get("train"), split.get("val")
    ok = all(isinstance(r, list) and len(r) == 2 and all(type(x) is int for x in r)
             for r in (tr, va))
    if not ok or not (0 == tr[0] <= tr[1] == va[0] <= va[1] == total):
        raise SandboxError(f"{where}: 'split' must hold train [0, cut] and val [cut, tokens]")
    return meta


def _random_access(m: np.memmap) -> np.memmap:
    """Tell the kernel the mapping is read at random (MADV_RANDOM: no
    read-ahead run on a page fault of a cold file)."""
    mm = getattr(m, "_mmap", None)
    if mm is not None and hasattr(mm, "madvise") and hasattr(mmap, "MADV_RANDOM"):
        try:
            mm.madvise(mmap.MADV_RANDOM)
        except OSError:
            pass
    return m


@lru_cache(maxsize=4)
def open_prepared(source: str) -> Prepared:
    """Open (once per process) the prepared directory `source`: meta.json
    checked, each shard's size checked, then memory-mapped read-only."""
    path = Path(source).expanduser()
    meta = read_meta(path)
    dtype = DTYPES[meta["dtype"]]
    maps = []
    for s in meta["shards"]:
        f = path / s["file"]
        want = s["tokens"] * np.dtype(dtype).itemsize
        try:
            size = f.stat().st_size
        except OSError as e:
            raise SandboxError(f"{f}: cannot read token shard ({e.strerror or e})") from None
        if not f.is_file() or size != want:
            raise SandboxError(f"{f}: {size:,} bytes, meta.json says {want:,} "
                               f"({s['tokens']:,} x {meta['dtype']}); re-run prepare-data")
        maps.append(_random_access(np.memmap(f, dtype=dtype, mode="r")))
    offsets = np.concatenate([[0], np.cumsum([len(m) for m in maps])]).astype(np.int64)
    return Prepared(path, meta, maps, offsets)


def check_prepared(source: str, seq_len: int, vocab: int) -> int:
    """Raise (one line) unless the prepared directory is intact, its vocabulary
    fits the model's and both splits hold a window; returns the stream's tokens."""
    data = open_prepared(source)
    where = data.path / META
    if not (data.path / TOKENIZER).is_file():
        raise SandboxError(f"{data.path / TOKENIZER}: missing (re-run sandbox prepare-data)")
    if vocab < data.vocab:
        raise SandboxError(f"model.vocab: {vocab:,} < the data's vocabulary of {data.vocab:,} "
                           f"({where}); set model.vocab = {data.vocab}")
    for name, label in (("train", "training"), ("heldout", "held-out")):
        n = len(data.split(name))
        if n < seq_len + 1:
            raise SandboxError(f"{data.path}: the {label} split has {n:,} tokens; seq_len "
                               f"{seq_len} needs at least {seq_len + 1}")
    return data.tokens
