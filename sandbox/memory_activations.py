"""Activation bytes one block keeps for its backward, per microbatch, per GPU.

Flash attention (`flash_activation_bytes_per_layer`, per tensor what autograd
saves for the runtime's block) or eager attention (`activation_bytes_per_layer`:
Korthikanti et al. 2022); MoE and MLA blocks from `sandbox.memory_moe`, the
recompute modes' kept tensors from `sandbox.recompute`. `sandbox.memory`
(stored activations) and `sandbox.memory_peak` (the re-materialised block)
use them; `sandbox.memory` re-exports the names. Units: bytes.
"""

from __future__ import annotations

from sandbox import memory_moe as mm
from sandbox import recompute as rc
from sandbox.sections import Model


def flash_activation_bytes_per_layer(m: Model, micro_batch: int, tp: int = 1,
                                     sequence_parallel: bool = False, recompute: str = "none",
                                     precision: str = "bf16", moe: bool = False,
                                     ep: int = 1) -> float:
    """Bytes one block keeps for backward with flash attention, per microbatch, per GPU.

    Per tensor (w = 2 bytes, 4 with fp32; per token unless named):
    - each norm (RMSNorm / LayerNorm) keeps its input (h w) and fp32 statistics
      (rstd: 4 bytes; LayerNorm mean and rstd: 8); the QKV and MLP-in linears
      keep their inputs, the norms' outputs (h w each). These live outside the
      tensor-parallel region: replicated, or split over tp with SP.
    - the flash kernel keeps Q and K after RoPE (q_dim w, kv_dim w), V
      (kv_dim w; GQA: the kv heads, not repeated), its output O (q_dim w,
      also the out-projection's input: one tensor, as Megatron-Core/TE and
      FlashAttention lay it out) and the fp32 logsumexp (4 bytes per head per
      token).
    - SwiGLU keeps the gate g (silu's input), the up projection u and silu(g)
      (the product's inputs) and the product (the down projection's input):
      4 f w; GeLU its input and output: 2 f w.
    - No dropout masks (the runtime's models have no dropout) and no s x s
      scores.
    Selective recompute (Megatron's: the attention core re-run in backward)
    keeps the core's inputs Q, K, V and its output O, which the out-projection
    stores anyway: it frees only the logsumexp, at the cost of a second flash
    forward. Full recompute keeps each layer's input (h w, split with SP);
    "op" what torchtitan's per-op policy saves (`sandbox.recompute`).
    A MoE block (`moe`) or MLA: `sandbox.memory_moe.block_bytes`.
    """
    s, b, h, f = m.seq_len, micro_batch, m.hidden, m.ffn_hidden
    sp = sequence_parallel and tp > 1
    if moe or m.kind == "mla":
        return mm.block_bytes(m, micro_batch, tp, sp, recompute, precision, moe, ep)
    w = 4 if precision == "fp32" else 2
    tokens = s * b
    if recompute == "op":
        return rc.op_saved_bytes_per_layer(m, micro_batch, tp, sequence_parallel, precision)
    if recompute == "full":
        return w * tokens * h / (tp if sp else 1)
    stats = 4 if m.norm == "rmsnorm" else 8
    outside = tokens * (2 * (h * w + stats) + 2 * h * w)
    core = w * tokens * (m.q_dim + 2 * m.kv_dim + m.q_dim)
    lse = 4 * tokens * m.heads if recompute == "none" else 0
    mlp = (4 if m.activation == "swiglu" else 2) * tokens * f * w
    return (outside / tp if sp else outside) + (core + lse + mlp) / tp


def activation_bytes_per_layer(m: Model, micro_batch: int, tp: int = 1,
                               sequence_parallel: bool = False, recompute: str = "none",
                               precision: str = "bf16", attention: str = "flash",
                               moe: bool = False, ep: int = 1) -> float:
    """Activation bytes one block keeps for its backward, per microbatch, per GPU:
    `flash_activation_bytes_per_layer`, or with `attention = "eager"`
    Korthikanti et al.'s tensors (s x s scores, softmax and dropout masks; a
    MoE block's FFN as `sandbox.memory_moe.eager_moe_delta` says)."""
    if attention == "flash":
        return flash_activation_bytes_per_layer(m, micro_batch, tp, sequence_parallel,
                                                recompute, precision, moe, ep)
    s, b, h, a, f = m.seq_len, micro_batch, m.hidden, m.heads, m.ffn_hidden
    sp = sequence_parallel and tp > 1
    scale = 2.0 if precision == "fp32" else 1.0
    if recompute == "full":
        return scale * 2 * s * b * h / (tp if sp else 1)
    # Outside the tensor-parallel region (replicated unless SP): two norm inputs,
    # the QKV and MLP inputs (2 bytes each) and two dropout masks (1 byte each).
    outside = s * b * h * (2 * 2 + 2 + 2 + 1 + 1)
    # Inside the region (split over tp): Q, K, V, the attention output projection's
    # input, and the MLP's hidden activations.
    mlp = 8 * s * b * f if m.activation == "swiglu" else 4 * s * b * f
    inside = 2 * s * b * (m.q_dim + 2 * m.kv_dim) + 2 * s * b * m.q_dim + mlp
    core = 5 * a * s * s * b if recompute == "none" else 0.0  # softmax, mask, dropout
    delta = mm.eager_moe_delta(m, s * b, tp, sp, scale) if moe else 0.0
    return scale * ((outside / tp if sp else outside) + (inside + core) / tp) + delta
