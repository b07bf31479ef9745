"""Text generation with onnxruntime from an exported model.

`Generator(path)` opens `model.onnx` and its decoder graph
`model.decoder.onnx` (see `runtime.export.graphs`). With the cache, the prompt
is run once with an empty past, then one token per step with the returned
key/values; without it, the full graph re-reads the whole sequence each
step. Greedy when temperature is 0, else sampling from softmax(logits / T)
with a seeded generator. The window the model sees slides once prompt +
new tokens exceed the context. Text is encoded and decoded with the
tokenizer `sandbox export` wrote next to the model (`load_tokenizer`;
`encode` / `decode` here are the byte-level tokenizer of the vocab-256
presets).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.export.onnx_files import decoder_path, session
from sandbox.errors import SandboxError


def encode(text: str) -> list[int]:
    """Byte-level tokenizer: the UTF-8 bytes of `text`."""
    return list(text.encode("utf-8"))


def decode(tokens: list[int]) -> str:
    """Text of byte-level tokens (invalid UTF-8 replaced)."""
    return bytes(int(t) for t in tokens).decode("utf-8", errors="replace")


def _pick(logits: np.ndarray, temperature: float, rng: np.random.Generator) -> np.ndarray:
    """Next token per row from last-position logits (batch, vocab)."""
    if temperature <= 0:
        return logits.argmax(-1)
    z = logits.astype(np.float64) / temperature
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.array([rng.choice(p.shape[-1], p=row) for row in p])


@dataclass
class Generator:
    """Runs an exported model (and its decoder graph) with onnxruntime."""

    path: Path
    context: int  # max tokens of prompt + generated
    vocab: int

    @classmethod
    def open(cls, path: str | Path) -> Generator:
        path = Path(path)
        if not path.is_file():
            raise SandboxError(f"{path}: no such model file")
        if not decoder_path(path).is_file():
            raise SandboxError(f"{decoder_path(path)}: missing decoder graph next to the model")
        report = path.with_suffix(".report.json")
        context, vocab = 0, 0
        if report.is_file():
            shape = json.loads(report.read_text()).get("shape", {})
            context, vocab = shape.get("seq_len", 0), shape.get("vocab", 0)
        try:
            g = cls(path, context, vocab)
            g._full = session(path)
            g._dec = session(decoder_path(path))
        except Exception as e:
            raise SandboxError(f"{path}: cannot load ONNX model ({e.__class__.__name__})") \
                from None
        if not g.vocab:
            g.vocab = int(g._full.get_outputs()[0].shape[-1])
        return g

    def _empty_past(self, batch: int) -> dict[str, np.ndarray]:
        feeds = {}
        for inp in self._dec.get_inputs()[1:]:
            _, kv, _, d = inp.shape
            feeds[inp.name] = np.zeros((batch, kv, 0, d), dtype=np.float32)
        return feeds

    def generate(self, prompt: list[list[int]] | list[int], max_new_tokens: int,
                 temperature: float = 0.0, seed: int = 0,
                 use_cache: bool = True) -> list[list[int]]:
        """New tokens for each prompt (prompts of one batch have equal length).

        The model sees at most its context: a longer prompt, or one that
        grows past the context while generating, slides (the last `context`
        tokens). With the cache, a full cache restarts from that window with
        an empty past, so both ways compute the same window each step."""
        ids = np.array(prompt if isinstance(prompt[0], list) else [prompt], dtype=np.int64)
        if ids.size == 0 or ids.shape[1] == 0:
            raise SandboxError("empty prompt")
        ctx = self.context or None
        rng = np.random.default_rng(seed)
        seq, out = ids, []
        names = [o.name for o in self._dec.get_outputs()]
        feeds, cached = None, 0
        for _ in range(max_new_tokens):
            window = seq[:, -ctx:] if ctx else seq
            if use_cache:
                if feeds is None or (ctx and cached + 1 > ctx):
                    feeds = {"input_ids": window, **self._empty_past(ids.shape[0])}
                res = self._dec.run(names, feeds)
                logits, cached = res[0][:, -1], res[1].shape[2]
            else:
                logits = self._full.run(["logits"], {"input_ids": window})[0][:, -1]
            nxt = _pick(logits, temperature, rng)
            out.append(nxt)
            seq = np.concatenate([seq, nxt[:, None].astype(np.int64)], axis=1)
            if use_cache:
                feeds = {"input_ids": nxt[:, None].astype(np.int64)}
                feeds.update({n.replace("present", "past"): r for n, r in zip(names[1:], res[1:],
                                                                              strict=True)})
        if not out:
            return [[] for _ in range(ids.shape[0])]
        return np.stack(out, axis=1).tolist()


def tokenizer_path(model: str | Path) -> Path:
    """Where `sandbox export` puts the run's tokenizer: model.tokenizer.json."""
    return Path(model).with_suffix(".tokenizer.json")


def load_tokenizer(model: str | Path, vocab: int):
    """The tokenizer next to an exported model (`runtime.data.tokenizer.Tokenizer`);
    without one, the byte tokenizer for a vocab-256 model, else one line."""
    from runtime.data.tokenizer import BYTE_VOCAB, Tokenizer, byte_tokenizer

    path = tokenizer_path(model)
    if path.is_file():
        return Tokenizer.load(path)
    if vocab == BYTE_VOCAB:
        return byte_tokenizer()
    raise SandboxError(f"{path}: missing; a vocab-{vocab:,} model needs the tokenizer its run "
                       "trained with (re-export with sandbox export)")
