"""Collectives decomposed into flows: ring, tree and hierarchical.

A `Coll` is one collective on one group of GPUs (global ranks, in ring
order). `flows(topo, coll)` lowers it to point-to-point flows (path, bytes)
in one or more phases, each with a latency term:

- ring (NCCL's default for large messages): `channels` rings, one per NIC
  when the group spans nodes, each carrying 1/channels of the buffer; every
  ring edge carries `2(p-1)/p * N` bytes for all-reduce and `(p-1)/p * N` for
  all-gather / reduce-scatter; latency `2(p-1)` (or `p-1`) steps of one hop.
  On an idle network of links of bandwidth B this gives the closed form
  `2(p-1)/p * N / B + 2(p-1) * alpha`.
- tree: a binary tree, `N` bytes up every edge then down; `2 log2 p` steps.
- hierarchical: reduce-scatter inside each node, all-reduce of N/g across
  nodes (g rings in parallel, one per local rank), all-gather inside the node.
- all_to_all (expert-parallel token dispatch / combine, NCCL's grouped
  send/recv and DeepEP alike): every rank sends N/p bytes of its N-byte
  buffer straight to each of the p - 1 others, all at once, one phase; inside
  a node over NVLink, across nodes through the sender's NIC. On one link
  class of bandwidth B, idle: `(p-1)/p * N / B + alpha` (one step).

- dedup_dispatch (DeepEP's internode dispatch, or its combine reversed; not a
  `Coll`, `sim.expert_parallel` builds it): each rank sends its tokens once
  per other node of the group, through its own NIC to the member at its own
  index there, and every member of a node sends each other member of it the
  tokens routed there (its own, and those it received for the node), over
  NVLink; both legs stream at once, one phase. On one link class of
  bandwidth B, idle: (members - 1) x the per-pair bytes / B + alpha.

Link bandwidth is derated by the profile's `collective_efficiency`; a
measured `[[collective]]` point in the profile replaces the link model.
Units: bytes, seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sandbox.profile import Profile, bus_factor
from sim import memo
from sim.network.flows import fluid_finish
from sim.network.topology import Topology

OPS = ("all_reduce", "all_gather", "reduce_scatter", "send_recv", "all_to_all")


@dataclass(frozen=True)
class Coll:
    """One collective on one group of GPUs; `nbytes` in bytes."""

    op: str
    ranks: tuple[int, ...]  # global GPU ranks, in ring order
    nbytes: float  # buffer size N (all-reduce input; all-gather output; all-to-all input)
    algorithm: str = "ring"


@dataclass(frozen=True)
class Phase:
    """Concurrent flows (paths of directed links, bytes each) and the phase's
    latency in seconds."""

    paths: tuple[tuple, ...]
    sizes: tuple[float, ...]
    latency_s: float


def ring_steps(op: str, p: int) -> int:
    """Latency steps of a ring collective over p ranks."""
    return 2 * (p - 1) if op == "all_reduce" else (p - 1 if op != "send_recv" else 1)


def _ring(topo: Topology, op: str, ranks: tuple[int, ...], nbytes: float,
          prof: Profile) -> Phase:
    p = len(ranks)
    nodes = {topo.node_of(r) for r in ranks}
    channels = topo.cluster.nics_per_node if len(nodes) > 1 else 1
    per = bus_factor(op, p) * nbytes / channels / prof.collective_efficiency
    paths, sizes = [], []
    for c in range(channels):
        for i in range(p):
            paths.append(topo.route(ranks[i], ranks[(i + 1) % p], c))
            sizes.append(per)
    hop = max(topo.latency(pa) for pa in paths)
    return Phase(tuple(paths), tuple(sizes),
                 ring_steps(op, p) * (hop + prof.collective_step_latency_s))


def _tree(topo: Topology, op: str, ranks: tuple[int, ...], nbytes: float,
          prof: Profile) -> list[Phase]:
    p = len(ranks)
    up = [(ranks[i], ranks[(i - 1) // 2]) for i in range(1, p)]
    size = nbytes / prof.collective_efficiency
    hop = max(topo.latency(topo.route(a, b)) for a, b in up)
    lat = math.ceil(math.log2(p)) * (hop + prof.collective_step_latency_s)
    phases = []
    if op in ("all_reduce", "reduce_scatter"):
        phases.append(Phase(tuple(topo.route(a, b) for a, b in up), (size,) * len(up), lat))
    if op in ("all_reduce", "all_gather"):
        phases.append(Phase(tuple(topo.route(b, a) for a, b in up), (size,) * len(up), lat))
    return phases


def _all_to_all(topo: Topology, ranks: tuple[int, ...], nbytes: float,
                prof: Profile) -> Phase:
    """Every ordered pair's N/p bytes as one phase of concurrent flows."""
    p = len(ranks)
    per = nbytes / p / prof.collective_efficiency
    paths = tuple(topo.route(a, b, topo.nic_of(a)) for a in ranks for b in ranks if a != b)
    hop = max(topo.latency(pa) for pa in paths)
    return Phase(paths, (per,) * len(paths), hop + prof.collective_step_latency_s)


