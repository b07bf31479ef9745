"""Context parallelism's attention (ring or all-gather): KV traffic and its exposed seconds.

With `parallel.cp` = c > 1 every sequence of s tokens is cut into 2c chunks
and rank k holds chunks k and 2c - 1 - k (Megatron-Core / Transformer
Engine's load balance for causal masks: every rank does the same attention
work). Everything but the attention core runs on the s / c local tokens
(`sim.compute`). The core runs as a ring (TE's P2P variant, torchtitan's ring
attention): c steps, each computing the local queries against one KV chunk
of s / c tokens while the next chunk is sent to the next cp rank
(`send_recv`), so a step takes max(compute block, transfer):

    forward  exposed = (c - 1) * max(0, t_kv - t_fwd_block)
    backward exposed = (c - 1) * max(0, t_2kv - t_bwd_block) + t_kv

The backward passes KV together with the partial dKV (twice the bytes) and
ends with one more hop bringing each dKV to its owner, which nothing hides.
A KV chunk is b * s/c * 2 * kv_dim / tp elements (16-bit, fp32 in fp32
training) per GPU; all cp x tp ranks of a stage send at once, sharing the
links of the topology (`sim.network`). The compute blocks are the attention
core's forward (and its backward, two of it: the dQ, dK, dV GEMMs in
`sim.compute`) divided into c equal steps.

`parallel.cp_method = "allgather"` is Llama 3's variant (Dubey et al. 2024,
section 3.3.2; Transformer Engine's `AttnFuncWithCPAndKVAllGather`, Megatron's
`cp_comm_type = "all_gather"`): each block all-gathers the K and V of the
whole sequence over its cp ranks (an N-byte output, N = cp x one KV chunk),
then runs the local queries' attention against it. Llama 3 and TE leave the
gather exposed (the attention cannot start before it lands; with GQA the KV
is small next to the O(s^2) attention), and TE keeps only the local K, V for
backward, so the backward gathers again and ends with a reduce-scatter of the
full-length dK, dV (N bytes, the KV dtype) that nothing hides either:

    forward  exposed = t_ag(N)
    backward exposed = t_ag(N) + t_rs(N)

All cp groups of a stage (one per tp rank) run their collective at once on
the topology. Units: bytes, seconds.
"""

from __future__ import annotations

from sandbox.layout import local_seq_len, rank_of, stage_layers
from sandbox.profile import Profile
from sandbox.recompute import attention_rerun_share
from sandbox.specs import Plan
from sim.compute import LayerTimes
from sim.network.collectives import Coll, concurrent_time
from sim.network.topology import Topology


def kv_chunk_bytes(plan: Plan) -> float:
    """Bytes of one KV chunk a GPU sends per ring step (keys and values of
    s / cp tokens, its tp share of the KV heads)."""
    m, p = plan.model, plan.parallel
    w = 4 if plan.train.precision == "fp32" else 2
    return p.micro_batch * local_seq_len(plan) * 2 * m.kv_dim / p.tp * w


def ring_exposed_s(block_s: float, transfer_s: float, cp: int, final_s: float = 0.0) -> float:
    """Exposed seconds of a ring of `cp` steps: cp - 1 transfers of
    `transfer_s`, each behind one compute block of `block_s`, plus a last
    transfer `final_s` nothing overlaps."""
    if cp <= 1:
        return 0.0
    return (cp - 1) * max(0.0, transfer_s - block_s) + final_s


def ring_transfer_s(plan: Plan, topo: Topology, prof: Profile, stage: int, nbytes: float,
                    d: int = 0) -> float:
    """Seconds of one ring step's transfer: every cp rank of every tp rank of
    replica d's stage sends `nbytes` to the next cp rank at once."""
    p = plan.parallel
    colls = [Coll("send_recv", (rank_of(plan, d, stage, t, c),
                                rank_of(plan, d, stage, t, (c + 1) % p.cp)), nbytes)
             for t in range(p.tp) for c in range(p.cp)]
    return concurrent_time(topo, colls, prof)


def gathered_kv_bytes(plan: Plan) -> float:
    """Bytes of K and V of the whole sequence on one GPU (its tp share of the KV
    heads): the all-gather's output buffer, cp KV chunks."""
    return plan.parallel.cp * kv_chunk_bytes(plan)


def cp_groups(plan: Plan, stage: int, d: int = 0) -> list[tuple[int, ...]]:
    """The context-parallel groups of replica d's `stage`, one per tp rank, in
    cp-rank (ring) order."""
    p = plan.parallel
    return [tuple(rank_of(plan, d, stage, t, c) for c in range(p.cp)) for t in range(p.tp)]


def gather_s(plan: Plan, topo: Topology, prof: Profile, stage: int, op: str, nbytes: float,
             d: int = 0) -> float:
    """Seconds of one `op` ("all_gather" / "reduce_scatter") of an `nbytes`
    buffer on every cp group of replica d's `stage` at once."""
    colls = [Coll(op, g, nbytes) for g in cp_groups(plan, stage, d)]
    return concurrent_time(topo, colls, prof)


def cp_times(plan: Plan, topo: Topology, prof: Profile, stage: int, lt: LayerTimes,
             d: int = 0) -> tuple[float, float]:
    """(forward, backward) exposed context-parallel seconds of one block, by
    `parallel.cp_method` (module docstring)."""
    c = plan.parallel.cp
    if c <= 1:
        return 0.0, 0.0
    if plan.parallel.cp_method == "allgather":
        n = gathered_kv_bytes(plan)
        t_ag = gather_s(plan, topo, prof, stage, "all_gather", n, d)
        return t_ag, t_ag + gather_s(plan, topo, prof, stage, "reduce_scatter", n, d)
    kv = kv_chunk_bytes(plan)
    t_kv = ring_transfer_s(plan, topo, prof, stage, kv, d)
    t_2kv = ring_transfer_s(plan, topo, prof, stage, 2 * kv, d)
    fwd = ring_exposed_s(lt.attn_core / c, t_kv, c)
    bwd = ring_exposed_s(2 * lt.attn_core / c, t_2kv, c, final_s=t_kv)
    return fwd, bwd


def ring_bytes_per_layer(plan: Plan) -> float:
    """Bytes one GPU sends for context parallelism per block and micro-batch.
    Ring: the forward's cp - 1 KV chunks, the backward's cp - 1 KV + dKV and
    the last dKV. All-gather: (cp - 1) / cp of the N-byte buffer for each of
    the forward's gather, the backward's gather and its reduce-scatter (a
    ring collective). Both: the forward again when the attention core is
    recomputed."""
    c = plan.parallel.cp
    if c <= 1:
        return 0.0
    kv = kv_chunk_bytes(plan)
    fwd = (c - 1) * kv  # = (cp - 1) / cp * N for the all-gather as well
    bwd = 2 * fwd if plan.parallel.cp_method == "allgather" else (c - 1) * 2 * kv + kv
    again = fwd * attention_rerun_share(plan.parallel.recompute, max(stage_layers(plan)))
    return fwd + bwd + again


def cp_note(plan: Plan) -> dict:
    """`SimResult.extra` fields of a context-parallel plan: cp, its method, the
    KV chunk of one ring step and the context-parallel bytes one GPU of the
    most loaded stage sends per step (bytes)."""
    p = plan.parallel
    layers = max(stage_layers(plan))
    return {"cp": p.cp, "cp_method": p.cp_method, "cp_kv_chunk_bytes": kv_chunk_bytes(plan),
            "cp_bytes_per_gpu": ring_bytes_per_layer(plan) * layers * p.microbatches}
