"""Memory per GPU by component, as pure functions (bytes unless named _gb).

- Weights, gradients and optimizer states follow Megatron-LM's mixed
  precision (its distributed-optimizer table): bf16 keeps 16-bit weights,
  fp32 gradients (`accumulate_allreduce_grads_in_fp32`, forced for bf16),
  fp32 master weights plus two fp32 Adam moments (2 + 4 + 12 = 18 bytes per
  parameter); fp16 accumulates and all-reduces 16-bit gradients and the
  optimizer keeps an fp32 copy of them for the master weights
  (2 + 2 + 16 = 20); fp32 training keeps 4 + 4 + 8. ZeRO 1 shards the
  optimizer states over dp, ZeRO 2 also the gradients, ZeRO 3 also the
  weights, plus the FSDP units it holds gathered (`zero3_gathered_params`);
  HSDP (`parallel.dp_shard`) over dp_shard ranks. MoE / MLA: `sandbox.memory_moe`.
- FP8 (`precision = "fp8"`, torchao Float8Linear as torchtitan runs it):
  weights, gradients and optimizer as bf16, plus the fp8 cast of the block
  in use (`fp8_weight_copy_bytes`); activations as bf16, because torchao
  saves the bf16 input and weight for backward and casts again there
  (`matmul_with_hp_or_float8_args`; Transformer Engine instead saves the
  fp8 input casts, which this model does not follow); per-op SAC keeps the
  same linear outputs as bf16 (`sandbox.recompute`).
- Not modelled: torchtitan's logged "memory" is the caching allocator's
  `reserved_bytes.all.peak` (metrics.py, `max_reserved_gib`), allocated
  plus fragmentation, which no shape gives; this model is the allocated peak.
- Activations per layer with `train.attention = "flash"` (the default):
  per tensor what autograd saves for the runtime's block, written out in
  `flash_activation_bytes_per_layer`; no s x s tensor is ever stored.
- Activations per layer with `attention = "eager"` follow Korthikanti et
  al. (2022), written per tensor so that GQA and SwiGLU shapes fit: for a GPT block this is exactly
  `s b h (34 + 5 a s / h)` bytes without parallelism,
  `s b h (10 + 24/t + 5 a s / (h t))` with tensor parallelism,
  `s b h / t (34 + 5 a s / h)` with sequence parallelism as well; selective
  recompute drops the `5 a s^2 b` attention-core term, full recompute keeps
  only each layer's input (`2 s b h`, divided by t with SP). The paper's
  figures are for 16-bit activations; fp32 doubles them.
- Microbatches in flight on pipeline stage i: GPipe all m, 1F1B and ZB-H1
  min(p - i, m), interleaved 1F1B (p - i - 1) * 2 + (v - 1) * p + 1 model
  chunks (Megatron-LM's warm-up count), each chunk of the blocks the layout
  gives it (`sandbox.layout.rank_chunk_sizes`; 1/v of the stage's layers
  when they divide evenly).
- Context parallelism (`parallel.cp`): activations and logits of s / cp
  tokens per GPU; ZeRO shards over the dp x cp ranks of a stage; the
  all-gather method's gathered K, V and dK, dV in a block's backward
  (`cp_gather_bytes`, part of `other`).
- Recompute "op" and "layer" (torchtitan's selective options) keep what
  `sandbox.recompute` says; "layer" mixes fully checkpointed and plain blocks.
- The peak's working set besides the stored tensors (flash plans; eager
  plans keep Korthikanti's and Megatron's accounting, stored tensors only and
  fp32 logits): the block being re-materialised in backward
  (`recompute_working_bytes`), the cross-entropy's logits tensors
  (`loss_bytes`), and FSDP2's unsharded gradient of the unit being reduced
  (`fsdp_reduce_bytes`); the loss and a block's backward do not overlap, so
  the larger of the two (`backward_working_bytes`, reported as `other`).
  All bytes from shapes, no allocator factor.
"""

from __future__ import annotations

