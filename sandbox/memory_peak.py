"""The working set of a backward at the memory peak, besides the stored
tensors (bytes per GPU; `sandbox.memory` adds it as `other`, and
re-exports these names).

Flash plans: the block being re-materialised in backward
(`recompute_working_bytes`), the cross-entropy's logits tensors
(`loss_bytes`), and FSDP2's unsharded gradient of the unit being reduced
(`fsdp_reduce_bytes`); the loss and a block's backward do not overlap, so
the larger of the two (`backward_working_bytes`). Eager plans keep
Korthikanti's and Megatron's accounting (stored tensors only, fp32 logits).
"""

from __future__ import annotations

from sandbox import memory_moe as mm
from sandbox import recompute as rc
from sandbox.memory_activations import flash_activation_bytes_per_layer
from sandbox.memory_params import layer_params_per_gpu, zero3_pipelined
from sandbox.specs import Plan


def recompute_working_bytes(plan: Plan) -> float:
    """Bytes (per GPU, before the cp split) of the one block-microbatch whose
    activations backward re-materialises with "full", "layer" or "op": all a
    plain block keeps (`flash_activation_bytes_per_layer` with "none") except
    what stays stored anyway: the block input (the first norm's input) and,
    with "op", the kept flash output O and logsumexp, V (wv's output) and the
    MLP's first GEMM output (the gate g, or GeLU's input). 0 for none /
    selective, and with eager attention (Korthikanti's accounting)."""
    m, p, t = plan.model, plan.parallel, plan.train
    if p.recompute not in rc.CHECKPOINTING or t.attention != "flash":
        return 0.0
    if m.moe or m.kind == "mla":  # the largest block kind's (`sandbox.memory_moe`)
        return mm.plan_working_bytes(plan)
    tokens, tp = m.seq_len * p.micro_batch, p.tp
    w = 4 if t.precision == "fp32" else 2
    full = flash_activation_bytes_per_layer(m, p.micro_batch, tp, p.sequence_parallel,
                                            "none", t.precision)
    kept = tokens * m.hidden * w / (tp if p.sequence_parallel and tp > 1 else 1)
    if p.recompute == "op":
        kept += tokens * (w * m.q_dim + 4 * m.heads) / tp
        if rc.op_saved_linears(m, t.precision):
            kept += tokens * w * (m.kv_dim + m.ffn_hidden) / tp
    return full - kept


LOSS_BYTES_PER_LOGIT = 12  # fp32 log-softmax output, its fp32 incoming gradient, fp32 grad
LOSS_PARALLEL_BYTES_PER_LOGIT = 16  # saved output, zeros_like, exp(x) / the product, the sum
COMPILED_LOSS_BYTES_PER_LOGIT = 4  # the bf16 logits and the bf16 gradient the fused kernel writes


def loss_bytes(plan: Plan, stage: int) -> float:
    """Cross-entropy logits tensors live at the last stage's peak, one microbatch,
    per tp rank (vocab-parallel) and cp rank; 0 on other stages.

    Flash plans follow torchtitan and the runtime (`F.cross_entropy(logits.float())`
    on bf16 logits, torchtitan deleting `pred` before backward): the backward
    of log_softmax holds its saved fp32 output, the dense fp32 gradient
    nll_loss hands it and the fp32 gradient it writes (`LOSS_BYTES_PER_LOGIT`;
    the bf16 logits and their bf16 gradient live only beside fewer fp32 ones).
    With tp > 1 torchtitan's `loss_parallel` (vocab-sharded logits) fuses
    both backwards into `_nll_loss_and_log_softmax_backward`
    (torch.distributed.tensor.parallel.loss): `(zeros_like(x) - 1 at the
    targets + exp(x)) * grad` beside the saved fp32 output x: four fp32
    tensors live (`LOSS_PARALLEL_BYTES_PER_LOGIT`).
    Eager (Megatron) plans keep Megatron's fused vocab-parallel cross-entropy,
    which works in place on one fp32 logits tensor: 4 bytes per logit.
    With `train.compile_loss` (torchtitan compiling its loss function, tp = 1)
    inductor fuses the upcast, log-softmax and NLL and their backward: the
    partitioner saves the bf16 logits and a per-row log-sum-exp, and the
    backward kernel writes the bf16 gradient directly (no fp32 tensor of the
    logits' size): `COMPILED_LOSS_BYTES_PER_LOGIT`."""
    m, p, t = plan.model, plan.parallel, plan.train
    if stage != p.pp - 1:
        return 0.0
    if t.attention != "flash":
        per = 4
    elif p.tp > 1:
        per = LOSS_PARALLEL_BYTES_PER_LOGIT
    else:
        per = COMPILED_LOSS_BYTES_PER_LOGIT if t.compile_loss else LOSS_BYTES_PER_LOGIT
    return float(per) * m.seq_len * p.micro_batch * m.vocab / p.tp / p.cp


def fsdp_reduce_bytes(plan: Plan) -> float:
    """FSDP2 (ZeRO-3) in a block's backward: the unsharded gradient of the block
    unit being reduced (16-bit, the parameter dtype; fp32 with fp32 training)
    and the fp32 reduce-scatter input it is copied into (`reduce_dtype = fp32`,
    `foreach_reduce`), both live at the copy-in, beside the fp32 gradient
    shard. (The root unit, embedding and head, reduces at the end of backward,
    when the activations are freed.) Under pipeline parallelism
    (`zero3_pipelined`) backward reduces nothing: only the unit's fresh 16-bit
    gradient, before it is added into the fp32 accumulator. 0 with zero < 3
    or no sharding."""
    p = plan.parallel
    if p.zero < 3 or p.shard_size == 1:
        return 0.0
    grad16 = 4 if plan.train.precision == "fp32" else 2
    unit = mm.unit_params(plan) if plan.model.moe else layer_params_per_gpu(plan.model, p.tp)
    if zero3_pipelined(plan):
        return unit * grad16
    return unit * (grad16 + 4)


def cp_gather_bytes(plan: Plan) -> float:
    """`parallel.cp_method = "allgather"` (Transformer Engine's KV all-gather
    attention, Llama 3's CP): a block's backward holds the gathered K and V of
    the whole sequence (its tp share of the KV heads; re-gathered, only the
    local chunk is stored) and the full-length dK, dV before their
    reduce-scatter, in the KV dtype: 2 x b s 2 kv_dim / tp bytes (the
    forward's gather plus its reordered copy is as large). 0 for the ring
    (its in-flight KV chunks, 1/cp of this, are not counted) and cp = 1."""
    m, p = plan.model, plan.parallel
    if p.cp <= 1 or p.cp_method != "allgather":
        return 0.0
    w = 4 if plan.train.precision == "fp32" else 2
    return 2.0 * p.micro_batch * m.seq_len * 2 * m.kv_dim / p.tp * w


def backward_working_bytes(plan: Plan, stage: int) -> float:
    """Bytes live at the peak besides parameters, states and stored activations.

    The peak comes in backward at one of two moments: the loss's backward on
    the last stage (`loss_bytes`), or a block's backward, which holds the
    re-materialised block (`recompute_working_bytes`, 1/cp of it per GPU),
    the FSDP2 unit gradient being reduced (`fsdp_reduce_bytes`) and, with the
    all-gather CP, the gathered K, V and their gradients (`cp_gather_bytes`);
    the larger."""
    block = (recompute_working_bytes(plan) / plan.parallel.cp + fsdp_reduce_bytes(plan)
             + cp_gather_bytes(plan))
    return max(loss_bytes(plan, stage), block)
