"""The decoder-only transformer the runtime trains, built from a `Model` spec.

GPT-2/3 style (learned positions, LayerNorm, GELU, biases, tied head) and
Llama style (RoPE, RMSNorm, SwiGLU, GQA, untied head) and DeepSeek's latent
attention (`runtime.layers.mla`, attention_kind "mla") share one module tree,
shaped the way torchtitan shapes its models so that parallelism can be
applied from outside:

    tok_embeddings, pos_embeddings (learned only), layers["0".."L-1"], norm, output

A pipeline stage deletes the parts it does not own (sets them to None, drops
layers from the ModuleDict) and `forward` skips what is missing. Attention
infers its local head count from the projection's output width, so the same
code runs unsharded and under DTensor column/row-wise tensor parallelism.
`sum(p.numel())` equals `sandbox.counts.param_count(spec)` exactly.
RoPE, the eager attention core and `FeedForward` live in `runtime.layers`
(shared with `runtime.layers.mla` and `runtime.layers.moe`) and are re-exported here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from runtime.layers.attention_core import apply_rope, eager_attention, rope_cos_sin
from runtime.layers.feed_forward import FeedForward
from runtime.layers.mla import LatentAttention
from runtime.layers.moe import MoE
from sandbox.experts import is_moe_layer
from sandbox.specs import Model


def make_norm(spec: Model) -> nn.Module:
    if spec.norm == "rmsnorm":
        return nn.RMSNorm(spec.hidden, eps=spec.norm_eps)
    return nn.LayerNorm(spec.hidden, eps=spec.norm_eps, bias=spec.bias)


class Attention(nn.Module):
    def __init__(self, spec: Model):
        super().__init__()
        self.head_dim = spec.head_dim
        self.rope_theta = spec.rope_theta if spec.position == "rope" else 0.0
        self.wq = nn.Linear(spec.hidden, spec.q_dim, bias=spec.bias)
        self.wk = nn.Linear(spec.hidden, spec.kv_dim, bias=spec.bias)
        self.wv = nn.Linear(spec.hidden, spec.kv_dim, bias=spec.bias)
        self.wo = nn.Linear(spec.q_dim, spec.hidden, bias=spec.bias)
        self.recompute_core = False  # selective recompute: redo softmax(QK^T)V in backward
        self.eager = False  # train.attention = "eager": explicit matmul-mask-softmax-matmul
        self.context = None  # context parallel (runtime.parallel.context.apply_cp)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """(b, s, n*head_dim) -> (b, n, s, head_dim); n is the local head count."""
        b, s, _ = x.shape
        return x.view(b, s, -1, self.head_dim).transpose(1, 2)

    def core(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        cp = self.context  # this rank holds two chunks of each sequence: their positions
        if self.rope_theta:
            cos, sin = (cp.rope(self.head_dim, self.rope_theta, q.device) if cp is not None else
                        rope_cos_sin(q.shape[2], self.head_dim, self.rope_theta, device=q.device))
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cp is not None:  # K/V of the other chunks over the cp group
            return cp.attention(q, k, v)
        if k.shape[1] != q.shape[1]:  # grouped-query attention
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
            v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
        if self.eager:
            return eager_attention(q, k, v)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.heads(self.wq(x)), self.heads(self.wk(x)), self.heads(self.wv(x))
        if self.recompute_core and torch.is_grad_enabled():
            y = checkpoint(self.core, q, k, v, use_reentrant=False)
        else:
            y = self.core(q, k, v)
        b, _, s, _ = y.shape
        return self.wo(y.transpose(1, 2).reshape(b, s, -1))


class Block(nn.Module):
    def __init__(self, spec: Model, layer: int = 0):
        super().__init__()
        self.attention_norm = make_norm(spec)
        self.attention = LatentAttention(spec) if spec.kind == "mla" else Attention(spec)
        self.ffn_norm = make_norm(spec)
        # block `layer` (global index) of a MoE model past its dense_layers: runtime.layers.moe
        self.feed_forward = MoE(spec) if is_moe_layer(spec, layer) else FeedForward(spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x))
        return x + self.feed_forward(self.ffn_norm(x))


class GPT(nn.Module):
    """Token ids (b, s) -> logits (b, s, vocab); a pipeline stage maps the
    hidden states it receives to hidden states or logits."""

    def __init__(self, spec: Model):
        super().__init__()
        self.spec = spec
        self.tok_embeddings: nn.Embedding | None = nn.Embedding(spec.vocab, spec.hidden)
        self.pos_embeddings: nn.Embedding | None = (
            nn.Embedding(spec.seq_len, spec.hidden) if spec.position == "learned" else None)
        self.layers = nn.ModuleDict({str(i): Block(spec, i) for i in range(spec.layers)})
        self.norm: nn.Module | None = make_norm(spec)
        self.output: nn.Linear | None = nn.Linear(spec.hidden, spec.vocab, bias=False)
        if spec.tied_embeddings:
            self.output.weight = self.tok_embeddings.weight

    def init_weights(self, seed: int) -> None:
        """GPT-2 initialisation: N(0, 0.02), residual projections / sqrt(2L).

        Deterministic for a seed and independent of any parallel layout, so
        every layout starts from the same weights.
        """
        gen = torch.Generator().manual_seed(seed)
        std = 0.02
        for name, p in self.named_parameters():
            if p.dim() == 1 or name.endswith("_bias"):  # (grouped experts' biases)
                nn.init.ones_(p) if name.endswith("norm.weight") else nn.init.zeros_(p)
                continue
            scale = std / math.sqrt(2 * self.spec.layers) if name.endswith(
                ("wo.weight", "fc2.weight", "w2.weight", "experts.w2", "experts.fc2")) else std
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=gen) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tok_embeddings is not None:
            h = self.tok_embeddings(x)
            if self.pos_embeddings is not None:
                h = h + self.pos_embeddings(torch.arange(x.shape[1], device=x.device))
        else:
            h = x
        for layer in self.layers.values():
            h = layer(h)
        if self.norm is not None:
            h = self.norm(h)
        return self.output(h) if self.output is not None else h


def build_model(spec: Model, seed: int = 0, device: str | torch.device = "cpu",
                attention: str = "flash") -> GPT:
    """A GPT with deterministic initial weights (on `meta`: shapes only); its
    attention core SDPA ("flash") or `eager_attention` ("eager")."""
    with torch.device(device):
        model = GPT(spec)
    for block in model.layers.values():
        block.attention.eager = attention == "eager"
    if str(device) != "meta":
        model.init_weights(seed)
    return model
