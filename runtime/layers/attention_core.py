"""RoPE and the eager attention core, tensor functions without parameters.

`rope_cos_sin` / `apply_rope` rotate interleaved pairs of the head dimension
(Llama's RoPE); `eager_attention` is the causal softmax(Q K^T / sqrt(d)) V with
the s x s scores materialised (`train.attention = "eager"`). Re-exported by
`runtime.model`, where callers have imported them from.
"""

from __future__ import annotations

import math

import torch


def rope_cos_sin(seq_len: int, head_dim: int, theta: float, offset: int = 0,
                 device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables of shape (seq_len, head_dim/2) for positions offset.."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim))
    pos = torch.arange(offset, offset + seq_len, device=device).float()
    angles = torch.outer(pos, inv)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[..., 2i], x[..., 2i+1]) of x: (b, heads, s, head_dim)."""
    x1, x2 = x.float()[..., 0::2], x.float()[..., 1::2]
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.flatten(-2).type_as(x)


def eager_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal softmax(Q K^T / sqrt(d)) V with the s x s scores materialised, as
    Megatron-LM's unfused core runs it (scale, mask, softmax in fp32, matmul);
    the same result as SDPA up to rounding."""
    s = q.shape[-2]
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    future = torch.ones(s, s, dtype=torch.bool, device=q.device).triu(1)
    probs = torch.softmax(scores.masked_fill(future, float("-inf")).float(), dim=-1)
    return probs.type_as(q) @ v
