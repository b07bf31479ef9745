"""Tokenizers: byte-level BPE trained locally with Hugging Face `tokenizers`, or bytes.

Both are stored as one `tokenizer.json` (the `tokenizers` format) and read
back with `Tokenizer.load`:

- `train_bpe(texts, vocab)`: byte-level BPE (GPT-2's pre-tokenizer and byte
  alphabet, so any text encodes without unknown tokens) trained on `texts`;
  id 0 is the special token `EOT` that separates documents;
- `byte_tokenizer()`: the byte tokenizer of the vocab-256 presets as a
  `tokenizers` BPE with no merges whose id of every byte is the byte's value:
  encoding with it gives exactly the UTF-8 bytes of the text.

Nothing is downloaded: there is no hub access anywhere here. This module
imports neither torch nor onnxruntime (`sandbox generate` loads it).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sandbox.errors import SandboxError

EOT = "<|endoftext|>"  # document separator of BPE tokenizers (id 0)
BYTE_VOCAB = 256
MIN_BPE_VOCAB = BYTE_VOCAB + 1  # the byte alphabet plus EOT
MAX_VOCAB = 1 << 32  # token ids must fit in uint32 shards


def _byte_level_parts():
    from tokenizers import decoders, pre_tokenizers

    return (pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            decoders.ByteLevel())


@dataclass
class Tokenizer:
    """A loaded tokenizer: `encode` text -> ids, `decode` ids -> text."""

    kind: str  # "bpe" | "byte"
    vocab: int  # ids 0..vocab-1
    eot: int | None  # id of the document separator token (None: byte, joins with "\n")
    _tok: object  # tokenizers.Tokenizer

    @classmethod
    def from_hf(cls, tok: object) -> Tokenizer:
        eot = tok.token_to_id(EOT)
        return cls("byte" if eot is None else "bpe", tok.get_vocab_size(with_added_tokens=True),
                   eot, tok)

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Read a `tokenizer.json`; a file that is not one is one line naming it."""
        from tokenizers import Tokenizer as HF

        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
            json.loads(text)
            tok = HF.from_str(text)
        except OSError as e:
            raise SandboxError(f"{path}: cannot read tokenizer ({e.strerror or e})") from None
        except (ValueError, Exception) as e:  # tokenizers raises a plain Exception
            first = (str(e).splitlines() or [e.__class__.__name__])[0][:160]
            raise SandboxError(f"{path}: not a tokenizer.json ({first})") from None
        return cls.from_hf(tok)

    def save(self, path: str | Path) -> None:
        self._tok.save(str(path))

    def to_str(self) -> str:
        return self._tok.to_str()

    @property
    def separator(self) -> list[int]:
        """Ids placed between two documents (EOT for BPE, a newline for bytes)."""
        return [self.eot] if self.eot is not None else [10]

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ids (byte sequences that are not UTF-8 become U+FFFD)."""
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)


def byte_tokenizer() -> Tokenizer:
    """The byte tokenizer (id of each byte = its value) as a `tokenizers` model."""
    from tokenizers import Tokenizer as HF
    from tokenizers import models
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = _byte_unicode()
    tok = HF(models.BPE(vocab={alphabet[b]: b for b in range(BYTE_VOCAB)}, merges=[]))
    tok.pre_tokenizer, tok.decoder = _byte_level_parts()
    assert sorted(alphabet.values()) == sorted(ByteLevel.alphabet())
    return Tokenizer.from_hf(tok)


def _byte_unicode() -> dict[int, str]:
    """GPT-2's map of the 256 byte values to printable characters (ByteLevel's)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    out, n = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + n)
            n += 1
    return out


def train_bpe(texts: Iterable[str], vocab: int, min_frequency: int = 2) -> Tokenizer:
    """A byte-level BPE of at most `vocab` ids (EOT = 0, then the 256 byte
    symbols, then merges) trained on `texts` (an iterator: streamed)."""
    from tokenizers import Tokenizer as HF
    from tokenizers import models, trainers
    from tokenizers.pre_tokenizers import ByteLevel

    if not MIN_BPE_VOCAB <= vocab < MAX_VOCAB:
        raise SandboxError(f"--vocab: a byte-level BPE needs {MIN_BPE_VOCAB}..{MAX_VOCAB - 1:,} "
                           f"ids (256 bytes + {EOT}), got {vocab:,}")
    tok = HF(models.BPE())
    tok.pre_tokenizer, tok.decoder = _byte_level_parts()
    trainer = trainers.BpeTrainer(vocab_size=vocab, min_frequency=min_frequency,
                                  special_tokens=[EOT], initial_alphabet=ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return Tokenizer.from_hf(tok)
