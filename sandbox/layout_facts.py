"""The rank layout of a plan as facts for `sandbox info`: the mesh order and
sizes, rank 0's group of each kind, and which groups cross node boundaries.

The mesh is (pp, dp, cp, tp) with tp innermost (`sandbox.layout.rank_of`),
and rank r sits on node r // gpus_per_node (`sim.network.topology`). Every
group of one kind is an arithmetic run of ranks (first, first + stride, ...),
so a group crosses nodes exactly when its first and last ranks lie on
different nodes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from sandbox.layout import rank_of

if TYPE_CHECKING:
    from sandbox.specs import Plan

KINDS = ("tp", "cp", "dp", "ep", "pp")  # innermost first; ep: groups inside dp


def _starts(plan: Plan, kind: str) -> Iterator[int]:
    """The first rank of every group of `kind` (tp, cp, dp, ep or pp)."""
    p = plan.parallel
    if kind == "tp":
        yield from range(0, plan.world_size, p.tp)
    elif kind == "cp":
        yield from (rank_of(plan, d, s, t) for s in range(p.pp) for d in range(p.dp)
                    for t in range(p.tp))
    elif kind in ("dp", "ep"):
        runs = range(0, p.dp, p.ep) if kind == "ep" else (0,)
        yield from (rank_of(plan, g, s, t, c) for s in range(p.pp) for g in runs
                    for c in range(p.cp) for t in range(p.tp))
    else:
        yield from (rank_of(plan, d, 0, t, c) for d in range(p.dp) for c in range(p.cp)
                    for t in range(p.tp))


def group_shape(plan: Plan, kind: str) -> tuple[int, int]:
    """(size, stride) of the groups of `kind`: ranks first + k * stride, k < size."""
    p = plan.parallel
    step = {"tp": (0, 0, 1, 0), "cp": (0, 0, 0, 1), "dp": (1, 0, 0, 0), "ep": (1, 0, 0, 0),
            "pp": (0, 1, 0, 0)}[kind]  # one step along the kind's mesh axis, in rank_of
    return getattr(p, kind), rank_of(plan, *step)


def layout_facts(plan: Plan) -> dict[str, Any]:
    """order (outermost first), sizes, gpus_per_node, nodes, and per kind of
    group (size > 1): size, stride (rank 0's group is ranks 0, stride, ...,
    (size - 1) * stride), count, and how many groups cross node boundaries
    (`cross_node`)."""
    p, per_node = plan.parallel, plan.cluster.gpus_per_node
    order = ["pp", "dp", *(["cp"] if p.cp > 1 else []), "tp"]
    groups = {}
    for kind in KINDS:
        size, stride = group_shape(plan, kind)
        if size <= 1:
            continue
        starts = list(_starts(plan, kind))
        last = (size - 1) * stride
        groups[kind] = {"size": size, "stride": stride, "count": len(starts),
                        "cross_node": sum(s // per_node != (s + last) // per_node
                                          for s in starts)}
    return {"order": order, "sizes": {k: getattr(p, k) for k in order},
            "gpus_per_node": per_node, "nodes": plan.cluster.nodes, "groups": groups}


def rank0_group(group: dict[str, int]) -> list[int]:
    """Rank 0's group of one kind of `layout_facts`' groups."""
    return [k * group["stride"] for k in range(group["size"])]


def _ranks(ranks: list[int]) -> str:
    if len(ranks) > 2 and all(b - a == 1 for a, b in zip(ranks, ranks[1:], strict=False)):
        return f"{ranks[0]}-{ranks[-1]}"
    shown = ranks if len(ranks) <= 4 else [*ranks[:3], "...", ranks[-1]]
    return ", ".join(map(str, shown))


def format_layout(facts: dict[str, Any]) -> list[tuple[str, str]]:
    """Rows (label, text) of `sandbox info`'s layout block."""
    sizes, per_node, groups = facts["sizes"], facts["gpus_per_node"], facts["groups"]
    tp = groups.get("tp")
    where = "" if tp is None else (
        "tp innermost: TP groups within a node; " if not tp["cross_node"] else
        "tp innermost: TP groups cross nodes; ")
    mesh = " x ".join(f"{k} {sizes[k]}" for k in facts["order"])
    nodes = facts["nodes"]
    rows = [("layout", f"{mesh} ({where}{nodes:,} node{'s' * (nodes > 1)} x {per_node} "
                       f"GPU{'s' * (per_node > 1)})")]
    for kind, g in groups.items():
        r0, name, n = rank0_group(g), kind.upper(), g["count"]
        nodes = sorted({r // per_node for r in r0})
        on = f"node {nodes[0]}" if len(nodes) == 1 else f"{len(nodes)} nodes"
        cross = (f"none of the {n:,} {name} groups crosses nodes" if not g["cross_node"] else
                 f"all {n:,} {name} groups cross nodes" if g["cross_node"] == n else
                 f"{g['cross_node']:,} of {n:,} {name} groups cross nodes")
        rows.append((f"  {name} group of rank 0", f"ranks {_ranks(r0)} on {on}; {cross}"))
    return rows
