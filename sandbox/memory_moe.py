"""Memory terms of mixture-of-experts blocks and multi-head latent attention
(bytes unless named otherwise; `sandbox.memory` adds them up per GPU).

Parameters (per GPU): a MoE block (`sandbox.experts.is_moe_layer`) holds its
norms, attention, router and shared experts as dense weights (split over tp
like the dense block, the router replicated: Megatron-Core's `TopKRouter`
and torchtitan's gate are plain weights on every tensor-parallel rank) and
`experts / ep` routed experts, each split over tp (expert tensor parallelism
= tp). MLA's down-projections (wq_a, wkv_a) and latent norms are replicated
over tp (torchtitan's DeepSeek-V3 plan `NoParallel`; Megatron-Core's
`linear_q_down_proj` / `linear_kv_down_proj` "duplicated"). ZeRO shards the
dense states over dp x cp (`Parallel.shard_size`) and the routed experts'
over their expert-data-parallel group, dp / ep x cp ranks
(`sandbox.layout.expert_grad_groups`; HSDP: dp_shard / ep x cp, torchtitan's
`dp_shard_mod_ep`), `expert_shard_size`.

Activations of a MoE block per micro-batch, per tensor-parallel rank (w = 2
bytes, 4 with fp32; per token of the micro-batch; "outside" tensors are
replicated over tp, or split over tp with sequence parallelism like the dense
block's norms; "inside" ones are split over tp), `moe_ffn_bytes`:
- outside: the router's fp32 softmax (or sigmoid) output, 4 E (its input is
  the FFN norm's output, counted by the block already; the bf16 logits are
  not kept: softmax's backward uses its output), the top-k indices and
  gates, k (8 + 4), the permuted token copies the experts' first GEMMs read,
  r h w, and the combine's input, the experts' outputs before the gate-weighted
  sum (kept for the gates' gradient), r h w; r = k routed copies per token
  (under balanced routing a rank receives as many as it sends), or with
  `capacity_factor` > 0 the capacity-padded buffers, E x capacity =
  capacity_factor x k (GShard / Switch's [E, C, h] layout).
- inside: the routed experts' intermediates as the dense FFN counts them
  (SwiGLU: gate, up, silu(gate) and the product, 4 f_e w per routed copy;
  GeLU 2 f_e w) and the shared experts as one dense FFN of width
  shared_experts x f_e (torchtitan's `shared_experts` FeedForward).
MLA's attention (`mla_attention_bytes`, shapes of `counts.mla_projections`):
outside, the q latent (q_norm's input r_q w, its fp32 rstd, its output r_q w)
and the kv latent with the RoPE key (wkv_a's output, (r_kv + d_rope) w, held
by kv_norm's saved input view, the rstd, kv_norm's output r_kv w); inside,
the up-projected q and k after RoPE as the flash kernel saves them
(heads x (d_nope + d_rope) w each), the value, a view of wkv_b's output that
keeps all of it alive (heads x (d_nope + d_v) w), the output O (heads x d_v w)
and the fp32 logsumexp (4 bytes per head).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sandbox import counts, experts
from sandbox import recompute as rc
from sandbox.experts import routed_rows
from sandbox.layout import chunk_ids, chunk_layers, stage_blocks
from sandbox.memory_params import layer_params_per_gpu, mla_replicated_params, stage_params_per_gpu
from sandbox.sections import Model

if TYPE_CHECKING:
    from sandbox.specs import Plan


# ------------------------------------------------------------------ parameters
def _ffn_out_bias(m: Model) -> int:
    return m.hidden if m.bias else 0


def moe_block_dense_params_per_gpu(m: Model, tp: int) -> float:
    """A MoE block's non-routed weights on one tensor-parallel rank: norms,
    attention, router (replicated), shared experts (split over tp)."""
    replicated = (2 * counts.norm_params(m) + (m.hidden if m.bias else 0)
                  + mla_replicated_params(m) + counts.router_params(m)
                  + m.shared_experts * _ffn_out_bias(m))
    whole = (2 * counts.norm_params(m) + counts.attention_params(m) + counts.router_params(m)
             + m.shared_experts * counts.expert_params(m))
    return (whole - replicated) / tp + replicated


def routed_params_per_gpu(m: Model, tp: int, ep: int) -> float:
    """The routed experts one GPU holds per MoE block: experts / ep of them,
    each split over tp but its output bias."""
    bias = _ffn_out_bias(m)
    return experts.local_experts(m, ep) * ((counts.expert_params(m) - bias) / tp + bias)


def stage_block_indices(plan: Plan, stage: int) -> list[int]:
    """Global indices of the blocks pipeline rank `stage` holds (all its chunks)."""
    p = plan.parallel
    chunks = chunk_layers(plan)
    return [i for c in chunk_ids(stage, p.pp, p.vpp) for i in chunks[c]]


def stage_kinds(plan: Plan, stage: int) -> tuple[int, int]:
    """(dense blocks, MoE blocks) of pipeline rank `stage`."""
    if not plan.model.moe:
        return stage_blocks(plan, stage), 0
    idx = stage_block_indices(plan, stage)
    moe = sum(1 for i in idx if experts.is_moe_layer(plan.model, i))
    return len(idx) - moe, moe


def expert_shard_size(plan: Plan) -> int:
    """Ranks one ZeRO shard group of the routed experts spans: the
    expert-data-parallel replicas, (dp_shard or dp) / ep, times cp."""
    p = plan.parallel
    return max(1, (p.dp_shard or p.dp) // p.ep) * p.cp


def block_params_per_gpu(m: Model, tp: int, ep: int, moe: bool) -> float:
    """One block's parameters on one GPU (the FSDP unit ZeRO-3 gathers): a
    dense block, or a MoE block with its local routed experts."""
    if not moe:
        return layer_params_per_gpu(m, tp)
    return moe_block_dense_params_per_gpu(m, tp) + routed_params_per_gpu(m, tp, ep)


def block_linear_weights_per_gpu(m: Model, tp: int, ep: int, moe: bool) -> float:
    """Weights of one block's linear layers on one GPU (what FP8 training
    casts): attention (MLA: its projections, the down-projections whole),
    the FFN, or a MoE block's shared and local routed experts (the router
    stays 16-bit: torchtitan's float8 filter skips `router.gate`)."""
    attn = (sum(i * o for i, o in counts.mla_projections(m)) if m.kind == "mla"
            else m.hidden * (m.q_dim + 2 * m.kv_dim) + m.q_dim * m.hidden)
    rep = mla_replicated_params(m) - m.q_lora_rank - m.kv_lora_rank
    mats = 3 if m.activation == "swiglu" else 2
    if moe:
        ffn = (m.shared_experts + experts.local_experts(m, ep)) * mats * m.hidden \
            * m.expert_ffn_hidden
    else:
        ffn = mats * m.hidden * m.ffn_hidden
    return (attn - rep + ffn) / tp + rep


