"""Measure an ONNX file against PyTorch: logits, agreement, perplexity, latency.

All measurements are on CPU. Perplexity is exp(mean next-token
cross-entropy) over every position of the held-out batches except the last
of each row. Latency is the median wall time in milliseconds of one
`session.run` for a stated (batch, length) of token ids, after warm-up, with
a stated number of intra-op threads; candidate and baseline runs are
interleaved so that load from other processes hits both alike. The decode
check compares greedy tokens from the file (with and without its KV cache)
with greedy tokens from PyTorch.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from runtime.export.generate import Generator
from runtime.export.onnx_files import session
from runtime.model import GPT


@dataclass
class Agreement:
    """One model's logits compared with a reference's, on the same tokens."""

    max_abs_diff: float  # max |logit difference| over all positions
    top1_agreement: float  # fraction of positions whose argmax agree

    def to_dict(self) -> dict:
        return {"max_abs_diff": self.max_abs_diff, "top1_agreement": self.top1_agreement}


@torch.no_grad()
def torch_logits(model: GPT, batches: list[torch.Tensor]) -> list[np.ndarray]:
    """PyTorch logits (batch, seq, vocab) of each token batch, eval mode."""
    model.eval()
    return [model(b).float().numpy() for b in batches]


def onnx_logits(path_or_session, batches: list[torch.Tensor]) -> list[np.ndarray]:
    """onnxruntime logits of each token batch, from a file or an open session."""
    sess = session(path_or_session) if isinstance(path_or_session, (str, Path)) \
        else path_or_session
    return [sess.run(["logits"], {"input_ids": b.numpy().astype(np.int64)})[0] for b in batches]


def agreement(logits: list[np.ndarray], reference: list[np.ndarray]) -> Agreement:
    """Max |logit difference| and top-1 agreement of `logits` with `reference`."""
    diff = max(float(np.abs(a - b).max()) for a, b in zip(logits, reference, strict=True))
    same = sum(int((a.argmax(-1) == b.argmax(-1)).sum()) for a, b in zip(logits, reference,
                                                                           strict=True))
    total = sum(a.shape[0] * a.shape[1] for a in logits)
    return Agreement(diff, same / total)


def perplexity(logits: list[np.ndarray], batches: list[torch.Tensor]) -> float:
    """exp(mean next-token cross-entropy) of logits on their own token batches."""
    nll, n = 0.0, 0
    for lg, b in zip(logits, batches, strict=True):
        lt = torch.from_numpy(np.asarray(lg, dtype=np.float32))[:, :-1]
        nll += F.cross_entropy(lt.reshape(-1, lt.shape[-1]), b[:, 1:].reshape(-1),
                               reduction="sum").item()
        n += b[:, 1:].numel()
    return math.exp(nll / n)


def latency_ms(paths: list[str | Path], batch: int, length: int, vocab: int,
               repeats: int = 20, warmup: int = 3, threads: int = 1) -> list[float]:
    """Median ms per run of each graph for (batch, length) ids, interleaved."""
    ids = np.random.default_rng(0).integers(0, vocab, (batch, length), dtype=np.int64)
    sessions = [session(p, threads) for p in paths]
    for s in sessions:
        for _ in range(warmup):
            s.run(["logits"], {"input_ids": ids})
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(repeats):
        for i, s in enumerate(sessions):
            t0 = time.perf_counter()
            s.run(["logits"], {"input_ids": ids})
            times[i].append((time.perf_counter() - t0) * 1e3)
    return [statistics.median(t) for t in times]


@torch.no_grad()
def torch_greedy(model: GPT, prompt: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """Greedy tokens from the PyTorch model (the reference for the ONNX decoders)."""
    model.eval()
    seq = torch.tensor(prompt, dtype=torch.long)
    for _ in range(max_new_tokens):
        nxt = model(seq)[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], dim=1)
    return seq[:, len(prompt[0]):].tolist()


def decode_check(model_path: Path, model: GPT, prompts: list[list[int]], n: int) -> dict:
    """Greedy tokens with the cache, without it and from PyTorch, per prompt.

    Where the file's tokens part from PyTorch's, `torch_margin_at_divergence`
    holds PyTorch's logit of its own token minus its logit of the file's
    token at the first differing position (a near-tie when small)."""
    gen = Generator.open(model_path)
    cached = gen.generate(prompts, n, use_cache=True)
    uncached = gen.generate(prompts, n, use_cache=False)
    ref = torch_greedy(model, prompts, len(cached[0]))
    margins = []
    for p, c, r in zip(prompts, cached, ref, strict=True):
        if c != r:
            j = next(i for i, (a, b) in enumerate(zip(c, r, strict=True)) if a != b)
            with torch.no_grad():
                logits = model(torch.tensor([p + r[:j]]))[0, -1]
            margins.append(float(logits[r[j]] - logits[c[j]]))
    return {"new_tokens": len(cached[0]), "batch": len(prompts),
            "cache_matches_no_cache": cached == uncached, "cache_matches_torch": cached == ref,
            "prompts_cache_eq_no_cache": sum(a == b for a, b in zip(cached, uncached,
                                                                    strict=True)),
            "prompts_cache_eq_torch": sum(a == b for a, b in zip(cached, ref, strict=True)),
            "prompts_no_cache_eq_torch": sum(a == b for a, b in zip(uncached, ref,
                                                                    strict=True)),
            "torch_margin_at_divergence": margins,
            "tokens_equal_fraction": float(np.mean(np.array(cached) == np.array(ref)))}
