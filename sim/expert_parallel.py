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

`parallel.ep_dispatch = "deepep"` (DeepEP's normal kernels) sends a token
once per destination node and rank instead of once per copy: with R =
`experts.distinct_units(model, ep)` distinct ranks and D the distinct nodes
(of the group's n nodes, G = ep / n ranks each) a token's k experts fall in,
each rank sends T D / n tokens to its peer on every other node (NIC leg) and
every member of a node sends each other member n T R / ep tokens (its own
tokens for that rank and those it received for its node: NVLink leg), T the
rank's tokens, hidden elements each, both legs at once
(`sim.network.collectives.dedup_dispatch`); the combine (reduced inside the
node first) is the same bytes back.
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
from sim.network.collectives import Coll, concurrent_time, dedup_dispatch, merge_phases, phases_time
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


def dedup_pair_bytes(plan: Plan) -> tuple[float, float]:
    """DeepEP's (NIC-leg bytes from a rank to its peer on one other node,
    NVLink-leg bytes between two members of one node) of one dispatch, at
    the busiest rank's load (module docstring)."""
    m, p = plan.model, plan.parallel
    n = experts.route_nodes(plan)
    per_token = a2a_buffer_bytes(plan) / m.experts_per_token  # T x hidden x width x load
    ranks = experts.distinct_units(m, p.ep, n)
    nodes = experts.distinct_units(m, n, n) if n > 1 else 1.0
    return per_token * nodes / n, per_token * n * ranks / p.ep


def a2a_sent_bytes(plan: Plan) -> float:
    """Bytes one rank sends in one dispatch (or combine): to the other
    ep - 1 ranks (all-to-all), or over both of DeepEP's legs."""
    p = plan.parallel
    if p.ep <= 1:
        return 0.0
    if p.ep_dispatch == "deepep":
        n = experts.route_nodes(plan)
        nic, nvl = dedup_pair_bytes(plan)
        return (n - 1) * nic + (p.ep // n - 1) * nvl
    return a2a_buffer_bytes(plan) * (p.ep - 1) / p.ep


def a2a_time(plan: Plan, topo: Topology, prof: Profile, stage: int) -> float:
    """Seconds of one dispatch (or combine) of every expert-parallel group of
    `stage` at once."""
    if plan.parallel.ep <= 1 or not plan.model.moe:
        return 0.0
    groups = ep_groups(plan, stage)
    if plan.parallel.ep_dispatch == "deepep":
        nic, nvl = dedup_pair_bytes(plan)
        return phases_time(topo, merge_phases([[dedup_dispatch(topo, g, nic, nvl, prof)]
                                               for g in groups]))
    nbytes = a2a_buffer_bytes(plan)
    return concurrent_time(topo, [Coll("all_to_all", g, nbytes) for g in groups], prof)


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
    """`SimResult.extra` fields of an expert-parallel plan: the dispatcher,
    one dispatch's sent bytes and the bytes one GPU of the stage with
    `moe_blocks` MoE blocks sends per step."""
    return {"ep_dispatch": plan.parallel.ep_dispatch, "ep_a2a_bytes": a2a_sent_bytes(plan),
            "ep_bytes_per_gpu": ep_bytes_per_layer(plan) * moe_blocks
            * plan.parallel.microbatches}
