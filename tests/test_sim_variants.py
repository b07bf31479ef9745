"""Stragglers, heterogeneity, uneven stages and data skew in the simulator."""

import pytest

import sandbox
from sandbox.profile import profile_for
from sim import simulate, variation
from sim.lowering import lower
from sim.network.shared import shared
from sim.network.topology import build


def load(model="gpt2-350m", nodes=1, gpn=4, cluster=None, **par):
    """A small plan on DGX A100 nodes with the default profile (no host-dispatch
    bound), so that closed forms of the GPU-side mechanisms apply."""
    base = {"tp": 1, "pp": 1, "global_batch": 16, "micro_batch": 2, "zero": 0}
    return sandbox.load({"model": {"preset": model},
                         "cluster": {"preset": "dgx-a100-80g", "nodes": nodes,
                                     "gpus_per_node": gpn, "profile": "",
                                     **(cluster or {})},
                         "parallel": {**base, **par}})


def stage_times(plan):
    w = lower(plan, shared(plan.cluster), profile_for(plan.cluster))
    return [w.cost[(s, 0, "F")].total + w.cost[(s, 0, "B")].total for s in range(plan.parallel.pp)]


@pytest.mark.parametrize("f", [1.3, 2.0])
def test_one_slow_gpu_slows_a_synchronous_data_parallel_step(f):
    """Pure data parallel, reduction after the backward: the slow replica's
    compute and optimizer take f times longer and everyone waits for it."""
    p = load()
    q = load(cluster={"slow_gpus": [2], "slow_gpu_slowdown": f})
    r0, r = simulate(p, dp_overlap=False), simulate(q, dp_overlap=False)
    b = r0.breakdown_s
    assert r.step_time_s - r0.step_time_s == pytest.approx((f - 1) * (b["compute"]
                                                                      + b["optimizer"]))
    assert r.breakdown_s["dp_comm"] == pytest.approx(b["dp_comm"])
    assert r.critical_rank == 2 and r.extra["simulated_replicas"] == 2
    assert simulate(q, dp_overlap=False, replicas="all").step_time_s == pytest.approx(
        r.step_time_s, rel=1e-12)


@pytest.mark.parametrize("f", [1.5, 3.0])
def test_one_slow_gpu_on_a_pipeline_stage(f):
    """1F1B with stage times T_s and m micro-batches: the step is about
    m * max(T) + sum of the other stages (fill and drain); a slow GPU on stage
    2 multiplies T_2 by f."""
    p = load("gpt3-1.3b", pp=4, micro_batch=1)
    q = load("gpt3-1.3b", pp=4, micro_batch=1, cluster={"slow_gpus": [2],
                                                         "slow_gpu_slowdown": f})
    t = stage_times(p)
    t[2] *= f
    m = p.parallel.microbatches
    closed = m * max(t) + sum(t) - max(t)
    r = simulate(q)
    assert r.step_time_s == pytest.approx(closed, rel=0.03)
    assert r.step_time_s > simulate(p).step_time_s
    assert r.extra.get("simulated_replicas") is None  # dp = 1: nothing to pick


def test_slow_gpu_paces_its_tensor_parallel_group():
    """Whichever rank of a TP group is slow, the stage runs at its pace."""
    a = load(tp=2, cluster={"slow_gpus": [0]})
    b = load(tp=2, cluster={"slow_gpus": [1]})
    assert simulate(a).step_time_s == pytest.approx(simulate(b).step_time_s, rel=1e-12)
    assert simulate(a).step_time_s > simulate(load(tp=2)).step_time_s * 1.5


def test_random_slow_fraction_is_seeded():
    pick = [load(nodes=4, gpn=8, global_batch=64,
                 cluster={"slow_gpu_fraction": 0.25, "variation_seed": s})
            for s in (0, 0, 1)]
    sets = [set(variation.gpu_slowdowns(x.cluster)) for x in pick]
    assert len(sets[0]) == 8 and sets[0] == sets[1] and sets[0] != sets[2]


def test_mixed_gpu_kinds_stage_on_the_slower_kind():
    """pp = 2 over two nodes: the stage on the A100 node bounds the step; MFU
    is measured against both kinds' peaks, the fit against the smaller memory."""
    par = {"pp": 2, "micro_batch": 1, "global_batch": 16}
    a100 = load("gpt3-1.3b", nodes=2, gpn=1, **par)
    h100 = load("gpt3-1.3b", nodes=2, gpn=1, cluster={"gpu": "h100-sxm"}, **par)
    mixed = load("gpt3-1.3b", nodes=2, gpn=1, cluster={"node_gpus": ["h100-sxm", "a100-40g"]},
                 **par)
    ra, rh, rm = simulate(a100), simulate(h100), simulate(mixed)
    assert rh.step_time_s < rm.step_time_s
    assert rm.step_time_s == pytest.approx(
        simulate(load("gpt3-1.3b", nodes=2, gpn=1, cluster={"gpu": "a100-40g"}, **par)
                 ).step_time_s, rel=0.25)
    peak = (989.4e12 + 312e12) / 2
    assert rm.mfu == pytest.approx(rm.flops_per_step / (rm.step_time_s * 2 * peak))
    assert ra.step_time_s > rh.step_time_s


