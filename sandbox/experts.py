"""Mixture of experts and multi-head latent attention: the facts both
interpreters ask, as pure functions, and the rules a MoE / MLA plan obeys.

A MoE block (`Model.experts` > 0, every block after the first
`dense_layers`) keeps attention and replaces the FFN by a router (a
hidden x experts linear), `experts` routed FFNs of width `expert_ffn_hidden`
of which each token visits the top `experts_per_token`, and
`shared_experts` FFNs of the same width that every token visits
(DeepSeek-V2/V3). Expert parallelism (`Parallel.ep`) splits the routed
experts of every MoE block over `ep` consecutive data-parallel replicas
(Megatron-Core carves EP out of DP the same way): each holds
`experts / ep`, and tokens reach their experts by an all-to-all inside the
group (dispatch) and come back by another (combine). Expert weights are
replicated over the `dp / ep` expert-data-parallel groups, whose gradients
they reduce; the dense weights are reduced over all of dp as before.

MLA (`attention_kind = "mla"`, DeepSeek-V2 section 2.1): queries
h -> q_lora_rank (RMSNorm) -> heads x (head_dim + qk_rope_head_dim)
(or h -> that directly without q_lora_rank); keys and values from one latent
h -> kv_lora_rank + qk_rope_head_dim (RMSNorm on the latent part) ->
heads x (head_dim + v_head_dim); the RoPE key part is shared by all heads;
output heads x v_head_dim -> h.

Load imbalance (`Model.router_skew`, simulator): the router sends expert of
popularity rank j the share 1 / (j + 1)^skew (normalised; 0 = balanced, as a
forced-balanced gate); expert ids take popularity ranks by a permutation
`random.Random(cluster.variation_seed).shuffle`, and ep rank r holds experts
r E/ep .. (r + 1) E/ep - 1, so where the hot experts sit is fixed per cluster
seed. With `capacity_factor` > 0 each expert keeps at most `expert_capacity`
of an expert-parallel group's tokens and drops the rest. The busiest ep rank
(most token copies after dropping) sets the pace of the block.
"""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING

from sandbox.layout import ep_groups
from sandbox.sections import Model

if TYPE_CHECKING:
    from sandbox.specs import Plan


def is_moe_layer(m: Model, layer: int) -> bool:
    """Whether block `layer` (0-based, global) is a mixture of experts."""
    return m.experts > 0 and layer >= m.dense_layers


def moe_layers(m: Model) -> int:
    """Number of MoE blocks."""
    return m.layers - m.dense_layers if m.experts > 0 else 0


def layer_kinds(m: Model, layers: range) -> tuple[int, int]:
    """(dense blocks, MoE blocks) among the global block indices `layers`."""
    moe = sum(1 for i in layers if is_moe_layer(m, i))
    return len(layers) - moe, moe


def local_experts(m: Model, ep: int) -> int:
    """Routed experts one expert-parallel rank holds per MoE block."""
    return m.experts // ep


def routed_tokens(m: Model, tokens: float) -> float:
    """Token-expert assignments of `tokens` tokens through one MoE block
    (tokens x top-k), before any dropping."""
    return tokens * m.experts_per_token


def expert_capacity(m: Model, tokens: float) -> float:
    """Most tokens one expert accepts from `tokens` tokens (`capacity_factor`
    times the balanced share tokens x k / experts; inf when dropless)."""
    if m.capacity_factor <= 0:
        return math.inf
    return m.capacity_factor * routed_tokens(m, tokens) / m.experts


def dispatch_elements(m: Model, tokens: float, ep: int) -> float:
    """Activation elements one rank sends to the other ep - 1 ranks of its
    expert-parallel group in one dispatch (and receives back in the combine)
    under balanced routing: each of its tokens' k copies goes to a uniformly
    chosen expert, (ep - 1) / ep of them off-rank, `hidden` elements each."""
    if ep <= 1:
        return 0.0
    return routed_tokens(m, tokens) * (ep - 1) / ep * m.hidden


