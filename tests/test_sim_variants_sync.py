"""Synchronisation variants: compression, parameter server, local SGD, async SGD."""

import pytest

import sandbox
from sandbox import counts
from sandbox.profile import profile_for
from sim import compute, simulate
from sim.network.collectives import Coll, collective_time
from sim.network.topology import build
from sim.sync import compression

STARVED = {"nics_per_node": 1, "nic_gbit_per_s": 25.0}


def load(model="gpt2-124m", nodes=2, gpn=4, cluster=None, **par):
    base = {"tp": 1, "pp": 1, "global_batch": 32, "micro_batch": 2, "zero": 0}
    cluster = STARVED if cluster is None else cluster
    return sandbox.load({"model": {"preset": model},
                         "cluster": {"preset": "dgx-a100-80g", "nodes": nodes,
                                     "gpus_per_node": gpn, **cluster},
                         "parallel": {**base, **par}})


def test_compression_bytes_saved():
    """Ring all-reduce bytes per GPU: fp16 halves, int8 quarters them; top-k
    all-gathers 8-byte (value, index) pairs from every rank; PowerSGD sends
    (m + n) R values per m x n matrix and the vectors as they are."""
    p = 8
    ratio = {c: simulate(load(grad_compression=c), timeline=False).extra["compression_ratio"]
             for c in ("none", "fp16", "int8", "topk:0.01", "powersgd:4")}
    assert ratio["none"] == 1 and ratio["fp16"] == pytest.approx(2)
    assert ratio["int8"] == pytest.approx(4)
    n = counts.param_count(load().model)
    ring = 2 * (p - 1) / p * 4 * n
    assert ratio["topk:0.01"] == pytest.approx(ring / ((p - 1) * 8 * 0.01 * n), rel=1e-4)
    h, f, v, s, layers, r = 768, 3072, 50257, 1024, 12, 4
    mats = [(3 * h, h, layers), (h, h, layers), (f, h, layers), (h, f, layers), (v, h, 1),
            (s, h, 1)]
    in_mats = sum(a * b * k for a, b, k in mats)
    sent = sum((a + b) * r * k for a, b, k in mats) + (n - in_mats)
    assert ratio["powersgd:4"] == pytest.approx(n / sent, rel=1e-9)


def test_compression_saves_time_on_a_starved_network():
    """Reduction after the backward: the fp16 reduction takes half the time
    of the fp32 one plus its two cast kernels; the order follows the bytes."""
    res = {c: simulate(load(grad_compression=c), dp_overlap=False, timeline=False)
           for c in ("none", "fp16", "int8", "powersgd:4")}
    dp = {c: r.breakdown_s["dp_comm"] for c, r in res.items()}
    plan = load(grad_compression="fp16")
    dev = compute.device_of(plan, profile_for(plan.cluster))
    n = counts.param_count(plan.model)
    casts = 2 * compute.memory_time(dev, 6 * n)
    assert dp["fp16"] - casts == pytest.approx(dp["none"] / 2, rel=0.02)
    assert dp["none"] > dp["fp16"] > dp["int8"] > dp["powersgd:4"]
    assert res["none"].breakdown_s["compute"] == pytest.approx(
        res["powersgd:4"].breakdown_s["compute"])


def test_powersgd_kernels_are_charged():
    """On an idle-fast network PowerSGD's GEMMs and error feedback are what
    its reduction costs: more than fp32 all-reduce's share of the step."""
    plan = load(cluster={}, grad_compression="powersgd:4")
    dev = compute.device_of(plan, profile_for(plan.cluster))
    mats = compression.stage_matrices(plan.model, 1, 1, 0, 12)
    kernels = sum(x[1] for x in compression.bucket_steps(plan, dev, mats, 1.0, 8)
                  if x[0] == "compute")
    assert kernels > 2 * compute.memory_time(dev, 12 * counts.param_count(plan.model))
    r = simulate(plan, dp_overlap=False, timeline=False)
    assert r.breakdown_s["dp_comm"] > kernels
    assert r.breakdown_s["dp_comm"] > simulate(load(cluster={}), dp_overlap=False,
                                               timeline=False).breakdown_s["dp_comm"]


def test_parameter_server_nic_is_the_hot_spot():
    """One server (GPU 0): the 4 workers of node 1 push 4-byte gradients and
    pull 2-byte parameters through node 0's single NIC, one after the other."""
    plan = load(dp_mode="parameter-server", ps_servers=1)
    r = simulate(plan, dp_overlap=False, timeline=False)
    n = counts.param_count(plan.model)
    eff = profile_for(plan.cluster).collective_efficiency
    nic = 25e9 / 8
    closed = 4 * n * (4 + 2) / (nic * eff)
    assert r.breakdown_s["dp_comm"] == pytest.approx(closed, rel=0.02)
    spread = simulate(load(dp_mode="parameter-server", ps_servers=2), dp_overlap=False,
                      timeline=False)
    assert r.breakdown_s["dp_comm"] / spread.breakdown_s["dp_comm"] == pytest.approx(2, rel=0.05)
    assert r.extra["ps_servers"] == 1 and spread.extra["ps_servers"] == 2
    assert r.breakdown_s["optimizer"] == 0  # the servers update the parameters


