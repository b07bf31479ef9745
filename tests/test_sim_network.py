"""Network model: max-min fairness, ring all-reduce in closed form, topology effects."""

import pytest

import sandbox
from sandbox.profile import Profile
from sim.network import topology
from sim.network.collectives import Coll, collective_time, concurrent_time
from sim.network.flows import fluid_finish, max_min_rates

IDEAL = Profile(collective_efficiency=1.0, collective_step_latency_s=0.0)


def cluster(**kw):
    base = {"preset": "dgx-a100-80g", "nodes": 1, "gpus_per_node": 8,
            "intra_node_latency_us": 0.0, "inter_node_latency_us": 0.0}
    c = {**base, **kw}
    return sandbox.load({"model": {"preset": "tiny"}, "cluster": c,
                         "parallel": {"global_batch": c["nodes"] * c["gpus_per_node"]}}).cluster


def test_max_min_textbook():
    """Three flows over two links of capacity 1 and 2 (Bertsekas & Gallager 6.5.2)."""
    cap = {"a": 1.0, "b": 2.0}.get
    rates = max_min_rates([["a"], ["a", "b"], ["b"]], cap)
    assert rates == pytest.approx([0.5, 0.5, 1.5])


def test_max_min_group_weight():
    """A group crossing a link twice gets half of what a single flow gets."""
    cap = {"a": 3.0}.get
    assert max_min_rates([{"a": 2}, ["a"]], cap) == pytest.approx([1.0, 1.0])


def test_fluid_finish_reshares_after_a_flow_ends():
    cap = {"a": 1.0}.get
    # both at 0.5 until the short one ends at t=2 (1 byte moved), then 1 byte at rate 1
    assert fluid_finish([["a"], ["a"]], [1.0, 2.0], cap) == pytest.approx([2.0, 3.0])


@pytest.mark.parametrize("p", [2, 4, 8])
@pytest.mark.parametrize("op,factor", [("all_reduce", 2), ("all_gather", 1),
                                        ("reduce_scatter", 1)])
def test_ring_closed_form(p, op, factor):
    """Ring on an idle NVSwitch of per-GPU bandwidth B: factor (p-1)/p N / B + steps alpha."""
    bw_gb = 100.0
    c = cluster(gpus_per_node=p, intra_node_gb_per_s=bw_gb, intra_node_latency_us=2.0)
    topo = topology.build(c)
    n = 64e6
    alpha = 2.0e-6  # one hop through the switch (two edges of 1 us)
    steps = factor * (p - 1)
    expect = factor * (p - 1) / p * n / (bw_gb * 1e9) + steps * alpha
    assert collective_time(topo, Coll(op, tuple(range(p)), n), IDEAL) == pytest.approx(expect)


def test_ring_across_nodes_uses_every_nic():
    """Two nodes, one GPU each in the group: the ring's two inter-node edges are
    split into one channel per NIC, so the group gets all NICs' bandwidth."""
    c = cluster(nodes=2, nics_per_node=4, nic_gbit_per_s=200.0)
    topo = topology.build(c)
    n = 1e9
    t = collective_time(topo, Coll("all_reduce", (0, 8), n), IDEAL)
    assert t == pytest.approx(2 * 1 / 2 * n / (4 * 25e9), rel=1e-6)


def test_halving_a_link_slows_only_collectives_that_cross_it():
    c = cluster(nodes=4, nics_per_node=1, nic_gbit_per_s=200.0)
    topo = topology.build(c)
    crossing = Coll("all_reduce", (0, 8), 1e9)  # nodes 0 and 1
    elsewhere = Coll("all_reduce", (16, 24), 1e9)  # nodes 2 and 3
    inside = Coll("all_reduce", tuple(range(8)), 1e9)  # NVSwitch of node 0
    before = [collective_time(topo, x, IDEAL) for x in (crossing, elsewhere, inside)]
    link = (("nic", 0, 0), topo._leaf(0, 0))
    topo.graph.edges[link]["bw"] /= 2
    after = [collective_time(topo, x, IDEAL) for x in (crossing, elsewhere, inside)]
    assert after[0] == pytest.approx(2 * before[0])  # the bottleneck halved
    assert after[1:] == pytest.approx(before[1:])


def test_concurrent_groups_contend_for_a_nic():
    """Two all-reduces whose rings leave node 0 through its one NIC share it."""
    c = cluster(nodes=2, nics_per_node=1, nic_gbit_per_s=200.0)
    topo = topology.build(c)
    a, b = Coll("all_reduce", (0, 8), 1e9), Coll("all_reduce", (1, 9), 1e9)
    alone = collective_time(topo, a, IDEAL)
    assert concurrent_time(topo, [a, b], IDEAL) == pytest.approx(2 * alone)


def test_oversubscribed_spine_slows_cross_leaf_traffic():
    n_leaf = topology.LEAF_DOWNLINKS  # nodes per leaf with one NIC each
    full = cluster(nodes=2 * n_leaf, nics_per_node=1, oversubscription=1.0)
    over = cluster(nodes=2 * n_leaf, nics_per_node=1, oversubscription=4.0)
    # every node of leaf 0 sends to its partner on leaf 1 at once
    colls = [Coll("send_recv", (8 * i, 8 * (i + n_leaf)), 1e8) for i in range(n_leaf)]
    t_full = concurrent_time(topology.build(full), colls, IDEAL)
    t_over = concurrent_time(topology.build(over), colls, IDEAL)
    assert t_over == pytest.approx(4 * t_full)


@pytest.mark.parametrize("nics,share", [(8, 1), (4, 2), (1, 8)])
def test_point_to_point_sends_leave_through_the_gpus_own_nic(nics, share):
    """GPU i of node 0 sends to GPU i of node 1, all 8 at once (a pipeline
    send split over a TP group): each uses the NIC next to it, so with 8 NICs
    they take as long as one send, with 4 two GPUs share a NIC, with 1 all do."""
    c = cluster(nodes=2, nics_per_node=nics, nic_gbit_per_s=200.0)
    topo = topology.build(c)
    n = 1e8
    one = concurrent_time(topo, [Coll("send_recv", (0, 8), n)], IDEAL)
    assert one == pytest.approx(n / 25e9)
    eight = concurrent_time(topo, [Coll("send_recv", (i, 8 + i), n) for i in range(8)], IDEAL)
    assert eight == pytest.approx(share * one)


@pytest.mark.parametrize("topo_kind,nics", [("fat-tree", 8), ("rail", 8), ("fat-tree", 1)])
def test_leaf_uplinks_carry_every_nic_below_them(topo_kind, nics):
    c = cluster(nodes=80, nics_per_node=nics, oversubscription=2.0, topology=topo_kind)
    topo = topology.build(c)
    nic_bw = c.nic_gbit_per_s / 8 * 1e9
    below: dict = {}
    for n in range(c.nodes):
        for k in range(nics):
            below[topo._leaf(n, k)] = below.get(topo._leaf(n, k), 0) + 1
    assert len(below) > 1
    for leaf, count in below.items():
        assert topo.graph.edges[leaf, ("spine", 0)]["bw"] == pytest.approx(
            count * nic_bw / 2.0)


def test_building_a_large_network_is_linear_in_the_nodes():
    import time

    def build_s(nodes: int) -> float:
        t0 = time.perf_counter()
        topology.build(cluster(nodes=nodes, nics_per_node=8))
        return time.perf_counter() - t0

    small, large = build_s(256), build_s(2048)  # 2,048 and 16,384 GPUs
    assert large < 16 * small + 0.5, (small, large)  # 8x the nodes: linear, not 64x
