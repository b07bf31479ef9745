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
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

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


# --------------------------------------------------------------------- rules
def expert_problems(plan: Plan) -> list[str]:
    """Rules of the MoE fields, `parallel.ep` and MLA; one line per problem."""
    m, p = plan.model, plan.parallel
    problems: list[str] = []
    for name in ("experts", "experts_per_token", "expert_ffn_hidden", "shared_experts",
                 "dense_layers", "q_lora_rank", "kv_lora_rank", "qk_rope_head_dim",
                 "v_head_dim", "head_dim"):
        if getattr(m, name) < 0:
            problems.append(f"model.{name}: must not be negative, got {getattr(m, name)}")
    if m.capacity_factor < 0 or m.router_aux_loss < 0:
        bad = "capacity_factor" if m.capacity_factor < 0 else "router_aux_loss"
        problems.append(f"model.{bad}: must not be negative, got {getattr(m, bad)}")
    if problems:
        return problems
    if m.experts == 0:
        for name in ("experts_per_token", "shared_experts", "dense_layers"):
            if getattr(m, name):
                problems.append(f"model.{name}: {getattr(m, name)} needs model.experts > 0 "
                                "(a mixture of experts)")
        if m.capacity_factor:
            problems.append("model.capacity_factor: needs model.experts > 0")
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