def phases(topo: Topology, coll: Coll, prof: Profile) -> list[Phase]:
    """The collective as sequential phases of concurrent flows (memoised per
    topology, `sim.memo`: the phases are frozen, the list a copy)."""
    seen = memo.table(topo, "phases")
    if seen is None:
        return _phases(topo, coll, prof)
    key = (coll, prof)
    got = seen.get(key)
    if got is None:
        got = seen[key] = tuple(_phases(topo, coll, prof))
    return list(got)


def _phases(topo: Topology, coll: Coll, prof: Profile) -> list[Phase]:
    ranks, op = coll.ranks, coll.op
    if len(ranks) <= 1 or coll.nbytes <= 0:
        return []
    if op == "send_recv":
        path = topo.route(ranks[0], ranks[1], topo.nic_of(ranks[0]))
        return [Phase((path,), (coll.nbytes / prof.collective_efficiency,),
                      topo.latency(path) + prof.collective_step_latency_s)]
    if op == "all_to_all":
        return [_all_to_all(topo, ranks, coll.nbytes, prof)]
    if coll.algorithm == "tree":
        return _tree(topo, op, ranks, coll.nbytes, prof)
    by_node: dict[int, list[int]] = {}
    for r in ranks:
        by_node.setdefault(topo.node_of(r), []).append(r)
    local = {len(v) for v in by_node.values()}
    if coll.algorithm == "hierarchical" and len(by_node) > 1 and local == {max(local)} \
            and max(local) > 1 and op == "all_reduce":
        g = max(local)
        groups = list(by_node.values())
        rs = [_ring(topo, "reduce_scatter", tuple(v), coll.nbytes, prof) for v in groups]
        inter = [_ring(topo, "all_reduce", tuple(v[i] for v in groups), coll.nbytes / g, prof)
                 for i in range(g)]
        ag = [_ring(topo, "all_gather", tuple(v), coll.nbytes, prof) for v in groups]
        return [_merge(rs), _merge(inter), _merge(ag)]
    return [_ring(topo, op, ranks, coll.nbytes, prof)]


def _merge(ps: list[Phase]) -> Phase:
    return Phase(tuple(p for ph in ps for p in ph.paths), tuple(s for ph in ps for s in ph.sizes),
                 max(ph.latency_s for ph in ps))


def concurrent_time(topo: Topology, colls: list[Coll], prof: Profile) -> float:
    """Seconds until all of `colls`, started together on an idle network, finish
    (flows of the same phase index share links max-min fairly; memoised per
    topology, `sim.memo`)."""
    if not colls:
        return 0.0
    seen = memo.table(topo, "concurrent_time")
    if seen is None:
        return _concurrent_time(topo, colls, prof)
    key = (tuple(colls), prof)
    got = seen.get(key)
    if got is None:
        got = seen[key] = _concurrent_time(topo, colls, prof)
    return got


def _concurrent_time(topo: Topology, colls: list[Coll], prof: Profile) -> float:
    measured = [prof.collective_point(c.op, len(c.ranks)) for c in colls]
    if all(m is not None for m in measured):
        return max(m.latency_s + bus_factor(c.op, len(c.ranks)) * c.nbytes / m.busbw_bytes_per_s
                   for c, m in zip(colls, measured, strict=True))
    all_phases = [phases(topo, c, prof) for c in colls]
    total = 0.0
    for k in range(max((len(p) for p in all_phases), default=0)):
        ph = [p[k] for p in all_phases if len(p) > k]
        paths = [pa for x in ph for pa in x.paths]
        sizes = [s for x in ph for s in x.sizes]
        finish = fluid_finish(paths, sizes, topo.capacity)
        total += max(finish, default=0.0) + max(x.latency_s for x in ph)
    return total