def test_slow_link_slows_only_the_traffic_that_crosses_it():
    """tp = 8 inside each node, dp = 2 across two nodes. A slow NIC uplink of
    node 1 slows the data-parallel reduction only; a slow NVLink port of GPU 3
    slows replica 0's tensor-parallel collectives only."""
    kw = {"model": "gpt3-1.3b", "nodes": 2, "gpn": 8, "tp": 8, "micro_batch": 1}
    base = simulate(load(**kw), dp_overlap=False)
    nic = simulate(load(cluster={"slow_links": ["node:1"], "slow_link_slowdown": 4.0}, **kw),
                   dp_overlap=False)
    nvl = simulate(load(cluster={"slow_links": ["nvlink:3"], "slow_link_slowdown": 4.0},
                        **kw), dp_overlap=False)
    b = base.breakdown_s
    assert nic.breakdown_s["dp_comm"] > 3 * b["dp_comm"]
    assert nic.breakdown_s["tp_comm"] == pytest.approx(b["tp_comm"])
    assert nic.breakdown_s["compute"] == pytest.approx(b["compute"])
    assert nvl.breakdown_s["tp_comm"] > 2 * b["tp_comm"]
    assert nvl.breakdown_s["dp_comm"] == pytest.approx(b["dp_comm"], rel=1e-6)
    assert nvl.extra["simulated_replicas"] == 2 and nvl.critical_rank == 0
    # nothing crosses node 1's NICs in a single-replica plan inside each node
    solo = load(cluster={"slow_links": ["node:1"]}, model="gpt3-1.3b", nodes=2, gpn=8, tp=8,
                pp=2, micro_batch=1)
    assert simulate(solo).breakdown_s["tp_comm"] == pytest.approx(
        simulate(load(model="gpt3-1.3b", nodes=2, gpn=8, tp=8, pp=2,
                      micro_batch=1)).breakdown_s["tp_comm"])


def test_slow_links_live_in_their_own_network_and_lowering_changes_none():
    """`shared` applies the slow links to a copy of the nominal graph (once,
    memoised); `lower` reads the network and leaves every bandwidth as it was."""
    plan = load(cluster={"slow_links": ["node:1"], "slow_link_slowdown": 4.0},
                model="gpt3-1.3b", nodes=2, gpn=8, tp=8, micro_batch=1)
    nominal, slow = build(plan.cluster), shared(plan.cluster)
    assert shared(plan.cluster) is slow and slow.slow_edges
    for e in slow.slow_edges:
        assert slow.graph.edges[e]["bw"] == nominal.graph.edges[e]["bw"] / 4.0
    before = {e: d["bw"] for e, d in slow.graph.edges.items()}
    lower(plan, slow, profile_for(plan.cluster))
    lower(plan, slow, profile_for(plan.cluster))
    assert {e: d["bw"] for e, d in slow.graph.edges.items()} == before
    assert not shared(load(model="gpt3-1.3b", nodes=2, gpn=8, tp=8,
                           micro_batch=1).cluster).slow_edges


def test_uneven_stages_change_the_bubble_as_in_closed_form():
    """With the last stage the slowest, the 1F1B step is the fill (forwards of
    the stages before it), m of its F + B, and the drain (their backwards):
    m max(T) + sum(T) - max(T) with T_s = F_s + B_s; each stage idles for the
    rest of the step, step - m T_s."""
    even = load("gpt3-1.3b", pp=4, micro_batch=1)
    uneven = load("gpt3-1.3b", pp=4, micro_batch=1, stage_layers=[5, 5, 5, 9])
    m = even.parallel.microbatches
    for plan in (even, uneven):
        t = stage_times(plan)
        r = simulate(plan)
        assert r.step_time_s == pytest.approx(m * max(t) + sum(t) - max(t), rel=0.03)
    t = stage_times(uneven)
    r = simulate(uneven)
    assert r.step_time_s > simulate(even).step_time_s * 1.3
    busy = [t[s] * m for s in range(4)]
    stages = {s["rank"]: 0.0 for s in r.timeline}
    for s in r.timeline:
        if s["stream"] == "compute" and s["kind"] not in ("optimizer", "bubble"):
            stages[s["rank"]] += s["end_s"] - s["start_s"]
    for s, rank in enumerate(sorted(stages)):
        assert stages[rank] == pytest.approx(busy[s], rel=1e-6)
        assert (r.step_time_s - stages[rank]) / r.step_time_s == pytest.approx(
            1 - busy[s] / r.step_time_s, abs=1e-9)


