"""`sandbox prepare-data`: tokenize text sources into a prepared data directory.

    prepare(["builtin"], "data/py", tokenizer="bpe", vocab=8192) -> meta (dict)

Sources: `builtin` (the builtin corpus, `runtime.data.loader`), .txt files (one
document each), .jsonl files (one document per line's "text"), or folders of
them (sorted paths). Everything is streamed: a source is read in pieces of
about `PIECE_BYTES` cut at line ends, once to train the tokenizer (BPE) and
once to encode, and tokens go to the shards as they come, so memory stays
small whatever the corpus size (a piece ends at a line end; a run of
whitespace there may split into tokens differently than in one pass).
Documents are joined by the tokenizer's separator (EOT for BPE, a newline
for bytes: the byte stream is then the same as `train.data` pointing at the
sources).

Layout and meta.json: `runtime.data.shards`. The folder must be empty or new;
meta.json is written last.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from runtime.data import loader as rdata
from runtime.data.shards import FORMAT, META, TOKENIZER, dtype_for, shard_name
from runtime.data.tokenizer import Tokenizer, byte_tokenizer, train_bpe
from sandbox.errors import SandboxError

PIECE_BYTES = 1 << 20  # text handed to the tokenizer at a time, bytes (about)
SHARD_TOKENS = 1 << 28  # tokens per shard file (512 MiB of uint16)
DEFAULT_VOCAB = 8192
DEFAULT_VAL_FRACTION = 0.05


def _files(source: str) -> list[Path]:
    """The files of one source, checked as `train.data` is but with no size cap."""
    return rdata.data_files(source, capped=False)


def _text_pieces(path: Path, digest) -> Iterator[str]:
    """A .txt file's text in pieces cut after a newline (or at PIECE_BYTES)."""
    tail = b""
    with path.open("rb") as f:
        while chunk := f.read(PIECE_BYTES):
            digest.update(chunk)
            buf = tail + chunk
            cut = buf.rfind(b"\n") + 1 or len(buf)
            piece, tail = buf[:cut], buf[cut:]
            if len(tail) > 4 * PIECE_BYTES:  # one huge line: cut it anyway
                piece, tail = buf, b""
            yield piece.decode("utf-8", errors="replace")
    if tail:
        yield tail.decode("utf-8", errors="replace")


def _jsonl_docs(path: Path, digest) -> Iterator[str]:
    for _n, text in rdata.jsonl_texts(path, digest):
        yield text.encode("utf-8", errors="replace").decode("utf-8")


def documents(sources: list[str], record: list[dict] | None = None
              ) -> Iterator[Iterator[str]]:
    """Each document of the sources as an iterator of text pieces. With
    `record`, one {path, bytes, sha256} per file is appended as it is read."""
    for source in sources:
        if source == "builtin":
            raw = rdata.builtin_bytes()
            if record is not None:
                record.append({"path": "builtin", "bytes": len(raw),
                               "sha256": hashlib.sha256(raw).hexdigest()})
            text = raw.decode("utf-8", errors="replace")
            yield iter([text[i:i + PIECE_BYTES] for i in range(0, len(text), PIECE_BYTES)])
            continue
        for path in _files(source):
            digest = hashlib.sha256()
            try:
                if path.suffix == ".jsonl":
                    for doc in _jsonl_docs(path, digest):
                        yield iter([doc])
                else:
                    yield _text_pieces(path, digest)
            except OSError as e:
                raise SandboxError(f"{path}: cannot read ({e.strerror or e})") from None
            if record is not None:
                record.append({"path": str(path.resolve()), "bytes": path.stat().st_size,
                               "sha256": digest.hexdigest()})


def _all_pieces(sources: list[str]) -> Iterator[str]:
    for doc in documents(sources):
        yield from doc


class ShardWriter:
    """Appends token ids to consecutive shard files of at most `shard_tokens`."""

    def __init__(self, out: Path, dtype: str, shard_tokens: int):
        self.out, self.dtype, self.cap = out, np.dtype(dtype), shard_tokens
        self.shards: list[dict] = []
        self.f = None

    def write(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=self.dtype)
        while len(ids):
            if self.f is None or self.shards[-1]["tokens"] == self.cap:
                self._next()
            room = self.cap - self.shards[-1]["tokens"]
            self.f.write(ids[:room].astype(self.dtype.newbyteorder("<")).tobytes())
            self.shards[-1]["tokens"] += len(ids[:room])
            ids = ids[room:]

    def _next(self) -> None:
        if self.f is not None:
            self.f.close()
        name = shard_name(len(self.shards))
        self.f = open(self.out / name, "wb")
        self.shards.append({"file": name, "tokens": 0})

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
            self.f = None