def _uniform_hit(pool: int, unit: int, k: int) -> float:
    """P(a given unit of `unit` experts holds at least one of k experts drawn
    without replacement from `pool`): 1 - C(pool - unit, k) / C(pool, k)."""
    return 1.0 - math.comb(pool - unit, k) / math.comb(pool, k)


def distinct_units(m: Model, units: int, nodes: int = 1) -> float:
    """Expected distinct units a token's top-k experts fall in, the experts
    split into `units` equal runs of consecutive ids (the ep ranks: units = ep;
    the group's nodes: units = nodes); `nodes` is the expert-parallel group's
    node count, for `max_route_nodes`.

    "uniform": the k experts a uniformly random k-subset of a pool of E experts
    (E, or the M E / nodes experts of M whole nodes under node-limited routing,
    M = max_route_nodes < nodes); a unit of u = E / units experts inside the
    pool is hit with P = 1 - C(pool - u, k) / C(pool, k), so the expectation is
    (pool / u) P. "round-robin": token t takes experts t k .. t k + k - 1 mod
    E; over a cycle of E / gcd(k, E) tokens the start s = t k mod E visits the
    multiples of gcd(k, E), and the count is the exact average over them of
    the runs the k consecutive ids touch."""
    e, k = m.experts, m.experts_per_token
    if e == 0 or units <= 1:
        return 1.0 if e else 0.0
    u = e // units
    if m.routing == "round-robin":
        step = math.gcd(k, e)
        starts = range(0, e, step)
        return sum(len({((s + j) % e) // u for j in range(k)}) for s in starts) / len(starts)
    limit = m.max_route_nodes
    pool = e * limit // nodes if 0 < limit < nodes else e
    return pool / u * _uniform_hit(pool, u, k)


def expert_shares(m: Model, seed: int = 0) -> list[float]:
    """Fraction of the token-expert assignments each expert (by id) receives:
    Zipf-like 1 / (j + 1)^router_skew over popularity ranks j, ids mapped to
    ranks by a permutation seeded `seed` (module docstring); 1 / E each when
    balanced. Sums to 1."""
    e = m.experts
    if e == 0:
        return []
    if m.router_skew == 0:
        return [1.0 / e] * e
    weight = [1.0 / (j + 1) ** m.router_skew for j in range(e)]
    total = sum(weight)
    rank = list(range(e))
    random.Random(seed).shuffle(rank)
    return [weight[rank[i]] / total for i in range(e)]


def expert_loads(m: Model, tokens: float, ep: int, seed: int = 0) -> list[float]:
    """Token copies each expert computes in one micro-batch of an
    expert-parallel group whose `ep` ranks hold `tokens` tokens each:
    ep x tokens x top-k x its share, capped at `expert_capacity` of the
    group's tokens (the rest dropped). Balanced: tokens x k x ep / experts."""
    routed = routed_tokens(m, tokens * ep)
    cap = expert_capacity(m, tokens * ep)
    return [min(routed * x, cap) for x in expert_shares(m, seed)]


def rank_loads(loads: list[float], ep: int) -> list[float]:
    """Token copies each ep rank computes: the sum over its E / ep
    contiguous experts."""
    n = len(loads) // ep
    return [sum(loads[r * n:(r + 1) * n]) for r in range(ep)]


def busiest_rank(m: Model, tokens: float, ep: int, seed: int = 0) -> int:
    """The ep rank with the most token copies (the first of equals)."""
    per = rank_loads(expert_loads(m, tokens, ep, seed), ep)
    return max(range(ep), key=lambda r: (per[r], -r))


def busiest_expert_loads(m: Model, tokens: float, ep: int, seed: int = 0) -> list[float]:
    """Token copies of each local expert of the busiest ep rank."""
    loads = expert_loads(m, tokens, ep, seed)
    r, n = busiest_rank(m, tokens, ep, seed), local_experts(m, ep)
    return loads[r * n:(r + 1) * n]


def load_factor(m: Model, tokens: float, ep: int, seed: int = 0) -> float:
    """The busiest ep rank's token copies over the balanced dropless ones
    (tokens x top-k): 1 when balanced, > 1 under skew; it scales that rank's
    received all-to-all bytes."""
    if m.experts == 0 or tokens <= 0:
        return 1.0
    return sum(busiest_expert_loads(m, tokens, ep, seed)) / routed_tokens(m, tokens)


def dropped_fraction(m: Model, tokens: float, ep: int, seed: int = 0) -> float:
    """Share of the token copies dropped at the capacity (0 when dropless)."""
    if m.experts == 0 or tokens <= 0 or m.capacity_factor <= 0:
        return 0.0
    return max(0.0, 1.0 - sum(expert_loads(m, tokens, ep, seed))
               / routed_tokens(m, tokens * ep))


def routed_rows(m: Model) -> float:
    """Routed token copies per token of a MoE block's buffers: top-k, or the
    capacity-padded E x capacity (`expert_capacity`)."""
    if m.capacity_factor > 0:
        return m.experts * expert_capacity(m, 1.0)
    return float(routed_tokens(m, 1.0))


def route_nodes(plan: Plan) -> int:
    """Nodes one expert-parallel group spans (at least 1)."""
    p = plan.parallel
    if p.ep <= 1 or p.dp % p.ep or plan.model.experts % p.ep:
        return 1
    gpn = plan.cluster.gpus_per_node
    return len({r // gpn for r in ep_groups(plan, 0)[0]})


# --------------------------------------------------------------------- rules
ROUTINGS = ("uniform", "round-robin")
DISPATCHERS = ("all-to-all", "deepep")


def expert_problems(plan: Plan) -> list[str]:
    """Rules of the MoE fields, `parallel.ep` and MLA; one line per problem."""
    m, p = plan.model, plan.parallel
    problems: list[str] = []
    for name in ("experts", "experts_per_token", "expert_ffn_hidden", "shared_experts",
                 "dense_layers", "q_lora_rank", "kv_lora_rank", "qk_rope_head_dim",
                 "v_head_dim", "head_dim"):
        if getattr(m, name) < 0:
            problems.append(f"model.{name}: must not be negative, got {getattr(m, name)}")
    for bad in ("capacity_factor", "router_aux_loss", "router_skew"):
        if getattr(m, bad) < 0:
            problems.append(f"model.{bad}: must not be negative, got {getattr(m, bad)}")
    if problems:
        return problems
    if m.routing not in ROUTINGS:
        problems.append(f"model.routing: unknown value '{m.routing}'; choose one of "
                        + ", ".join(ROUTINGS))
    if p.ep_dispatch not in DISPATCHERS:
        problems.append(f"parallel.ep_dispatch: unknown value '{p.ep_dispatch}'; choose one "
                        "of " + ", ".join(DISPATCHERS))
    if m.max_route_nodes < 0:
        problems.append(f"model.max_route_nodes: must not be negative, got {m.max_route_nodes}")
    if problems:
        return problems
    if m.routing == "round-robin" and (m.router_skew or m.max_route_nodes):
        problems.append("model.routing: 'round-robin' (a forced-balanced gate) ignores the "
                        "router; set router_skew = 0 and max_route_nodes = 0")
    if m.experts == 0:
        for name in ("experts_per_token", "shared_experts", "dense_layers"):
            if getattr(m, name):
                problems.append(f"model.{name}: {getattr(m, name)} needs model.experts > 0 "
                                "(a mixture of experts)")
        for name in ("capacity_factor", "router_skew"):
            if getattr(m, name):
                problems.append(f"model.{name}: needs model.experts > 0")
        if p.ep > 1:
            problems.append(f"parallel.ep: {p.ep} needs a mixture-of-experts model "
                            "(model.experts > 0)")
    else:
        if not 1 <= m.experts_per_token <= m.experts:
            problems.append(f"model.experts_per_token: must be 1..experts = {m.experts}, "
                            f"got {m.experts_per_token}")
        if m.dense_layers >= m.layers:
            problems.append(f"model.dense_layers: {m.dense_layers} leaves no MoE block of "
                            f"model.layers = {m.layers}")
        if 0 < m.capacity_factor < 1.0:
            problems.append(f"model.capacity_factor: {m.capacity_factor} < 1 drops tokens "
                            "even under perfect balance; give >= 1, or 0 for dropless")
        nodes = route_nodes(plan)
        if 0 < m.max_route_nodes < nodes and \
                m.max_route_nodes * m.experts // nodes < m.experts_per_token:
            problems.append(f"model.max_route_nodes: {m.max_route_nodes} of the {nodes} nodes "
                            f"of an expert-parallel group hold fewer than experts_per_token = "
                            f"{m.experts_per_token} experts")
        if m.expert_ffn_hidden % p.tp:
            problems.append(f"parallel.tp: {p.tp} does not divide model.expert_ffn_hidden = "
                            f"{m.expert_ffn_hidden}")
    if p.ep < 1:
        problems.append(f"parallel.ep: must be positive, got {p.ep}")
    elif p.ep > 1 and m.experts:
        if m.experts % p.ep:
            problems.append(f"parallel.ep: {p.ep} does not divide model.experts = {m.experts}")
        if p.dp % p.ep:
            problems.append(f"parallel.ep: {p.ep} does not divide dp = {p.dp} (expert "
                            "parallelism is carved out of the data-parallel ranks)")
        if p.dp_mode != "allreduce":
            problems.append(f"parallel.ep: expert parallelism needs dp_mode = 'allreduce', "
                            f"got '{p.dp_mode}'")
    return problems + _attention_problems(m, p.tp)


def _attention_problems(m: Model, tp: int) -> list[str]:
    problems: list[str] = []
    if m.attention_kind not in ("", "mha", "gqa", "mla"):
        return [f"model.attention_kind: unknown value '{m.attention_kind}'; choose one of "
                "mha, gqa, mla (or leave it empty: from heads and kv_heads)"]
    if m.attention_kind == "mha" and m.kv_heads != m.heads:
        problems.append(f"model.attention_kind: 'mha' needs kv_heads = heads = {m.heads}, "
                        f"got {m.kv_heads}")
    if m.attention_kind == "gqa" and m.kv_heads >= m.heads:
        problems.append(f"model.attention_kind: 'gqa' needs kv_heads < heads = {m.heads}, "
                        f"got {m.kv_heads}")
    if m.attention_kind == "mla":
        if m.kv_lora_rank <= 0:
            problems.append("model.kv_lora_rank: MLA needs the latent's width (> 0)")
        if m.qk_rope_head_dim <= 0 or m.qk_rope_head_dim % 2:
            problems.append(f"model.qk_rope_head_dim: MLA needs an even RoPE head part > 0, "
                            f"got {m.qk_rope_head_dim}")
        if m.position != "rope":
            problems.append(f"model.position: MLA uses rope, got '{m.position}'")
        if m.bias:
            problems.append("model.bias: MLA's projections have no biases (DeepSeek-V2/V3); "
                            "set it to false")
        if m.kv_heads != m.heads:
            problems.append(f"model.kv_heads: MLA up-projects keys and values for every "
                            f"head; kv_heads must equal heads = {m.heads}, got {m.kv_heads}")
    else:
        for name in ("q_lora_rank", "kv_lora_rank", "qk_rope_head_dim", "v_head_dim"):
            if getattr(m, name):
                problems.append(f"model.{name}: {getattr(m, name)} is an MLA field; it needs "
                                "attention_kind = 'mla'")
    return problems