from sandbox import counts
from sandbox import memory_moe as mm
from sandbox import recompute as rc
from sandbox.layout import stage_blocks, stage_chunk_sizes
from sandbox.specs import Model, Plan

GB = 1e9


def weight_bytes_per_param(precision: str) -> int:
    return 4 if precision == "fp32" else 2


def grad_bytes_per_param(precision: str) -> int:
    """Bytes of one accumulated gradient, which is also what the data-parallel
    reduction sends per value: Megatron's main_grad is fp32 except with fp16,
    where gradients stay 16-bit unless asked otherwise."""
    return 2 if precision == "fp16" else 4


def optimizer_bytes_per_param(precision: str, optimizer: str = "adamw") -> int:
    """Optimizer moments plus, when weights are 16-bit, an fp32 master copy
    (and with fp16 the fp32 copy of the 16-bit gradient the master steps on)."""
    states = 8 if optimizer == "adamw" else 4
    return states + {"fp32": 0, "fp16": 8}.get(precision, 4)


def layer_params_per_gpu(m: Model, tp: int) -> float:
    """One block's parameters held by one tensor-parallel rank.

    Weight matrices and column-parallel biases are split over tp; the
    row-parallel output biases and the norms are replicated (Megatron-LM).
    """
    replicated = 2 * counts.norm_params(m) + (2 * m.hidden if m.bias else 0)
    replicated += mm.mla_replicated_params(m)  # MLA's down-projections (0 without)
    return (counts.layer_params(m) - replicated) / tp + replicated


def stage_layer_count(plan: Plan, stage: int) -> float:
    """Blocks of pipeline stage `stage` (`sandbox.layout.stage_layers`)."""
    return float(stage_blocks(plan, stage))


def stage_params_per_gpu(m: Model, tp: int, pp: int, stage: int,
                         layers: float | None = None) -> float:
    """Parameters held by one GPU of pipeline stage `stage` (0-based) with
    `layers` blocks (default: an even split, layers / pp)."""
    n = (m.layers / pp if layers is None else layers) * layer_params_per_gpu(m, tp)
    position = m.seq_len * m.hidden if m.position == "learned" else 0
    if stage == 0:
        n += m.vocab * m.hidden / tp + position  # vocab-parallel embedding
    if stage == pp - 1:
        n += counts.norm_params(m)
        if not m.tied_embeddings or pp > 1:  # tied + pp > 1: last stage keeps a copy
            n += m.vocab * m.hidden / tp
    return n


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


