"""Parameters one GPU holds (numbers of parameters, not bytes), as pure functions.

A dense block on one tensor-parallel rank (`layer_params_per_gpu`: weight
matrices and column-parallel biases split over tp, row-parallel output biases
and norms replicated, Megatron-LM), MLA's replicated down-projections
(`mla_replicated_params`), a pipeline stage with its embedding / head
(`stage_params_per_gpu`), and whether ZeRO-3 under pipeline parallelism keeps
the parameters gathered through the step (`zero3_pipelined`). The leaf of the
memory modules: `sandbox.memory_moe` and `sandbox.memory_peak` build on it,
`sandbox.memory` re-exports its names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sandbox import counts
from sandbox.sections import Model

if TYPE_CHECKING:
    from sandbox.specs import Plan


def mla_replicated_params(m: Model) -> int:
    """MLA weights every tensor-parallel rank holds whole: the query and
    key-value down-projections and the two latent norms (0 without MLA)."""
    if m.kind != "mla":
        return 0
    down = m.hidden * (m.q_lora_rank + m.kv_lora_rank + m.qk_rope_head_dim)
    return down + m.q_lora_rank + m.kv_lora_rank


def layer_params_per_gpu(m: Model, tp: int) -> float:
    """One block's parameters held by one tensor-parallel rank.

    Weight matrices and column-parallel biases are split over tp; the
    row-parallel output biases and the norms are replicated (Megatron-LM).
    """
    replicated = 2 * counts.norm_params(m) + (2 * m.hidden if m.bias else 0)
    replicated += mla_replicated_params(m)  # MLA's down-projections (0 without)
    return (counts.layer_params(m) - replicated) / tp + replicated


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


def zero3_pipelined(plan: Plan) -> bool:
    """ZeRO-3 (FSDP2) under pipeline parallelism as torch.distributed.pipelining
    drives it (`PipelineStage.backward_maybe_with_nosync`: every backward runs
    without gradient sync or reshard; `perform_reduce_grad` after a chunk's
    last backward; torchtitan sets reshard_after_forward = False with pp): each
    chunk gathered once per step and kept unsharded, gradients accumulated
    unsharded in fp32 and reduce-scattered once per step."""
    p = plan.parallel
    return p.zero >= 3 and p.shard_size > 1 and p.pp > 1
