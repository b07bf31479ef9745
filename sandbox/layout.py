"""Where each piece of a plan lives: the one layout both interpreters ask.

The mesh is (pp, dp, cp, tp) with tp innermost (Megatron-LM's and
torchtitan's order): global rank = ((stage * dp + replica) * cp + cp_rank) *
tp + tp_rank. The cp ranks of a replica hold the same weights and
`local_seq_len` tokens of each sequence; gradients are reduced (and ZeRO
shards) over the dp x cp ranks of a stage (`grad_group`). Transformer
blocks are cut into `pp * vpp` chunks of consecutive layers (virtual stages);
pipeline rank r owns chunks r, r + pp, r + 2 pp, ... (the interleaved "loop"
layout; with vpp = 1 just chunk r). `parallel.stage_layers` gives the blocks
of each pipeline rank when they are uneven (then vpp = 1). Data-parallel
replica d runs `replica_microbatches[d]` micro-batches of
`replica_seq_len[d]` tokens (default: all equal).

`sim` lowers and `runtime` cuts the model with these functions, so a plan
means the same layers, ranks and micro-batches to both.
"""

from __future__ import annotations

from sandbox.specs import Plan


def rank_of(plan: Plan, replica: int, stage: int, tp_rank: int, cp_rank: int = 0) -> int:
    """Global rank of (data-parallel replica, pipeline stage, tensor-parallel
    rank, context-parallel rank)."""
    p = plan.parallel
    return ((stage * p.dp + replica) * p.cp + cp_rank) * p.tp + tp_rank


def local_seq_len(plan: Plan, seq_len: int | None = None) -> int:
    """Tokens of each sequence one context-parallel rank holds (`seq_len`,
    default model.seq_len, divided by parallel.cp)."""
    return (plan.model.seq_len if seq_len is None else seq_len) // plan.parallel.cp


def cp_chunks(cp: int, cp_rank: int) -> tuple[int, int]:
    """The two of a sequence's 2 * cp equal chunks context-parallel rank
    `cp_rank` holds: k and 2 cp - 1 - k (Megatron-Core / TE's causal load
    balance: an early chunk with few keys before it paired with a late one)."""
    return cp_rank, 2 * cp - 1 - cp_rank


def grad_ranks(plan: Plan) -> int:
    """Ranks of a stage holding the same weights (dp x cp): the gradient
    reduction's group size and the ZeRO sharding degree."""
    return plan.parallel.dp * plan.parallel.cp


def grad_group(plan: Plan, stage: int, tp_rank: int) -> tuple[int, ...]:
    """Global ranks of the gradient reduction / ZeRO group of (stage, tp rank):
    every data-parallel replica's every context-parallel rank."""
    p = plan.parallel
    return tuple(rank_of(plan, d, stage, tp_rank, c) for d in range(p.dp) for c in range(p.cp))


def stage_layers(plan: Plan) -> list[int]:
    """Transformer blocks of each pipeline rank (all its chunks together)."""
    p = plan.parallel
    if p.stage_layers:
        return list(p.stage_layers)
    return [plan.model.layers // p.pp] * p.pp


def chunk_ids(pp_rank: int, pp: int, vpp: int) -> list[int]:
    """Virtual-stage (chunk) indices owned by pipeline rank `pp_rank` (loop layout)."""
    return [pp_rank + i * pp for i in range(vpp)]


def chunk_layers(plan: Plan) -> list[range]:
    """Global block indices of every chunk, in virtual-stage order (pp * vpp chunks).

    With `stage_layers` (vpp = 1) chunk s holds the next `stage_layers[s]`
    blocks; otherwise every chunk holds layers / (pp * vpp) blocks.
    """
    p = plan.parallel
    sizes = (list(p.stage_layers) if p.stage_layers
             else [plan.model.layers // (p.pp * p.vpp)] * (p.pp * p.vpp))
    out, start = [], 0
    for n in sizes:
        out.append(range(start, start + n))
        start += n
    return out


def replica_microbatches(plan: Plan) -> list[int]:
    """Micro-batches each data-parallel replica runs per step."""
    p = plan.parallel
    return list(p.replica_microbatches) or [p.microbatches] * p.dp


def replica_seq_lens(plan: Plan) -> list[int]:
    """Sequence length (tokens) of each data-parallel replica's micro-batches."""
    p = plan.parallel
    return list(p.replica_seq_len) or [plan.model.seq_len] * p.dp