def layers_in_flight(plan: Plan, stage: int) -> float:
    """Layer-microbatches of activations stage `stage` holds at its peak."""
    p, v, m = plan.parallel.pp, plan.parallel.vpp, plan.parallel.microbatches
    layers_per_stage = stage_layer_count(plan, stage)
    sched = plan.parallel.schedule
    if p == 1:
        return layers_per_stage  # gradient accumulation frees each microbatch
    if sched == "gpipe":
        return layers_per_stage * m
    if sched == "interleaved-1f1b":
        # The k-th forward of rank `stage` runs its chunk (k // p) % v (Megatron's
        # get_model_chunk_id); at the peak the first `chunks` forwards are held.
        chunks = min(m * v, (p - stage - 1) * 2 + (v - 1) * p + 1)
        sizes = stage_chunk_sizes(plan, stage)
        return float(sum(sizes[(k // p) % v] for k in range(chunks)))
    return layers_per_stage * min(p - stage, m)  # 1f1b, zero-bubble (ZB-H1)


def zero3_pipelined(plan: Plan) -> bool:
    """ZeRO-3 (FSDP2) under pipeline parallelism as torch.distributed.pipelining
    drives it (`PipelineStage.backward_maybe_with_nosync`: every backward runs
    without gradient sync or reshard; `perform_reduce_grad` after a chunk's
    last backward; torchtitan sets reshard_after_forward = False with pp): each
    chunk gathered once per step and kept unsharded, gradients accumulated
    unsharded in fp32 and reduce-scattered once per step."""
    p = plan.parallel
    return p.zero >= 3 and p.shard_size > 1 and p.pp > 1


def zero3_gathered_params(plan: Plan, stage: int, n: float) -> float:
    """ZeRO-3 (FSDP2): unsharded parameters a GPU of `stage` (n parameters
    per GPU unsharded) holds at its peak beside its shard. With
    `reshard_after_forward` two FSDP units (the one computing, the one
    prefetched; the largest unit: a block, or the root's embedding / head);
    without it the stage's full parameters, kept from forward to backward of
    a micro-batch, and under pipeline parallelism (`zero3_pipelined`: kept
    through the step). 0 with zero < 3 or no sharding (dp x cp, or dp_shard x cp, 1)."""
    m, p = plan.model, plan.parallel
    if p.zero < 3 or p.shard_size == 1:
        return 0.0
    if not p.reshard_after_forward or zero3_pipelined(plan):
        return n
    if m.moe:  # MoE blocks: each with its local routed experts (`sandbox.memory_moe`)
        return 2 * max(mm.unit_params(plan, stage), n - mm.stage_blocks_params(plan, stage))
    root = n - stage_layer_count(plan, stage) * layer_params_per_gpu(m, p.tp)
    return 2 * max(layer_params_per_gpu(m, p.tp), root)


def linear_weights_per_gpu(m: Model, tp: int) -> float:
    """Weights of one block's linear layers (QKV, attention output, MLP) on
    one tensor-parallel rank: what FP8 training casts (no biases, no norms)."""
    return counts.layer_matmul_flops_per_token(m) / 2 / tp


def zero3_gathered_bytes(plan: Plan, stage: int, n: float) -> float:
    """Bytes of `zero3_gathered_params`: 16-bit, except the linear weights
    with `train.fp8_all_gather` (torchao all-gathers them cast to fp8, 1
    byte; the embedding / head root unit stays bf16)."""
    m, p, t = plan.model, plan.parallel, plan.train
    wb = weight_bytes_per_param(t.precision)
    gathered = zero3_gathered_params(plan, stage, n)
    if not (gathered and t.precision == "fp8" and t.fp8_all_gather):
        return gathered * wb
    if m.moe:
        return mm.fp8_gathered_bytes(plan, stage, n, wb,
                                     not p.reshard_after_forward or zero3_pipelined(plan))
    block = layer_params_per_gpu(m, p.tp) * wb - linear_weights_per_gpu(m, p.tp) * (wb - 1)
    if not p.reshard_after_forward or zero3_pipelined(plan):
        return n * wb - stage_layer_count(plan, stage) * linear_weights_per_gpu(m, p.tp) * (wb - 1)
    root = (n - stage_layer_count(plan, stage) * layer_params_per_gpu(m, p.tp)) * wb
    return 2 * max(block, root)


def fp8_weight_copy_bytes(plan: Plan) -> float:
    """FP8 training's cast weights (1 byte each) of the block in use, beside
    its 16-bit weights: torchao's Float8Linear casts every weight per GEMM
    (its backward casts them again from the saved bf16 weight), unsharded.
    0 without fp8, and with ZeRO-3's fp8 all-gather (the gathered unit is
    the fp8 copy, counted by `zero3_gathered_bytes`)."""
    p, t = plan.parallel, plan.train
    if t.precision != "fp8" or (t.fp8_all_gather and p.zero >= 3 and p.shard_size > 1):
        return 0.0
    if plan.model.moe:
        return mm.largest_linear_weights(plan)
    return linear_weights_per_gpu(plan.model, p.tp)


def memory_per_gpu(plan: Plan, stage: int | None = None) -> dict:
    """Memory of one GPU in GB by component, for `stage` or the most loaded one.

    Returns `{params, grads, optimizer, activations, other, total, stage}`;
    `activations` are the stored ones, `other` the backward's working set
    on top of them (`backward_working_bytes`).
    """
    if stage is None:
        stages = range(plan.parallel.pp)
        return max((memory_per_gpu(plan, s) for s in stages), key=lambda d: d["total"])
    p, t = plan.parallel, plan.train
    # dense parameters and the local routed experts (`sandbox.memory_moe`; 0 if dense)
    n_dense, n_exp = mm.stage_params_split(plan, stage)
    n = n_dense + n_exp
    shard = p.shard_size  # ZeRO shards over dp x cp, or HSDP's dp_shard x cp
    eshard = mm.expert_shard_size(plan)  # routed experts: over dp / ep x cp
    wb, gb = weight_bytes_per_param(t.precision), grad_bytes_per_param(t.precision)
    ob = optimizer_bytes_per_param(t.precision, t.optimizer)
    if p.zero >= 3 and t.precision != "fp32":
        # FSDP2 (MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)): the sharded
        # parameter and its gradient stay fp32 and the parameter is the optimizer's
        # master; only the gathered units are 16-bit: 4 + 4 + 8 bytes per parameter
        # with AdamW (Megatron's mixed precision: 2 + 4 + 12).
        wb, gb, ob = 4, 4, optimizer_bytes_per_param("fp32", t.optimizer)

    def sharded(per: float, stage_from: int) -> float:  # ZeRO shards from this stage on
        on = p.zero >= stage_from
        return n_dense * per / (shard if on else 1) + n_exp * per / (eshard if on else 1)
    params = sharded(wb, 3)
    params += zero3_gathered_bytes(plan, stage, n) + fp8_weight_copy_bytes(plan)
    grads = sharded(gb, 2)
    if zero3_pipelined(plan):  # FSDP2's unsharded accumulator, upcast to the fp32 reduce dtype
        grads += n * 4  # (`FSDPParam.to_accumulated_grad_if_needed`)
    optim = sharded(ob, 1)
    # context parallelism: a rank keeps s / cp of every activation (its attention
    # core's queries against all keys: 1/cp of the scores too)
    acts = stored_bytes_per_layer(plan, stage) * layers_in_flight(plan, stage) / p.cp
    other = backward_working_bytes(plan, stage)
    parts = {"params": params, "grads": grads, "optimizer": optim, "activations": acts,
             "other": other}
    out = {k: v / GB for k, v in parts.items()}
    out["total"] = sum(out.values())
    out["stage"] = stage
    return out


def stored_bytes_per_layer(plan: Plan, stage: int) -> float:
    """Activation bytes one block of `stage` keeps per microbatch, on average
    over its blocks: with "layer" `layer_checkpointed_fraction` of them keep
    only their input (as "full"), the rest everything (as "none"). MoE
    stages: the mean over their dense and MoE blocks."""
    m, p, t = plan.model, plan.parallel, plan.train
    dense, moe = mm.stage_kinds(plan, stage)

    def kind(mode: str, is_moe: bool) -> float:
        return activation_bytes_per_layer(m, p.micro_batch, p.tp, p.sequence_parallel, mode,
                                          t.precision, t.attention, is_moe, p.ep)

    def per(mode: str) -> float:
        if not moe:
            return kind(mode, False)
        return (dense * kind(mode, False) + moe * kind(mode, True)) / (dense + moe)
    if p.recompute != "layer":
        return per(p.recompute)
    f = rc.layer_checkpointed_fraction(stage_layer_count(plan, stage))
    return f * per("full") + (1 - f) * per("none")


def fits(plan: Plan) -> bool:
    return memory_per_gpu(plan)["total"] <= plan.cluster.gpu.hbm_gb


# The backward's working set at the peak (its own module; re-exported here).
from sandbox.memory_peak import (  # noqa: E402
    LOSS_BYTES_PER_LOGIT,
    LOSS_PARALLEL_BYTES_PER_LOGIT,
    backward_working_bytes,
    cp_gather_bytes,
    fsdp_reduce_bytes,
    loss_bytes,
    recompute_working_bytes,
)

__all__ = ["LOSS_BYTES_PER_LOGIT", "LOSS_PARALLEL_BYTES_PER_LOGIT", "backward_working_bytes",
           "cp_gather_bytes", "fsdp_reduce_bytes", "loss_bytes", "recompute_working_bytes"]
