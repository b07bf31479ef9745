"""Parameter and FLOP counts of the runtime's transformer, as pure functions.

The counts follow the exact module structure of `runtime.model` (a test
checks `sum(p.numel())` against `param_count` for every preset). For GPT
presets the FLOPs equal Narayanan et al. (2021):
`72 B s l h^2 (1 + s/(6h) + V/(12 l h))`; GQA and SwiGLU use the same
per-matmul sum with their own shapes.

Which count is which:
- Model FLOPs (`model_flops_per_step`, hence MFU and `tflops_per_gpu`) count
  the attention scores over the full s x s square (Megatron-LM's and
  DESIGN's definition, which torchtitan reports too), whatever kernel runs.
- Hardware FLOPs (`hardware_flops_per_step`, HFU) add recomputed forward work
  on that same square basis (selective: the attention core; full: every block).
- Executed attention FLOPs (`attention_flops_executed`, `causal=True`): what a
  flash kernel runs and the simulator prices. Causal flash attention visits
  only the key tiles at or left of the diagonal (`causal_fraction`, about
  (s + tile) / (2 s)); its backward recomputes the scores and runs five GEMMs
  (S = Q K^T, dV = P^T dO, dP = dO V^T, dQ = dS K, dK = dS^T Q) against the
  forward's two: 2.5x the forward FLOPs (`FLASH_BACKWARD_RATIO`).
"""

from __future__ import annotations

from sandbox import recompute as rc
from sandbox.specs import Model


def norm_params(m: Model) -> int:
    """Weights of one normalisation layer (LayerNorm with bias has two vectors)."""
    return m.hidden * (2 if m.norm == "layernorm" and m.bias else 1)


def attention_params(m: Model) -> int:
    weights = m.hidden * (m.q_dim + 2 * m.kv_dim) + m.q_dim * m.hidden
    biases = (m.q_dim + 2 * m.kv_dim + m.hidden) if m.bias else 0
    return weights + biases


def mlp_params(m: Model) -> int:
    gated = m.activation == "swiglu"
    weights = (3 if gated else 2) * m.hidden * m.ffn_hidden
    biases = ((2 if gated else 1) * m.ffn_hidden + m.hidden) if m.bias else 0
    return weights + biases


def layer_params(m: Model) -> int:
    """One transformer block: two norms, attention and MLP."""
    return 2 * norm_params(m) + attention_params(m) + mlp_params(m)


def embedding_params(m: Model) -> int:
    """Token embedding plus learned position embedding (none with RoPE)."""
    return m.vocab * m.hidden + (m.seq_len * m.hidden if m.position == "learned" else 0)


def head_params(m: Model) -> int:
    """Output projection to the vocabulary (0 when tied to the embedding)."""
    return 0 if m.tied_embeddings else m.vocab * m.hidden


def param_count(m: Model) -> int:
    """Total parameters of the model, counting tied weights once."""
    return embedding_params(m) + m.layers * layer_params(m) + norm_params(m) + head_params(m)


# ------------------------------------------------------------------- FLOPs
def layer_matmul_flops_per_token(m: Model) -> float:
    """Forward FLOPs of one block's weight matmuls per token (2 per multiply-add)."""
    mlp_mats = 3 if m.activation == "swiglu" else 2
    return 2.0 * (m.hidden * (m.q_dim + 2 * m.kv_dim) + m.q_dim * m.hidden
                  + mlp_mats * m.hidden * m.ffn_hidden)


FLASH_TILE = 128  # key/query tile of FlashAttention-2/3 and cuDNN SDPA kernels (rows)
FLASH_BACKWARD_RATIO = 2.5  # backward GEMMs / forward GEMMs of a flash kernel: 5 / 2


def causal_fraction(seq_len: int, tile: int = FLASH_TILE) -> float:
    """Fraction of the s x s score square a causal tiled kernel computes.

    Query tile i (rows i*tile .. , `tile` or fewer) visits every key tile up
    to and including the diagonal one, i.e. min((i+1)*tile, s) keys; the
    masked half of a diagonal tile is computed and discarded. For s a
    multiple of the tile this is exactly (s + tile) / (2 s); 1 for s <= tile.
    """
    s = int(seq_len)
    done = sum(min(tile, s - q0) * min(q0 + tile, s) for q0 in range(0, s, tile))
    return done / (s * s)


def layer_attention_flops_per_token(m: Model, seq_len: int | None = None,
                                    causal: bool = False) -> float:
    """Forward FLOPs of Q K^T and scores x V per token: the full square (the
    model-FLOPs basis), or with `causal` what a causal flash kernel executes."""
    s = seq_len or m.seq_len
    return 2.0 * 2.0 * s * m.q_dim * (causal_fraction(s) if causal else 1.0)


def attention_flops_executed(m: Model, tokens: int, seq_len: int | None = None,
                             backward: bool = False) -> float:
    """FLOPs one block's causal flash attention kernel executes over `tokens`
    tokens (sequences of `seq_len`): forward, or with `backward` its backward
    (scores recomputed, 2.5x the forward)."""
    fwd = tokens * layer_attention_flops_per_token(m, seq_len, causal=True)
    return fwd * (FLASH_BACKWARD_RATIO if backward else 1.0)


def logits_flops_per_token(m: Model) -> float:
    return 2.0 * m.hidden * m.vocab


def forward_flops_per_token(m: Model) -> float:
    layer = layer_matmul_flops_per_token(m) + layer_attention_flops_per_token(m)
    return m.layers * layer + logits_flops_per_token(m)


def model_flops_per_step(m: Model, sequences: int) -> float:
    """Model FLOPs of one optimizer step over `sequences` sequences (fwd + 2x bwd)."""
    return 3.0 * sequences * m.seq_len * forward_flops_per_token(m)


def recompute_flops_per_token(m: Model, recompute: str, precision: str = "bf16") -> float:
    """Extra forward FLOPs per token spent re-computing activations ("layer":
    the blocks `sandbox.recompute.layer_checkpointed` of one rank holding all;
    "op": the linears torchtitan's per-op policy re-runs)."""
    block = layer_matmul_flops_per_token(m) + layer_attention_flops_per_token(m)
    if recompute == "full":  # every block's forward again (not the logits)
        return m.layers * block
    if recompute == "layer":
        return rc.layer_checkpointed(m.layers) * block
    if recompute == "op":
        return m.layers * rc.op_recompute_flops_per_token(m, precision)
    if recompute == "selective":  # Korthikanti et al.: the attention core only
        return m.layers * layer_attention_flops_per_token(m)
    return 0.0


def hardware_flops_per_step(m: Model, sequences: int, recompute: str,
                            precision: str = "bf16") -> float:
    """FLOPs the hardware executes, recomputation included, on the model-FLOPs
    basis (full attention square, backward = 2x forward; not the causal flash
    kernel's executed work, see `attention_flops_executed`).

    With full recompute this equals `96 B s l h^2 (1 + s/(6h) + V/(16 l h))`.
    """
    extra = sequences * m.seq_len * recompute_flops_per_token(m, recompute, precision)
    return model_flops_per_step(m, sequences) + extra


def narayanan_flops(sequences: int, seq_len: int, layers: int, hidden: int, vocab: int,
                    full_recompute: bool = False) -> float:
    """The closed forms of Narayanan et al. 2021, for checking GPT models."""
    b, s, l_, h, v = sequences, seq_len, layers, hidden, vocab
    if full_recompute:
        return 96.0 * b * s * l_ * h * h * (1 + s / (6 * h) + v / (16 * l_ * h))
    return 72.0 * b * s * l_ * h * h * (1 + s / (6 * h) + v / (12 * l_ * h))
