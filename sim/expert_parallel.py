"""Expert parallelism's token all-to-alls: their bytes and exposed seconds.

With `parallel.ep` = e > 1 every MoE block sends each token's top-k copies
to the ranks holding their experts (dispatch) and brings the expert outputs
back (combine), an all-to-all each inside the block's expert-parallel group
(`sandbox.layout.ep_groups`); backward runs the same two again on the
gradients. A rank's buffer is its (sequence-parallel share of the) tokens x
top-k copies x hidden, 16-bit (fp32 in fp32 training), of which (e-1)/e
leaves the rank (`sandbox.experts.dispatch_elements`). Under router skew
the busiest rank receives `load_factor` times the balanced copies and the
exchange waits for it, so every rank's buffer is priced at that size.

All expert-parallel groups of a stage (every tp / cp rank, every group of
replicas) exchange at once, as flows sharing the topology's links
(`sim.network.collectives`, "all_to_all": NVLink inside a node, the NICs
across nodes), like the context-parallel ring; the exchange blocks the
compute stream (`OpCost.ep_s`). Its contention with the data-parallel
traffic the engine places concurrently is not modelled, as for TP and CP.
With `parallel.ep_overlap` the all-to-alls of a block run behind that block's
attention and shared-expert compute (`LayerTimes.ep_hide`, DeepSeek-V3's /
Megatron-Core's overlap): exposed = max(0, all-to-alls - that compute).
Units: bytes, seconds.
"""

from __future__ import annotations

from sandbox import experts
from sandbox.layout import ep_groups, local_seq_len, stage_layers
from sandbox.profile import Profile
from sandbox.recompute import forward_rerun_share
from sandbox.specs import Plan
from sim.compute import LayerTimes
from sim.moe_compute import rank_tokens
from sim.network.collectives import Coll, concurrent_time
from sim.network.topology import Topology


def a2a_buffer_bytes(plan: Plan) -> float:
    """Bytes of one rank's all-to-all buffer (dispatch or combine), at the
    busiest rank's load (module docstring)."""
    m, p = plan.model, plan.parallel
    w = 4 if plan.train.precision == "fp32" else 2
    tokens = rank_tokens(plan)
    k = experts.load_factor(m, p.micro_batch * local_seq_len(plan), p.ep,
                            plan.cluster.variation_seed)
    return k * experts.routed_tokens(m, tokens) * m.hidden * w


def a2a_sent_bytes(plan: Plan) -> float:
    """Bytes one rank sends to the other ep - 1 ranks in one all-to-all."""
    p = plan.parallel
    return a2a_buffer_bytes(plan) * (p.ep - 1) / p.ep if p.ep > 1 else 0.0


def a2a_time(plan: Plan, topo: Topology, prof: Profile, stage: int) -> float:
    """Seconds of one all-to-all of every expert-parallel group of `stage` at once."""
    if plan.parallel.ep <= 1 or not plan.model.moe:
        return 0.0
    nbytes = a2a_buffer_bytes(plan)
    return concurrent_time(topo, [Coll("all_to_all", g, nbytes) for g in ep_groups(plan, stage)],
                           prof)


def ep_times(plan: Plan, topo: Topology, prof: Profile, stage: int, lt: LayerTimes,
             cache: dict | None = None) -> tuple[float, float]:
    """(forward, backward) exposed all-to-all seconds of one MoE block: dispatch
    and combine each way, less the block's attention and shared-expert compute
    with `ep_overlap`. `cache` keeps the all-to-all seconds per stage."""
    if plan.parallel.ep <= 1 or not plan.model.moe:
        return 0.0, 0.0
    cache = {} if cache is None else cache
    key = ("a2a", stage, plan.model.seq_len)
    if key not in cache:
        cache[key] = a2a_time(plan, topo, prof, stage)
    both = 2 * cache[key]
    if not plan.parallel.ep_overlap:
        return both, both
    return max(0.0, both - lt.ep_hide[0]), max(0.0, both - lt.ep_hide[1])


def ep_bytes_per_layer(plan: Plan) -> float:
    """Bytes one GPU sends in the all-to-alls of one MoE block and
    micro-batch: four exchanges (dispatch, combine, both again backward),
    plus the forward's two again when the block is recomputed."""
    p = plan.parallel
    again = forward_rerun_share(p.recompute, max(stage_layers(plan)))
    return a2a_sent_bytes(plan) * (4 + 2 * again)


def ep_note(plan: Plan, moe_blocks: int) -> dict:
    """`SimResult.extra` fields of an expert-parallel plan: one all-to-all's
    sent bytes and the bytes one GPU of the stage with `moe_blocks` MoE
    blocks sends per step."""
    return {"ep_a2a_bytes": a2a_sent_bytes(plan),
            "ep_bytes_per_gpu": ep_bytes_per_layer(plan) * moe_blocks
            * plan.parallel.microbatches}
