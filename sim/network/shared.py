"""The network a simulation runs on: the cluster's graph with its slow links.

A slow link carries 1/`cluster.slow_link_slowdown` of its bandwidth both
ways. Links are named `nvlink:R` (GPU R to its NVSwitch), `nic:N.K` (NIC K
of node N to the network) or `node:N` (every NIC of node N); a random
`slow_link_fraction` of the NIC links is drawn with
`numpy.random.default_rng(variation_seed + 1)`, so a plan always means the
same cluster. `shared` memoises the result per (cluster, topology kind): the
graphs it returns are never changed afterwards, so routes and latencies
computed once are reused, and so are collective and stage costs
(`sim.memo.register`). Units: bytes/s.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from sandbox.specs import Cluster
from sim import memo
from sim.network.topology import Topology, build

_SHARED: dict = {}
_SHARED_MAX = 8


def _nic_links(topo: Topology, node: int, k: int) -> list[tuple]:
    """Directed edges of NIC k of `node` towards the network (both ways)."""
    g = topo.graph
    if topo.kind in ("ring", "torus"):
        gpn = topo.gpn
        ups = [(("gpu", node * gpn + i), ("rtr", node)) for i in range(gpn)]
    else:
        nic = ("nic", node, k)
        ups = [(nic, topo._leaf(node, k))]
    return [e for u, v in ups for e in ((u, v), (v, u)) if g.has_edge(*e)]


def link_edges(topo: Topology, name: str) -> list[tuple]:
    """Directed edges of a named link: nvlink:R, nic:N.K or node:N."""
    kind, _, where = name.partition(":")
    if kind == "nvlink":
        r = int(where)
        a, b = ("gpu", r), ("nvs", topo.node_of(r))
        return [(a, b), (b, a)]
    if kind == "nic":
        n, k = (int(x) for x in where.split("."))
        return _nic_links(topo, n, k)
    n = int(where)
    return [e for k in range(topo.cluster.nics_per_node) for e in _nic_links(topo, n, k)]


def slow_link_edges(topo: Topology) -> set[tuple]:
    """Every directed edge the cluster's slow links name or draw."""
    c = topo.cluster
    edges = {e for name in c.slow_links for e in link_edges(topo, name)}
    nics = c.nodes * c.nics_per_node
    k = round(c.slow_link_fraction * nics)
    if k and c.nodes > 1:
        rng = np.random.default_rng(c.variation_seed + 1)
        for i in rng.choice(nics, size=k, replace=False):
            edges.update(_nic_links(topo, int(i) // c.nics_per_node, int(i) % c.nics_per_node))
    return edges


def with_slow_links(topo: Topology) -> Topology:
    """A new topology: `topo` (left unchanged) with the cluster's slow links
    dividing their bandwidth; `slow_edges` lists them."""
    edges = slow_link_edges(topo)
    if not edges:
        return topo
    g = topo.graph.copy()
    if topo.cluster.slow_link_slowdown != 1.0:
        for e in edges:
            if g.has_edge(*e):
                g.edges[e]["bw"] /= topo.cluster.slow_link_slowdown
    return dataclasses.replace(topo, graph=g, slow_edges=frozenset(edges), _routes={},
                               _latency={})


def shared(cluster: Cluster, kind: str | None = None) -> Topology:
    """The cluster's network (`kind` overrides `cluster.topology`), slow links
    applied, memoised per (cluster, kind). Callers must not change it."""
    key = (cluster, kind or cluster.topology)
    topo = _SHARED.get(key)
    if topo is None:
        if len(_SHARED) >= _SHARED_MAX:
            _SHARED.pop(next(iter(_SHARED)))
        topo = _SHARED[key] = memo.register(with_slow_links(build(cluster, kind)))
    return topo
