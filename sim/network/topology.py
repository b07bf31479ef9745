"""Cluster network as a networkx graph, and routes between GPUs.

Vertices: `("gpu", r)`, `("nvs", node)` (the in-node NVSwitch), `("nic", node, k)`,
`("leaf", j)`, `("spine", 0)`, and for the study topologies `("rtr", node)`.
Directed edges carry `bw` (bytes/s per direction) and `lat` (seconds).
Builders: fat-tree (leaf per group of nodes, one aggregated spine with the
cluster's oversubscription), rail-optimized (leaf per NIC index: rail k of
every node meets in leaf k), and ring / 2-D torus of nodes for study.
Routes are computed arithmetically for fat-tree and rail (fast at 16k GPUs)
and with networkx shortest paths for ring and torus. `build` gives the
nominal network; `sim.network.shared` the cluster's, slow links applied.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import networkx as nx

from sandbox.specs import Cluster

LEAF_DOWNLINKS = 32  # NIC ports per leaf switch (HDR/NDR 40/64-port switches, half down)

Link = tuple  # (u, v) directed edge


@dataclass
class Topology:
    """The cluster's network graph (edge `bw` in bytes/s per direction, `lat`
    in seconds) and its routes, memoised per (src, dst, channel)."""

    cluster: Cluster
    graph: nx.DiGraph
    kind: str
    nodes_per_leaf: int = 1
    # the cluster's slow links, when applied (`sim.network.shared`): directed edges
    slow_edges: frozenset = frozenset()
    _routes: dict = field(default_factory=dict)
    _latency: dict = field(default_factory=dict)

    @property
    def gpn(self) -> int:
        return self.cluster.gpus_per_node

    def node_of(self, gpu: int) -> int:
        return gpu // self.gpn

    def nic_of(self, gpu: int) -> int:
        """The NIC next to `gpu` on its node (DGX: GPU i and NIC i share a
        PCIe switch; with fewer NICs, neighbouring GPUs share one)."""
        return gpu % self.gpn * self.cluster.nics_per_node // self.gpn

    def capacity(self, link: Link) -> float:
        """Bandwidth of a directed link, bytes/s."""
        return self.graph.edges[link]["bw"]

    def latency(self, path: tuple[Link, ...]) -> float:
        """Seconds of one message along `path` (sum of its links' latencies)."""
        lat = self._latency.get(path)
        if lat is None:
            lat = self._latency[path] = sum(self.graph.edges[e]["lat"] for e in path)
        return lat

    def route(self, src: int, dst: int, channel: int = 0) -> tuple[Link, ...]:
        """Directed links from GPU `src` to GPU `dst`; inter-node traffic leaves
        through NIC `channel % nics_per_node` (NCCL channels spread over NICs)."""
        key = (src, dst, channel)
        r = self._routes.get(key)
        if r is None:
            r = self._routes[key] = self._route(src, dst, channel)
        return r

    def _route(self, src: int, dst: int, channel: int) -> tuple[Link, ...]:
        a, b = self.node_of(src), self.node_of(dst)
        g_src, g_dst = ("gpu", src), ("gpu", dst)
        if a == b:
            return ((g_src, ("nvs", a)), (("nvs", a), g_dst))
        k = channel % self.cluster.nics_per_node
        na, nb = ("nic", a, k), ("nic", b, k)
        if self.kind in ("ring", "torus"):
            hops = nx.shortest_path(self.graph, ("rtr", a), ("rtr", b))
            mid = tuple(zip(hops, hops[1:], strict=False))
            return ((g_src, ("rtr", a)), *mid, (("rtr", b), g_dst))
        la, lb = self._leaf(a, k), self._leaf(b, k)
        path = [(g_src, na), (na, la)]
        if la != lb:
            path += [(la, ("spine", 0)), (("spine", 0), lb)]
        path += [(lb, nb), (nb, g_dst)]
        return tuple(path)

    def _leaf(self, node: int, nic: int) -> tuple:
        if self.kind == "rail":
            return ("leaf", nic, node // self.nodes_per_leaf)
        return ("leaf", node // self.nodes_per_leaf)


def _add(g: nx.DiGraph, u, v, bw: float, lat: float) -> None:
    g.add_edge(u, v, bw=bw, lat=lat)
    g.add_edge(v, u, bw=bw, lat=lat)


def build(cluster: Cluster, kind: str | None = None) -> Topology:
    """The cluster's graph (`kind` overrides `cluster.topology`)."""
    kind = kind or cluster.topology
    g = nx.DiGraph()
    gpn, nics = cluster.gpus_per_node, cluster.nics_per_node
    nvl = cluster.intra_node_gb_per_s * 1e9
    nic_bw = cluster.nic_gbit_per_s / 8 * 1e9
    lat_in = cluster.intra_node_latency_us * 1e-6 / 2  # two edges per hop
    lat_out = cluster.inter_node_latency_us * 1e-6
    for n in range(cluster.nodes):
        for i in range(gpn):
            _add(g, ("gpu", n * gpn + i), ("nvs", n), nvl, lat_in)
    topo = Topology(cluster, g, kind)
    if cluster.nodes == 1:
        return topo
    if kind in ("ring", "torus"):
        node_bw = nics * nic_bw
        for n in range(cluster.nodes):
            for i in range(gpn):  # GPU -> own node's router through the NICs
                _add(g, ("gpu", n * gpn + i), ("rtr", n), node_bw, lat_out / 4)
        if kind == "ring":
            for n in range(cluster.nodes):
                _add(g, ("rtr", n), ("rtr", (n + 1) % cluster.nodes), node_bw / 2, lat_out / 2)
        else:
            x = int(math.sqrt(cluster.nodes))
            while cluster.nodes % x:
                x -= 1
            y = cluster.nodes // x
            for n in range(cluster.nodes):
                i, j = divmod(n, y)
                for m in (((i + 1) % x) * y + j, i * y + (j + 1) % y):
                    if m != n:
                        _add(g, ("rtr", n), ("rtr", m), node_bw / 4, lat_out / 2)
        return topo
    per_leaf = max(1, LEAF_DOWNLINKS // (1 if kind == "rail" else nics))
    topo.nodes_per_leaf = per_leaf
    for n in range(cluster.nodes):
        for k in range(nics):
            nic = ("nic", n, k)
            for i in range(gpn):  # GPUs reach every NIC of their node (PCIe / PXN)
                _add(g, ("gpu", n * gpn + i), nic, nic_bw, lat_out / 4)
            _add(g, nic, topo._leaf(n, k), nic_bw, lat_out / 4)
    leaves = {topo._leaf(n, k) for n in range(cluster.nodes) for k in range(nics)}
    if len(leaves) > 1:
        # NICs under each leaf, counted once (was a scan per leaf: quadratic in the nodes)
        downlinks = Counter(topo._leaf(n, k) for n in range(cluster.nodes) for k in range(nics))
        for leaf in leaves:
            _add(g, leaf, ("spine", 0), downlinks[leaf] * nic_bw / cluster.oversubscription,
                 lat_out / 4)
    return topo
