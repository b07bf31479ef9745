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

from sandbox import experts
from sandbox import recompute as rc
from sandbox.recompute import mla_projections
from sandbox.specs import Model


def norm_params(m: Model) -> int:
    """Weights of one normalisation layer (LayerNorm with bias has two vectors)."""
    return m.hidden * (2 if m.norm == "layernorm" and m.bias else 1)


def attention_params(m: Model) -> int:
    """One block's attention projections (MLA: its down / up projections and
    latent norms, `sandbox.experts`)."""
    if m.kind == "mla":
        return sum(i * o for i, o in mla_projections(m)) + m.kv_lora_rank + m.q_lora_rank
    weights = m.hidden * (m.q_dim + 2 * m.kv_dim) + m.q_dim * m.hidden
    biases = (m.q_dim + 2 * m.kv_dim + m.hidden) if m.bias else 0
    return weights + biases


def mlp_params(m: Model, ffn: int | None = None) -> int:
    """One FFN of width `ffn` (default the dense `ffn_hidden`; an expert's is
    `expert_ffn_hidden`)."""
    f = m.ffn_hidden if ffn is None else ffn
    gated = m.activation == "swiglu"
    weights = (3 if gated else 2) * m.hidden * f
    biases = ((2 if gated else 1) * f + m.hidden) if m.bias else 0
    return weights + biases


def router_params(m: Model) -> int:
    """A MoE block's router: hidden -> experts logits (with a bias when biased)."""
    return m.experts * (m.hidden + (1 if m.bias else 0))


def expert_params(m: Model) -> int:
    """One routed (or shared) expert's FFN."""
    return mlp_params(m, m.expert_ffn_hidden)


def moe_ffn_params(m: Model, routed: int | None = None) -> int:
    """A MoE block's FFN part: router, `routed` routed experts (default all)
    and the shared experts."""
    n = m.experts if routed is None else routed
    return router_params(m) + (n + m.shared_experts) * expert_params(m)


def layer_params(m: Model, moe: bool = False) -> int:
    """One transformer block: two norms, attention and the dense FFN, or with
    `moe` the MoE FFN (router, every routed and shared expert)."""
    ffn = moe_ffn_params(m) if moe else mlp_params(m)
    return 2 * norm_params(m) + attention_params(m) + ffn


def blocks_params(m: Model, layers: range, routed: int | None = None) -> int:
    """Parameters of the blocks with global indices `layers`; `routed` counts
    only that many routed experts per MoE block (an active count, or one
    expert-parallel rank's share)."""
    dense, moe = experts.layer_kinds(m, layers)
    moe_block = 2 * norm_params(m) + attention_params(m) + moe_ffn_params(m, routed)
    return dense * layer_params(m) + moe * moe_block


def routed_params_per_gpu(m: Model, tp: int, ep: int, blocks: range) -> float:
    """Routed-expert parameters one GPU holds of the global blocks `blocks`:
    per MoE block experts / ep experts, split over tp (expert TP = tp)."""
    return experts.layer_kinds(m, blocks)[1] * experts.local_experts(m, ep) * expert_params(m) / tp


def shared_block_params_per_gpu(m: Model, tp: int, blocks: range) -> float:
    """Parameters other than the routed experts one GPU holds of `blocks`:
    dense blocks whole, MoE blocks' attention, router and shared experts; the
    norms (and row-parallel biases) replicated over tp, the rest split."""
    replicated = 2 * norm_params(m) + (2 * m.hidden if m.bias else 0)
    n = len(blocks)
    return (blocks_params(m, blocks, 0) - n * replicated) / tp + n * replicated


def embedding_params(m: Model) -> int:
    """Token embedding plus learned position embedding (none with RoPE)."""
    return m.vocab * m.hidden + (m.seq_len * m.hidden if m.position == "learned" else 0)


def head_params(m: Model) -> int:
    """Output projection to the vocabulary (0 when tied to the embedding)."""
    return 0 if m.tied_embeddings else m.vocab * m.hidden


def param_count(m: Model) -> int:
    """Total parameters of the model, counting tied weights once."""
    return (embedding_params(m) + blocks_params(m, range(m.layers)) + norm_params(m)
            + head_params(m))


def active_params(m: Model) -> int:
    """Parameters one token uses: every weight except the routed experts it
    does not visit (top-k of them per MoE block). The token embedding table
    counts whole, as Mistral, Qwen and DeepSeek count "activated" parameters
    (`active_params_excl_embedding` drops it). Equals `param_count` for a
    dense model."""
    return (embedding_params(m) + blocks_params(m, range(m.layers), m.experts_per_token)
            + norm_params(m) + head_params(m))


def active_params_excl_embedding(m: Model) -> int:
    """`active_params` without the input embedding table (a lookup, not a
    matmul); OpenAI's gpt-oss model card counts "active parameters" this way.
    With tied embeddings the shared matrix stays (the head multiplies by it)."""
    table = 0 if m.tied_embeddings else m.vocab * m.hidden
    return active_params(m) - table


# ------------------------------------------------------------------- FLOPs
def layer_matmul_flops_per_token(m: Model, moe: bool = False) -> float:
    """Forward FLOPs of one block's weight matmuls per token (2 per
    multiply-add); with `moe` a MoE block's: router, top-k routed and the
    shared experts (the active FLOPs everyone reports MoE MFU on)."""
    if m.kind == "mla":
        attention = sum(i * o for i, o in mla_projections(m))
    else:
        attention = m.hidden * (m.q_dim + 2 * m.kv_dim) + m.q_dim * m.hidden
    mlp_mats = 3 if m.activation == "swiglu" else 2
    if moe:
        ffn = (m.experts * m.hidden
               + (m.experts_per_token + m.shared_experts) * mlp_mats * m.hidden
               * m.expert_ffn_hidden)
    else:
        ffn = mlp_mats * m.hidden * m.ffn_hidden
    return 2.0 * (attention + ffn)


def blocks_matmul_flops_per_token(m: Model, layers: range) -> float:
    """Forward weight-matmul FLOPs per token of the blocks `layers` (dense and
    MoE blocks each at their own count)."""
    dense, moe = experts.layer_kinds(m, layers)
    flops = dense * layer_matmul_flops_per_token(m) if dense else 0.0
    return flops + (moe * layer_matmul_flops_per_token(m, moe=True) if moe else 0.0)


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
    pv = m.heads * m.v_head_dim if m.kind == "mla" else m.q_dim  # scores x V width
    return 2.0 * s * (m.q_dim + pv) * (causal_fraction(s) if causal else 1.0)


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
    """Forward model FLOPs per token: every block (MoE blocks on their active
    experts) and the logits."""
    return (blocks_matmul_flops_per_token(m, range(m.layers))
            + m.layers * layer_attention_flops_per_token(m) + logits_flops_per_token(m))


def model_flops_per_step(m: Model, sequences: int) -> float:
    """Model FLOPs of one optimizer step over `sequences` sequences (fwd + 2x bwd)."""
    return 3.0 * sequences * m.seq_len * forward_flops_per_token(m)


def recompute_flops_per_token(m: Model, recompute: str, precision: str = "bf16") -> float:
    """Extra forward FLOPs per token spent re-computing activations ("layer":
    the blocks `sandbox.recompute.layer_checkpointed` of one rank holding all;
    "op": the linears torchtitan's per-op policy re-runs)."""
    attn = layer_attention_flops_per_token(m)
    block = blocks_matmul_flops_per_token(m, range(m.layers)) / m.layers + attn  # mean block
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