def test_local_sgd_amortises_the_averaging():
    k = 4
    r = simulate(load(dp_mode="local-sgd", sync_every=k), timeline=False)
    plan = load()
    n = counts.param_count(plan.model)
    ring = tuple(range(8))
    avg = collective_time(build(plan.cluster), Coll("all_reduce", ring, 4 * n),
                          profile_for(plan.cluster))
    e = r.extra
    assert e["averaging_s"] == pytest.approx(avg, rel=1e-9)
    assert e["sync_every"] == k and e["k_step_time_s"] == pytest.approx(
        k * e["local_step_time_s"] + avg)
    assert r.step_time_s == pytest.approx(e["local_step_time_s"] + avg / k)
    assert sum(r.breakdown_s.values()) == pytest.approx(r.step_time_s)
    sync = simulate(plan, timeline=False)
    assert r.step_time_s < sync.step_time_s
    k16 = simulate(load(dp_mode="local-sgd", sync_every=16), timeline=False)
    assert k16.step_time_s < r.step_time_s


def test_async_staleness_and_throughput():
    """Equal workers: each gradient is about W - 1 updates stale and the
    throughput is W local batches per worker iteration."""
    r = simulate(load(cluster={}, dp_mode="async"), timeline=False)
    e = r.extra
    assert e["staleness_steps"] == pytest.approx(8 - 1, abs=0.5)
    assert e["updates_per_s"] == pytest.approx(8 / e["worker_iteration_s"], rel=0.05)
    assert r.tokens_per_s == pytest.approx(e["updates_per_s"] * 32 / 8 * 1024, rel=1e-9)
    assert sum(r.breakdown_s.values()) == pytest.approx(r.step_time_s)


def test_async_shrugs_off_a_straggler_that_stalls_synchronous_training():
    slow = {"slow_gpus": [3], "slow_gpu_slowdown": 3.0}
    a0 = simulate(load(cluster={}, dp_mode="async"), timeline=False)
    a1 = simulate(load(cluster=slow, dp_mode="async"), timeline=False)
    s0 = simulate(load(cluster={}), timeline=False)
    s1 = simulate(load(cluster=slow), timeline=False)
    assert a1.tokens_per_s > 0.85 * a0.tokens_per_s
    assert s1.tokens_per_s < 0.5 * s0.tokens_per_s
    # the slow worker's gradients are about twice as stale as anyone's without it
    assert a1.extra["staleness_max"] >= 2 * a0.extra["staleness_max"] - 2


def test_powersgd_needs_allreduce(cli, tmp_path):
    from test_cli import assert_one_line_error

    f = tmp_path / "p.toml"
    f.write_text('[cluster]\npreset = "dgx-a100-80g"\nnodes = 1\n[parallel]\nzero = 0\n'
                 'dp_mode = "parameter-server"\ngrad_compression = "powersgd:4"\n')
    assert_one_line_error(cli("simulate", str(f)), "parallel.grad_compression", "powersgd")


def test_cli_text_shows_the_variant_fields(cli, tmp_path):
    f = tmp_path / "p.toml"
    f.write_text('[cluster]\npreset = "dgx-a100-80g"\nnodes = 1\n[parallel]\nzero = 0\n'
                 'dp_mode = "async"\nglobal_batch = 16\n')
    r = cli("simulate", str(f))
    assert r.returncode == 0, r.stderr
    rows = dict(line.split(None, 1) for line in r.stdout.splitlines() if line[:1].isalpha()
                and len(line.split(None, 1)) == 2)
    assert rows["dp_mode"].strip() == "async"
    assert int(rows["staleness_steps"]) >= 1


@pytest.mark.parametrize("spec,parsed", [("none", ("none", 0.0)), ("bf16", ("bf16", 0.0)),
                                         ("topk:0.01", ("topk", 0.01)),
                                         ("powersgd:4", ("powersgd", 4.0))])
def test_compression_spec_is_parsed_in_one_place(spec, parsed):
    """`Parallel.compression`, used by the simulator and the runtime's hooks."""
    p = sandbox.load({"cluster": {"preset": "dgx-a100-80g", "nodes": 1},
                      "parallel": {"zero": 0, "grad_compression": spec}}).parallel
    assert p.compression == parsed