def test_data_skew_waits_for_the_longest_replica():
    """One replica with 2x longer sequences: the step is that of a plan whose
    replicas all have long sequences (everyone waits), the tokens are fewer."""
    short = [512, 512, 512]
    skew = load(replica_seq_len=short + [1024])
    longest = load()
    r, rl = simulate(skew, dp_overlap=False), simulate(longest, dp_overlap=False)
    assert r.step_time_s == pytest.approx(rl.step_time_s, rel=1e-12)
    tokens = 16 // 4 * (3 * 512 + 1024)
    assert r.tokens_per_s == pytest.approx(tokens / r.step_time_s)
    assert r.flops_per_step < rl.flops_per_step
    one = simulate(skew, dp_overlap=False, replicas="one")  # replica 0 alone: too fast
    assert one.step_time_s < r.step_time_s


def test_uneven_microbatches_per_replica():
    even = load()
    uneven = load(replica_microbatches=[3, 2, 1, 2])
    r0, r = simulate(even, dp_overlap=False), simulate(uneven, dp_overlap=False)
    per_mb = r0.breakdown_s["compute"] / even.parallel.microbatches
    assert r.step_time_s - r0.step_time_s == pytest.approx(per_mb, rel=1e-9)


@pytest.mark.parametrize("cluster,par", [
    ({"slow_gpus": [5], "slow_gpu_slowdown": 1.5}, {"replica_seq_len": [512, 1024, 1024, 768]}),
    ({"slow_links": ["nvlink:9"], "slow_gpu_fraction": 0.1}, {"zero": 1}),
    ({"node_gpus": ["a100-80g", "a100-40g"]}, {"replica_microbatches": [5, 3, 4, 4]}),
])
def test_auto_replicas_equal_all(cluster, par):
    p = load("gpt3-1.3b", nodes=2, gpn=8, cluster=cluster, tp=2, pp=2, micro_batch=1, **par)
    auto, every = simulate(p), simulate(p, replicas="all")
    assert auto.step_time_s == pytest.approx(every.step_time_s, rel=1e-12)
    assert auto.breakdown_s == pytest.approx(every.breakdown_s, rel=1e-9, abs=1e-12)


def test_new_fields_round_trip_through_toml():
    p = load(nodes=2, gpn=2, cluster={"slow_gpus": [1], "slow_links": ["nic:0.1"],
                                      "node_gpus": ["a100-80g", "h100-sxm"]},
             pp=2, stage_layers=[14, 10], replica_microbatches=[3, 5],
             replica_seq_len=[1024, 512])
    assert sandbox.load(p.to_toml()) == p


@pytest.mark.parametrize("section,field,value,words", [
    ("cluster", "slow_gpus", [9], ["cluster.slow_gpus", "GPU 9"]),
    ("cluster", "slow_links", ["nic:0"], ["cluster.slow_links", "nic:NODE.NIC"]),
    ("cluster", "node_gpus", ["b300"], ["cluster.node_gpus", "b300"]),
    ("cluster", "slow_gpu_slowdown", 0.5, ["cluster.slow_gpu_slowdown", "at least 1"]),
    ("parallel", "stage_layers", [20, 3], ["parallel.stage_layers", "sum"]),
    ("parallel", "replica_microbatches", [1, 2], ["parallel.replica_microbatches", "4"]),
    ("parallel", "replica_seq_len", [1, 2, 3, 9999], ["parallel.replica_seq_len", "9999"]),
    ("parallel", "stage_layers", "12,12", ["parallel.stage_layers", "list of integers"]),
])
def test_bad_variation_fields_are_one_line(cli, tmp_path, section, field, value, words):
    from test_cli import assert_one_line_error

    f = tmp_path / "bad.toml"
    val = repr(value).replace("'", '"')
    extra = "pp = 2\n" if field == "stage_layers" else ""
    f.write_text('[model]\npreset = "gpt2-350m"\n[cluster]\npreset = "dgx-a100-80g"\n'
                 'nodes = 1\ngpus_per_node = 4\n' + (f"{field} = {val}\n" if section == "cluster"
                                                      else "")
                 + "[parallel]\nglobal_batch = 16\n" + extra
                 + (f"{field} = {val}\n" if section == "parallel" else ""))
    assert_one_line_error(cli("simulate", str(f)), *words)