def check_out(out: Path) -> None:
    """Refuse an --out that exists and is not an empty folder."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SandboxError(f"{out}: --out must be a new or empty folder")


def check_sources(sources: list[str]) -> None:
    """One line for a source that is missing or not .txt / .jsonl (before any work)."""
    if not sources:
        raise SandboxError("SRC: give at least one source (builtin, .txt, .jsonl or a folder)")
    for s in sources:
        if s != "builtin":
            _files(s)


def prepare(sources: list[str], out: str | Path, tokenizer: str = "bpe",
            vocab: int | None = None, val_fraction: float = DEFAULT_VAL_FRACTION,
            shard_tokens: int = SHARD_TOKENS, log=None) -> dict:
    """Tokenize `sources` into folder `out`; returns meta.json's content.

    tokenizer: "bpe" (trained here, `vocab` ids, default 8192) or "byte"
    (256 ids; `vocab` must be None or 256). val_fraction: share of the token
    stream held out, in (0, 0.5]. log: called with progress lines (str)."""
    out = Path(out)
    say = log or (lambda s: None)
    if tokenizer not in ("bpe", "byte"):
        raise SandboxError(f"--tokenizer: '{tokenizer}' is not bpe or byte")
    if tokenizer == "byte" and vocab not in (None, 256):
        raise SandboxError(f"--vocab: the byte tokenizer has 256 ids, got {vocab:,}")
    if not 0 < val_fraction <= 0.5:
        raise SandboxError(f"--val-fraction: must be in (0, 0.5], got {val_fraction}")
    if shard_tokens < 1:
        raise ValueError("shard_tokens must be positive")
    check_out(out)
    check_sources(sources)
    t0 = time.perf_counter()
    if tokenizer == "bpe":
        tok = train_bpe(_all_pieces(sources), vocab or DEFAULT_VOCAB)
        say(f"trained a byte-level BPE of {tok.vocab:,} ids in {time.perf_counter() - t0:.1f} s")
    else:
        tok = byte_tokenizer()
    out.mkdir(parents=True, exist_ok=True)
    tok.save(out / TOKENIZER)
    dtype = dtype_for(tok.vocab)
    writer, record, docs = ShardWriter(out, dtype, shard_tokens), [], 0
    sep = np.array(tok.separator, dtype=np.int64)
    try:
        for doc in documents(sources, record):
            first = True
            for batch in _batched(doc, 16):
                for ids in tok.encode_batch(batch):
                    if first and docs:
                        writer.write(sep)
                    first = False
                    writer.write(np.asarray(ids, dtype=np.int64))
            docs += 1
    finally:
        writer.close()
    total = sum(s["tokens"] for s in writer.shards)
    cut = total - max(int(total * val_fraction), 1)
    if total < 2 or cut < 1:
        raise SandboxError(f"{', '.join(sources)}: only {total} tokens; too little data")
    meta = {"format": FORMAT, "tokenizer": tok.kind, "vocab": tok.vocab, "eot": tok.eot,
            "dtype": dtype, "tokens": total, "shards": writer.shards,
            "split": {"val_fraction": val_fraction, "train": [0, cut], "val": [cut, total]},
            "documents": docs, "sources": record,
            "bytes_per_token": sum(r["bytes"] for r in record) / total,
            "created_by": "sandbox prepare-data", "seconds": time.perf_counter() - t0}
    tmp = out / (META + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, out / META)
    say(f"wrote {total:,} tokens ({len(writer.shards)} shard(s), {dtype}) of {docs:,} "
        f"document(s) to {out}; held out {total - cut:,}")
    return meta


def _batched(it: Iterator[str], n: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for x in it:
        batch.append(x)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def load_tokenizer(source: str) -> Tokenizer:
    """The tokenizer of a prepared directory (or the byte tokenizer otherwise)."""
    from runtime.data.shards import is_prepared

    if is_prepared(source):
        return Tokenizer.load(Path(source).expanduser() / TOKENIZER)
    return byte_tokenizer()
