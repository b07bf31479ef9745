"""Multi-head latent attention (DeepSeek-V2 section 2.1, DeepSeek-V3), from the equations.

With hidden h, n heads, per-head widths d_nope (`head_dim`), d_rope
(`qk_rope_head_dim`) and d_v (`v_head_dim`), and ranks r_q (`q_lora_rank`)
and r_kv (`kv_lora_rank`):

    queries   q = W_qb RMSNorm(W_qa x)           (n x (d_nope + d_rope); or q = W_q x, r_q = 0)
    latent    [c, k_r] = W_kva x                  (r_kv + d_rope: the cached part)
    keys/vals [k_nope, v] = W_kvb RMSNorm(c)      (n x (d_nope + d_v), per head contiguous)
    k = [k_nope, RoPE(k_r)]                       (the RoPE key is shared by all n heads)
    q = [q_nope, RoPE(q_r)]
    y = softmax(q k^T / sqrt(d_nope + d_rope), causal) v   -> n x d_v -> W_o -> h

No biases. Parameter names: `wq` (or `wq_a`, `q_norm`, `wq_b`), `wkv_a`,
`kv_norm`, `wkv_b`, `wo`; `sandbox.counts.mla_projections` lists their
shapes, so `sum(p.numel())` equals `sandbox.counts.attention_params`.

The local head count is read from the up-projections' output widths, so the
same code runs under column-wise tensor parallelism of `wq_b` / `wkv_b` (see
`runtime.parallel.mla_tensor`). `shared_key` is an identity hook point on the
RoPE key: tensor parallelism all-reduces its gradient there, since each rank's
heads contribute only part of it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from runtime.layers.attention_core import apply_rope, eager_attention, rope_cos_sin
from sandbox.specs import Model


def rope_at(x: torch.Tensor, theta: float, offset: int = 0) -> torch.Tensor:
    """RoPE (interleaved pairs, as `runtime.model.Attention`) of x (b, heads, s, d)
    at positions offset..offset+s-1."""
    cos, sin = rope_cos_sin(x.shape[2], x.shape[3], theta, offset=offset, device=x.device)
    return apply_rope(x, cos, sin)


class LatentAttention(nn.Module):
    """MLA over (b, s, hidden) inputs; see the module docstring."""

    def __init__(self, spec: Model):
        super().__init__()
        h, n = spec.hidden, spec.heads
        self.nope, self.rope_dim, self.v_dim = spec.head_dim, spec.qk_rope_head_dim, spec.v_head_dim
        self.kv_rank, self.q_rank = spec.kv_lora_rank, spec.q_lora_rank
        self.rope_theta = spec.rope_theta
        qk = self.nope + self.rope_dim
        if self.q_rank:
            self.wq_a = nn.Linear(h, self.q_rank, bias=False)
            self.q_norm = nn.RMSNorm(self.q_rank, eps=spec.norm_eps)
            self.wq_b = nn.Linear(self.q_rank, n * qk, bias=False)
        else:
            self.wq = nn.Linear(h, n * qk, bias=False)
        self.wkv_a = nn.Linear(h, self.kv_rank + self.rope_dim, bias=False)
        self.kv_norm = nn.RMSNorm(self.kv_rank, eps=spec.norm_eps)
        self.wkv_b = nn.Linear(self.kv_rank, n * (self.nope + self.v_dim), bias=False)
        self.wo = nn.Linear(n * self.v_dim, h, bias=False)
        self.shared_key = nn.Identity()
        self.recompute_core = False  # selective recompute: redo softmax(QK^T)V in backward
        self.eager = False  # train.attention = "eager": explicit matmul-mask-softmax-matmul

    def queries(self, x: torch.Tensor) -> torch.Tensor:
        """(b, s, h) -> (b, n, s, d_nope + d_rope), RoPE not yet applied."""
        b, s, _ = x.shape
        q = self.wq_b(self.q_norm(self.wq_a(x))) if self.q_rank else self.wq(x)
        return q.view(b, s, -1, self.nope + self.rope_dim).transpose(1, 2)

    def latent(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(b, s, h) -> the normalised latent c (b, 1, s, r_kv) and the RoPE key
        k_r (b, 1, s, d_rope), not yet rotated: what a KV cache stores."""
        c, k_r = self.wkv_a(x).split([self.kv_rank, self.rope_dim], dim=-1)
        return self.kv_norm(c)[:, None], self.shared_key(k_r)[:, None]

    def keys_values(self, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent (b, 1, t, r_kv) -> k_nope (b, n, t, d_nope) and v (b, n, t, d_v)."""
        b, _, t, _ = c.shape
        kv = self.wkv_b(c[:, 0]).view(b, t, -1, self.nope + self.v_dim).transpose(1, 2)
        return kv.split([self.nope, self.v_dim], dim=-1)

    def scores_values(self, q: torch.Tensor, k_nope: torch.Tensor, k_r: torch.Tensor,
                      v: torch.Tensor, offset: int = 0,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
        """softmax(q k^T / sqrt(d_nope + d_rope)) v over the local heads;
        q (b, n, s, ·) at positions offset.., k_r (b, 1, t, d_rope) already
        rotated; causal (or `mask`, True = attend). Returns (b, n, s, d_v)."""
        q_nope, q_r = q.split([self.nope, self.rope_dim], dim=-1)
        q = torch.cat([q_nope, rope_at(q_r, self.rope_theta, offset)], dim=-1)
        k = torch.cat([k_nope, k_r.expand(-1, k_nope.shape[1], -1, -1)], dim=-1)
        if mask is not None:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        if self.eager:
            return eager_attention(q, k, v)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def core(self, q: torch.Tensor, k_nope: torch.Tensor, k_r: torch.Tensor,
             v: torch.Tensor) -> torch.Tensor:
        """RoPE on k_r (b, 1, s, d_rope) and the query's RoPE part, causal
        attention: (b, n, s, d_v). What selective recompute redoes."""
        return self.scores_values(q, k_nope, rope_at(k_r, self.rope_theta), v)

    def output(self, y: torch.Tensor) -> torch.Tensor:
        """(b, n, s, d_v) -> (b, s, h)."""
        b, _, s, _ = y.shape
        return self.wo(y.transpose(1, 2).reshape(b, s, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.queries(x)
        c, k_r = self.latent(x)
        k_nope, v = self.keys_values(c)
        if self.recompute_core and torch.is_grad_enabled():
            y = checkpoint(self.core, q, k_nope, k_r, v, use_reentrant=False)
        else:
            y = self.core(q, k_nope, k_r, v)
        return self.output(y)