def collective_time(topo: Topology, coll: Coll, prof: Profile) -> float:
    """Seconds for one collective alone on an idle network."""
    return concurrent_time(topo, [coll], prof)


def merge_phases(per_coll: list[list[Phase]]) -> list[Phase]:
    """Phase k of concurrent collectives as one phase of all their flows
    (memoised by the identity of the phases merged, `sim.memo`: the entry
    keeps them, so an id stands for one object; memoised phases merge into
    the same objects, whose paths `sim.search.refine` recognises)."""
    seen = memo.shared_table("merge_phases")
    if seen is None:
        return _merge_phases(per_coll)
    key = tuple(tuple(map(id, x)) for x in per_coll)
    got = seen.get(key)
    if got is None:
        got = seen[key] = (tuple(map(tuple, per_coll)), tuple(_merge_phases(per_coll)))
    return list(got[1])


def _merge_phases(per_coll: list[list[Phase]]) -> list[Phase]:
    out = []
    for k in range(max((len(x) for x in per_coll), default=0)):
        ph = [x[k] for x in per_coll if len(x) > k]
        out.append(Phase(tuple(pa for x in ph for pa in x.paths),
                         tuple(sz for x in ph for sz in x.sizes), max(x.latency_s for x in ph)))
    return out


def point_to_point(topo: Topology, prof: Profile, pairs: list[tuple[int, int]], nbytes: float,
           channel_of: int) -> Phase:
    """Point-to-point flows of `nbytes` each (pairs with src == dst stay local);
    inter-node traffic uses the NIC next to GPU `pair[channel_of]`."""
    paths = tuple(topo.route(a, b, topo.nic_of((a, b)[channel_of]))
                  for a, b in pairs if a != b)
    if not paths:
        return Phase((), (), 0.0)
    lat = max(topo.latency(pa) for pa in paths) + prof.collective_step_latency_s
    return Phase(paths, (nbytes / prof.collective_efficiency,) * len(paths), lat)


def dedup_dispatch(topo: Topology, ranks: tuple[int, ...], nic_bytes: float, nvl_bytes: float,
                   prof: Profile) -> Phase:
    """One expert-parallel group's node-deduplicated dispatch as one phase
    (module docstring): `nic_bytes` from every rank to its peer on each other
    node of the group, `nvl_bytes` between every ordered pair of members of
    one node; latency of the two legs one after the other."""
    by_node: dict[int, list[int]] = {}
    for r in ranks:
        by_node.setdefault(topo.node_of(r), []).append(r)
    eff = prof.collective_efficiency
    nic_paths, nvl_paths = [], []
    for node, members in by_node.items():
        for i, a in enumerate(members):
            for other, there in by_node.items():
                if other != node and nic_bytes > 0:
                    nic_paths.append(topo.route(a, there[i % len(there)], topo.nic_of(a)))
            if nvl_bytes > 0:
                nvl_paths += [topo.route(a, b) for b in members if b != a]
    paths = nic_paths + nvl_paths
    sizes = [nic_bytes / eff] * len(nic_paths) + [nvl_bytes / eff] * len(nvl_paths)
    if not paths:
        return Phase((), (), 0.0)
    legs = [max(topo.latency(pa) for pa in x) + prof.collective_step_latency_s
            for x in (nic_paths, nvl_paths) if x]
    return Phase(tuple(paths), tuple(sizes), sum(legs))


def phases_time(topo: Topology, phases_: list[Phase]) -> float:
    """Seconds of `phases_` run one after another on an idle network, each
    phase's flows sharing links max-min fairly, plus its latency."""
    total = 0.0
    for ph in phases_:
        if ph.paths:
            total += max(fluid_finish(list(ph.paths), list(ph.sizes), topo.capacity),
                         default=0.0) + ph.latency_s
    return total
