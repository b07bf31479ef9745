"""Where each piece of a plan lives: the one layout both interpreters ask.

The mesh is (pp, dp, tp) with tp innermost (Megatron-LM's and torchtitan's
order): global rank = (stage * dp + replica) * tp + tp_rank. Transformer
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


def rank_of(plan: Plan, replica: int, stage: int, tp_rank: int) -> int:
    """Global rank of (data-parallel replica, pipeline stage, tensor-parallel rank)."""
    p = plan.parallel
    return (stage * p.dp + replica) * p.tp + tp_rank


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


def shard_groups(plan: Plan, stage: int) -> list[tuple[int, ...]]:
    """ZeRO shard groups of `stage`: per tensor-parallel rank, runs of
    `parallel.shard_size` consecutive data-parallel replicas (all of dp
    without HSDP); inside a node when the mesh puts them there."""
    p = plan.parallel
    k = p.shard_size
    return [tuple(rank_of(plan, g * k + i, stage, t) for i in range(k))
            for t in range(p.tp) for g in range(p.dp // k)]


def replicate_groups(plan: Plan, stage: int) -> list[tuple[int, ...]]:
    """HSDP's replicate groups of `stage`: the replicas holding the same
    shard, one from each shard group (empty without HSDP)."""
    p = plan.parallel
    k = p.shard_size
    if k == p.dp:
        return []
    return [tuple(rank_of(plan, g * k + i, stage, t) for g in range(p.dp // k))
            for t in range(p.tp) for i in range(k)]