def stage_params_split(plan: Plan, stage: int) -> tuple[float, float]:
    """(dense, routed-expert) parameters one GPU of `stage` holds unsharded:
    embedding / head, dense blocks and MoE blocks' dense parts; the local
    routed experts. A dense model: (`stage_params_per_gpu`, 0)."""
    m, p = plan.model, plan.parallel
    dense, moe = stage_kinds(plan, stage)
    n = stage_params_per_gpu(m, p.tp, p.pp, stage, float(dense))
    if not moe:
        return n, 0.0
    return (n + moe * moe_block_dense_params_per_gpu(m, p.tp),
            moe * routed_params_per_gpu(m, p.tp, p.ep))


def _kinds_of(plan: Plan, stage: int | None) -> list[bool]:
    """Block kinds (moe?) present on `stage`, or in the model (None)."""
    m = plan.model
    if stage is None:
        return [False, True] if m.moe and m.dense_layers else [m.moe]
    dense, moe = stage_kinds(plan, stage)
    return [k for k, n in ((False, dense), (True, moe)) if n] or [False]


def unit_params(plan: Plan, stage: int | None = None) -> float:
    """The largest block unit (parameters per GPU, the FSDP unit ZeRO-3
    gathers) of `stage`, or of the model."""
    p = plan.parallel
    return max(block_params_per_gpu(plan.model, p.tp, p.ep, k) for k in _kinds_of(plan, stage))


