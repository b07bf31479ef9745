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

Parameters per GPU (`sandbox.memory_params`), a block's activations
(`sandbox.memory_activations`) and the peak's working set
(`sandbox.memory_peak`) are modules of their own; their names are
re-exported here.
"""

from __future__ import annotations

from sandbox import counts
from sandbox import memory_moe as mm
from sandbox import recompute as rc
from sandbox.layout import stage_blocks, stage_chunk_sizes
from sandbox.memory_activations import activation_bytes_per_layer, flash_activation_bytes_per_layer
from sandbox.memory_params import (
    layer_params_per_gpu,
    stage_params_per_gpu,
    zero3_pipelined,
)
from sandbox.memory_peak import (
    LOSS_BYTES_PER_LOGIT,
    LOSS_PARALLEL_BYTES_PER_LOGIT,
    backward_working_bytes,
    cp_gather_bytes,
    fsdp_reduce_bytes,
    loss_bytes,
    recompute_working_bytes,
)
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


def stage_layer_count(plan: Plan, stage: int) -> float:
    """Blocks of pipeline stage `stage` (`sandbox.layout.stage_layers`)."""
    return float(stage_blocks(plan, stage))


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


def usable_gb(capacity_gb: float, reserve: float) -> float:
    """GB of a `capacity_gb` GPU a plan may fill: all but the `reserve` fraction."""
    return (1.0 - reserve) * capacity_gb


def fits_in(total_gb: float, capacity_gb: float, reserve: float) -> bool:
    """Whether `total_gb` per GPU leaves the `reserve` fraction of `capacity_gb` free."""
    return total_gb <= usable_gb(capacity_gb, reserve)


def fits(plan: Plan) -> bool:
    """The most loaded GPU within (1 - cluster.memory_reserve) of its memory."""
    c = plan.cluster
    return fits_in(memory_per_gpu(plan)["total"], c.gpu.hbm_gb, c.memory_reserve)


__all__ = ["LOSS_BYTES_PER_LOGIT", "LOSS_PARALLEL_BYTES_PER_LOGIT", "activation_bytes_per_layer",
           "backward_working_bytes", "cp_gather_bytes", "flash_activation_bytes_per_layer",
           "fsdp_reduce_bytes", "layer_params_per_gpu", "loss_bytes", "recompute_working_bytes",
           "stage_params_per_gpu", "zero3_pipelined"]
