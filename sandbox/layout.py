"""Where each piece of a plan lives: the one layout both interpreters ask.

The mesh is (pp, dp, cp, tp) with tp innermost (Megatron-LM's and
torchtitan's order): global rank = ((stage * dp + replica) * cp + cp_rank) *
tp + tp_rank. The cp ranks of a replica hold the same weights and
`local_seq_len` tokens of each sequence; gradients are reduced (and ZeRO
shards) over the dp x cp ranks of a stage (`shard_groups`). Transformer
blocks are cut into `pp * vpp` chunks of consecutive layers (virtual stages);
pipeline rank r owns chunks r, r + pp, r + 2 pp, ... (the interleaved "loop"
layout; with vpp = 1 just chunk r). When `pp * vpp` does not divide the
layers, the chunks are cut as published runs cut them (`split_blocks`: every
chunk ceil(layers / chunks) blocks, the deficit taken from the first and the
last chunk alternately; Llama 3's 126 layers on 16 stages are [7, 8 x 14, 7],
Dubey et al. 2024, section 3.3.2). `parallel.stage_layers` overrides the
blocks of each pipeline rank (then vpp = 1). Data-parallel
replica d runs `replica_microbatches[d]` micro-batches of
`replica_seq_len[d]` tokens (default: all equal).

`sim` lowers and `runtime` cuts the model with these functions, so a plan
means the same layers, ranks and micro-batches to both.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
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


def split_blocks(layers: int, chunks: int) -> list[int]:
    """Blocks of each of `chunks` consecutive chunks holding `layers` blocks.

    Every chunk gets ceil(layers / chunks); the deficit is taken one block at
    a time from the first chunk, the last, the second, the second-to-last, ...
    (the first stage also runs the embedding, the last the head and loss:
    "we reduce one Transformer layer each from the first and the last
    stages", Dubey et al. 2024, section 3.3.2). Even when chunks divide layers.
    With layers = chunks - 2 (or - 1) the first (and last) chunk is left empty:
    it runs the embedding (the head and loss) alone, which is how Llama 3's
    layout gives every pipeline stage the same work; validation refuses fewer.
    """
    full = -(-layers // chunks)
    sizes = [full] * chunks
    ends = [i // 2 if i % 2 == 0 else chunks - 1 - i // 2 for i in range(chunks)]
    for k in range(full * chunks - layers):
        sizes[ends[k % chunks]] -= 1
    return sizes


def chunk_sizes(plan: Plan) -> list[int]:
    """Blocks of every chunk (virtual stage), in virtual-stage order (pp * vpp
    entries): `parallel.stage_layers` when given (vpp = 1), else `split_blocks`."""
    return list(_split(plan)[0])


def stage_blocks(plan: Plan, stage: int) -> int:
    """Blocks of pipeline rank `stage` (one entry of `stage_layers`, O(1))."""
    return _split(plan)[2][stage]


def stage_chunk_sizes(plan: Plan, stage: int) -> tuple[int, ...]:
    """Blocks of each chunk of pipeline rank `stage` (one row of `rank_chunk_sizes`)."""
    return _split(plan)[1][stage]


def _split(plan: Plan) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...], tuple[int, ...]]:
    p = plan.parallel
    return _layout(plan.model.layers, p.pp, p.vpp, tuple(p.stage_layers))


@lru_cache(maxsize=64)
def _layout(layers: int, pp: int, vpp: int, explicit: tuple[int, ...]
            ) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...], tuple[int, ...]]:
    """(chunk sizes, each rank's chunk sizes, each rank's blocks), cached: a
    plan of 8,192 stages asks for them once per stage."""
    sizes = explicit or tuple(split_blocks(layers, pp * vpp))
    ranks = tuple(tuple(sizes[c] for c in chunk_ids(r, pp, vpp)) for r in range(pp))
    return sizes, ranks, tuple(sum(r) for r in ranks)


def stage_layers(plan: Plan) -> list[int]:
    """Transformer blocks of each pipeline rank (all its chunks together)."""
    return list(_split(plan)[2])


def rank_chunk_sizes(plan: Plan, layers: list[int] | None = None) -> list[list[int]]:
    """Blocks of each chunk of every pipeline rank, in the rank's chunk order
    (`chunk_ids`). `layers` (blocks per rank, e.g. `sim.balance`'s trial
    splits) other than the layout's are cut over the rank's vpp chunks by
    `split_blocks`."""
    p = plan.parallel
    if layers is None or list(layers) == stage_layers(plan):
        return [list(r) for r in _split(plan)[1]]
    return [split_blocks(n, p.vpp) for n in layers]


def chunk_ids(pp_rank: int, pp: int, vpp: int) -> list[int]:
    """Virtual-stage (chunk) indices owned by pipeline rank `pp_rank` (loop layout)."""
    return [pp_rank + i * pp for i in range(vpp)]


def chunk_layers(plan: Plan) -> list[range]:
    """Global block indices of every chunk, in virtual-stage order (pp * vpp
    chunks of `chunk_sizes` blocks)."""
    out, start = [], 0
    for n in chunk_sizes(plan):
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
    `dp_shard` consecutive data-parallel replicas (all of dp without HSDP)
    with all their context-parallel ranks (`parallel.shard_size` ranks);
    inside a node when the mesh puts them there."""
    p = plan.parallel
    k = p.dp_shard or p.dp
    return [tuple(rank_of(plan, g * k + i, stage, t, c) for i in range(k) for c in range(p.cp))
            for t in range(p.tp) for g in range(p.dp // k)]


def replicate_groups(plan: Plan, stage: int) -> list[tuple[int, ...]]:
    """HSDP's replicate groups of `stage`: the replicas holding the same
    shard, one from each shard group (empty without HSDP)."""
    p = plan.parallel
    k = p.dp_shard or p.dp
    if k == p.dp:
        return []
    return [tuple(rank_of(plan, g * k + i, stage, t, c) for g in range(p.dp // k))
            for t in range(p.tp) for i in range(k) for c in range(p.cp)]


def ep_groups(plan: Plan, stage: int) -> list[tuple[int, ...]]:
    """Expert-parallel groups of `stage`: runs of `ep` consecutive data-parallel
    replicas (same tensor- and context-parallel rank), among which each MoE
    block's routed experts are split and tokens are exchanged all-to-all.
    Replica d holds expert shard d % ep (`sandbox.experts`)."""
    p = plan.parallel
    return [tuple(rank_of(plan, g * p.ep + i, stage, t, c) for i in range(p.ep))
            for t in range(p.tp) for c in range(p.cp) for g in range(p.dp // p.ep)]


def expert_grad_groups(plan: Plan, stage: int) -> list[tuple[int, ...]]:
    """Expert-data-parallel groups of `stage`: the dp / ep replicas holding the
    same expert shard, with all their context-parallel ranks; the routed
    experts' gradients are reduced (and ZeRO-sharded) over these."""
    p = plan.parallel
    return [tuple(rank_of(plan, g * p.ep + i, stage, t, c) for g in range(p.dp // p.ep)
                  for c in range(p.cp))
            for t in range(p.tp) for i in range(p.ep)]