def unit_bytes(plan: Plan, wb: int, fp8_gather: bool, stage: int | None = None) -> float:
    """Bytes of the largest gathered block unit: 16-bit (`wb` bytes), its
    linear weights 1 byte with torchao's fp8 all-gather."""
    m, p = plan.model, plan.parallel
    cut = (wb - 1) if fp8_gather else 0
    return max(block_params_per_gpu(m, p.tp, p.ep, k) * wb
               - block_linear_weights_per_gpu(m, p.tp, p.ep, k) * cut
               for k in _kinds_of(plan, stage))


def stage_blocks_params(plan: Plan, stage: int) -> float:
    """Parameters per GPU of all the blocks of `stage` (no embedding / head)."""
    m, p = plan.model, plan.parallel
    dense, moe = stage_kinds(plan, stage)
    return sum(n * block_params_per_gpu(m, p.tp, p.ep, k)
               for k, n in ((False, dense), (True, moe)) if n)


def stage_linear_weights(plan: Plan, stage: int) -> float:
    """Linear weights per GPU of all the blocks of `stage`."""
    m, p = plan.model, plan.parallel
    dense, moe = stage_kinds(plan, stage)
    return sum(n * block_linear_weights_per_gpu(m, p.tp, p.ep, k)
               for k, n in ((False, dense), (True, moe)) if n)


def largest_linear_weights(plan: Plan) -> float:
    """Linear weights per GPU of the model's largest block (FP8's cast copy)."""
    p = plan.parallel
    return max(block_linear_weights_per_gpu(plan.model, p.tp, p.ep, k)
               for k in _kinds_of(plan, None))


# ----------------------------------------------------------------- activations
def _mlp_factor(m: Model) -> int:
    return 4 if m.activation == "swiglu" else 2


def moe_ffn_bytes(m: Model, tokens: float, w: int) -> tuple[float, float]:
    """(outside, inside) bytes a MoE block's FFN keeps for `tokens` tokens, w
    bytes per 16-bit value; outside is split over tp with SP, inside always
    (see the module docstring). Excludes the FFN norm's output (the block's)."""
    r, h = routed_rows(m), m.hidden
    outside = tokens * (4 * m.experts + m.experts_per_token * 12 + 2 * r * h * w)
    inside = tokens * _mlp_factor(m) * w * m.expert_ffn_hidden * (r + m.shared_experts)
    return outside, inside


def mla_attention_bytes(m: Model, tokens: float, w: int, lse: bool) -> tuple[float, float]:
    """(outside, inside) bytes MLA's attention keeps for `tokens` tokens
    (excluding the attention norm's output); `lse`: the flash logsumexp too."""
    outside = tokens * w * (m.kv_lora_rank + m.qk_rope_head_dim + m.kv_lora_rank) + tokens * 4
    if m.q_lora_rank:
        outside += tokens * (2 * m.q_lora_rank * w + 4)
    kv_up = m.heads * (m.head_dim + m.v_head_dim)
    inside = tokens * w * (m.q_dim + m.kv_dim + kv_up + m.v_dim)
    return outside, inside + (tokens * 4 * m.heads if lse else 0.0)


def op_saved_bytes(m: Model, tokens: float, tp: int, sp: bool, w: int, moe: bool,
                   ep: int = 1, precision: str = "bf16") -> float:
    """Bytes a MoE and / or MLA block keeps under "op" (torchtitan's per-op
    SAC), per GPU: its input, every kept matmul output (`recompute.op_saved_mms`:
    column-parallel out/tp columns, row-parallel full-width partial sums,
    replicated full width; routed ones per routed copy), the flash output O
    and logsumexp, with SP the two reduce-scatter outputs, and for a MoE block
    what torchtitan's save list keeps besides (`_get_default_save_ops`):
    `aten.topk`'s indices and values (k (8 + 4) per token) and, with ep > 1,
    the dispatch and combine `all_to_all_single` outputs (r h w each)."""
    x = tokens * m.hidden * w / (tp if sp else 1)
    kept = set(rc.op_saved_mms(m, moe, precision))
    lin = 0.0
    for name, out, _k, split, rows in rc.block_mms(m, moe):
        if name in kept:
            lin += tokens * rows * w * (out / tp if split == "col" else out)
    o_dim = m.v_dim if m.kind == "mla" else m.q_dim  # the flash output O, heads x d_v
    sdpa = tokens * (w * o_dim + 4 * m.heads) / tp
    rs = 2 * tokens * m.hidden * w / tp if sp else 0.0
    extra = 0.0
    if moe:
        per = m.experts_per_token * 12 + (2 * routed_rows(m) * m.hidden * w if ep > 1 else 0)
        extra = tokens * per / (tp if sp else 1)
    return x + lin + sdpa + rs + extra


def block_bytes(m: Model, micro_batch: int, tp: int, sp: bool, recompute: str,
                precision: str, moe: bool, ep: int = 1) -> float:
    """Bytes one MoE and / or MLA block keeps for backward per micro-batch
    per GPU, flash attention (the dense block:
    `sandbox.memory_activations.flash_activation_bytes_per_layer`)."""
    tokens = m.seq_len * micro_batch
    w = 4 if precision == "fp32" else 2
    if recompute == "op":
        return op_saved_bytes(m, tokens, tp, sp, w, moe, ep, precision)
    if recompute == "full":
        return w * tokens * m.hidden / (tp if sp else 1)
    stats = 4 if m.norm == "rmsnorm" else 8
    outside = tokens * (2 * (m.hidden * w + stats) + 2 * m.hidden * w)
    lse = recompute == "none"
    if m.kind == "mla":
        o_att, inside = mla_attention_bytes(m, tokens, w, lse)
        outside += o_att
    else:
        inside = w * tokens * (2 * m.q_dim + 2 * m.kv_dim) + (4 * tokens * m.heads if lse else 0)
    if moe:
        o_ffn, i_ffn = moe_ffn_bytes(m, tokens, w)
        outside, inside = outside + o_ffn, inside + i_ffn
    else:
        inside += _mlp_factor(m) * tokens * m.ffn_hidden * w
    return (outside / tp if sp else outside) + inside / tp


def working_bytes(m: Model, micro_batch: int, tp: int, sp: bool, recompute: str,
                  precision: str, moe: bool, ep: int = 1) -> float:
    """Bytes of the one MoE / MLA block-microbatch backward re-materialises
    ("full", "layer", "op"): everything a plain block keeps but what stays
    stored anyway (the block input; with "op" the kept tensors)."""
    full = block_bytes(m, micro_batch, tp, sp, "none", precision, moe, ep)
    kept = block_bytes(m, micro_batch, tp, sp, "op" if recompute == "op" else "full",
                       precision, moe, ep)
    return max(0.0, full - kept)


def plan_working_bytes(plan: Plan) -> float:
    """`working_bytes` of the plan's largest block kind (dense or MoE)."""
    m, p, t = plan.model, plan.parallel, plan.train
    sp = p.sequence_parallel and p.tp > 1
    return max(working_bytes(m, p.micro_batch, p.tp, sp, p.recompute, t.precision, k, p.ep)
               for k in _kinds_of(plan, None))


def fp8_gathered_bytes(plan: Plan, stage: int, n: float, wb: int, whole: bool) -> float:
    """ZeRO-3 gathered bytes of a MoE model with torchao's fp8 all-gather: the
    stage's `n` parameters (`whole`: kept gathered) or two of its largest units
    (block or root), the blocks' linear weights 1 byte, the rest `wb`."""
    if whole:
        return n * wb - stage_linear_weights(plan, stage) * (wb - 1)
    root = (n - stage_blocks_params(plan, stage)) * wb
    return 2 * max(unit_bytes(plan, wb, True, stage), root)


def eager_moe_delta(m: Model, tokens: float, tp: int, sp: bool, scale: float) -> float:
    """Eager-attention (Korthikanti) accounting of a MoE block: its FFN
    tensors (`moe_ffn_bytes`, 16-bit) instead of the dense MLP's 8 s b f."""
    o_ffn, i_ffn = moe_ffn_bytes(m, tokens, 2)
    dense = (8 if m.activation == "swiglu" else 4) * tokens * m.ffn_hidden
    return scale * ((o_ffn / tp if sp else o_ffn) + (i_ffn - dense) / tp)
