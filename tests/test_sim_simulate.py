"""sim.simulate end to end: contract, symmetry, ZeRO, overlap, memory, the CLI."""

import json

import pytest

import sandbox
from sandbox.profile import Profile, profile_for
from sim import simulate
from sim.network.collectives import Coll, collective_time
from sim.network.topology import build


def plan(**par):
    base = {"tp": 2, "pp": 2, "micro_batch": 1, "global_batch": 16, "schedule": "1f1b",
            "zero": 1}
    return sandbox.load({"model": {"preset": "gpt3-1.3b"},
                         "cluster": {"preset": "dgx-a100-80g", "nodes": 2},
                         "parallel": {**base, **par}})


def test_contract_and_breakdown_adds_up():
    r = simulate(plan())
    d = r.to_dict()
    for k in ("params", "flops_per_step", "step_time_s", "tokens_per_s", "tflops_per_gpu",
              "hw_tflops_per_gpu", "mfu", "hfu", "memory_gb_per_gpu", "fits", "breakdown_s",
              "events", "sim_wall_s"):
        assert k in d
    assert set(d["breakdown_s"]) == {"compute", "tp_comm", "pp_comm", "dp_comm", "bubble",
                                     "optimizer", "other"}
    assert sum(d["breakdown_s"].values()) == pytest.approx(d["step_time_s"])
    assert 0 < d["mfu"] < d["hfu"] < 1  # selective recompute: hardware FLOPs > model FLOPs
    assert d["tokens_per_s"] == pytest.approx(16 * 2048 / d["step_time_s"])


@pytest.mark.parametrize("par", [{}, {"zero": 3, "pp": 1, "tp": 1},
                                 {"schedule": "interleaved-1f1b", "vpp": 2},
                                 {"zero": 0, "tp": 1}])
def test_one_replica_stands_for_all(par):
    """Simulating data-parallel replica 0 alone equals simulating every replica."""
    p = plan(**par)
    assert p.parallel.dp > 1
    one, every = simulate(p, replicas="one"), simulate(p, replicas="all")
    assert one.step_time_s == pytest.approx(every.step_time_s, rel=1e-9)
    assert one.breakdown_s == pytest.approx(every.breakdown_s, rel=1e-9, abs=1e-12)
    assert every.events > one.events


def test_zero3_adds_parameter_allgathers():
    z1, z3 = plan(zero=1, tp=1, pp=1), plan(zero=3, tp=1, pp=1)
    r1, r3 = simulate(z1), simulate(z3)
    def gathers(r):
        return [s for s in r.timeline if s["kind"] == "param_allgather"]

    per_op = [s for s in gathers(r3) if s["microbatch"] >= 0]
    n_ops = 2 * z3.parallel.microbatches  # one gather before every forward and backward
    assert len(per_op) == n_ops == len(gathers(r3))
    # ZeRO-1 gathers the updated parameters once, after the optimizer step
    (once,) = gathers(r1)
    assert once["start_s"] >= max(s["end_s"] for s in r1.timeline if s["kind"] == "optimizer")
    # each gather moves the 16-bit weights over the 16-GPU ring, one all-gather
    # per FSDP unit (every block, and the root's embedding / head)
    topo = build(z3.cluster)
    units = z3.model.layers + 1
    per = units * collective_time(topo, Coll("all_gather", tuple(range(16)),
                                             2 * r3.params / units), profile_for(z3.cluster))
    assert per_op[0]["end_s"] - per_op[0]["start_s"] == pytest.approx(per, rel=0.05)
    # ZeRO-3 has no post-step gather, and exposes at least every forward's first
    # FSDP unit (FSDP2's root pre-forward makes the gathers wait for the compute)
    post_step = once["end_s"] - once["start_s"]
    first_units = z3.parallel.microbatches * per / units
    assert r3.step_time_s >= (r1.step_time_s - post_step + first_units) * (1 - 1e-12)


def test_dp_overlap_hides_gradient_reduction():
    p = plan(tp=1, pp=1, zero=0)
    overlapped, after = simulate(p), simulate(p, dp_overlap=False)
    assert overlapped.breakdown_s["dp_comm"] < after.breakdown_s["dp_comm"]
    assert overlapped.step_time_s < after.step_time_s


def test_fp16_reduces_16bit_gradients():
    """Megatron keeps fp16 gradients 16-bit (bf16 forces fp32 main_grad): the
    data-parallel all-reduce moves half the bytes, the optimizer keeps the
    fp32 copy instead (20 bytes per parameter against 18)."""
    bf = plan(tp=1, pp=1, zero=0)
    fp = bf.replace(**{"train.precision": "fp16"})
    rb, rf = simulate(bf, dp_overlap=False), simulate(fp, dp_overlap=False)
    assert rf.breakdown_s["dp_comm"] == pytest.approx(rb.breakdown_s["dp_comm"] / 2, rel=0.02)
    assert rf.breakdown_s["compute"] == pytest.approx(rb.breakdown_s["compute"])
    # 16-bit compression of gradients that are already 16-bit changes nothing
    fc = simulate(fp.replace(**{"parallel.grad_compression": "fp16"}), dp_overlap=False)
    assert fc.step_time_s == pytest.approx(rf.step_time_s)
    mb, mf = rb.memory_gb_per_gpu, rf.memory_gb_per_gpu
    assert mf["grads"] == pytest.approx(mb["grads"] / 2)
    assert mf["params"] + mf["grads"] + mf["optimizer"] == pytest.approx(
        (mb["params"] + mb["grads"] + mb["optimizer"]) * 20 / 18)


def test_tp_overlap_hides_backward_allreduce():
    base, ov = plan(tp=8, pp=1, sequence_parallel=False), plan(tp=8, pp=1,
                                                               sequence_parallel=False,
                                                               tp_overlap=True)
    rb, ro = simulate(base), simulate(ov)
    assert ro.breakdown_s["tp_comm"] < rb.breakdown_s["tp_comm"]
    assert ro.breakdown_s["tp_comm"] >= rb.breakdown_s["tp_comm"] / 2 - 1e-12  # fwd stays


def test_host_bound_small_plan():
    """With a host cost per kernel, tiny microbatches are bound by dispatch."""
    p = plan(tp=1, pp=1)
    slow_host = Profile(host_op_overhead_s=1e-3)
    r = simulate(p, profile=slow_host)
    assert r.step_time_s > simulate(p, profile=Profile()).step_time_s
    assert r.breakdown_s["other"] > 0.5 * r.step_time_s
    # `other` is the host-bound time here, reported on its own as well
    assert 0 < r.extra["host_bound_s"] <= r.breakdown_s["other"] * (1 + 1e-9)
    assert "host_bound_s" not in simulate(p, profile=Profile()).extra


def test_slower_network_slows_only_communication():
    fast = plan(tp=1, pp=1, zero=0)
    slow = fast.replace(**{"cluster.nic_gbit_per_s": 25.0})
    rf, rs = simulate(fast, dp_overlap=False), simulate(slow, dp_overlap=False)
    assert rs.breakdown_s["compute"] == pytest.approx(rf.breakdown_s["compute"])
    assert rs.breakdown_s["dp_comm"] > 4 * rf.breakdown_s["dp_comm"]


def test_does_not_fit_is_reported():
    p = sandbox.load({"model": {"preset": "gpt3-175b"},
                      "cluster": {"preset": "dgx-a100-80g", "nodes": 1},
                      "parallel": {"tp": 8, "pp": 1, "global_batch": 8}})
    r = simulate(p)
    assert r.fits is False and r.memory_gb_per_gpu["total"] > 80
    assert r.step_time_s > 0


def test_cli_simulate_json_trace_plot(cli, tmp_path):
    f = tmp_path / "p.toml"
    f.write_text(plan().to_toml())
    r = cli("simulate", str(f), "--json", "--trace", str(tmp_path / "t.json"),
            "--plot", str(tmp_path / "g.png"))
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["step_time_s"] > 0 and d["fits"] is True
    trace = json.loads((tmp_path / "t.json").read_text())
    names = {e["name"] for e in trace["traceEvents"] if e["ph"] == "X"}
    assert {"fwd", "bwd", "pp_comm"} <= names
    assert (tmp_path / "g.png").stat().st_size > 10_000


def test_cli_simulate_reports_not_fitting_plan(cli, tmp_path):
    f = tmp_path / "big.toml"
    f.write_text('[model]\npreset = "gpt3-175b"\n[cluster]\npreset = "dgx-a100-80g"\n'
                 'nodes = 1\n[parallel]\ntp = 8\nglobal_batch = 8\n')
    r = cli("simulate", str(f))
    assert r.returncode == 0, r.stderr
    assert "does not fit" in r.stdout


@pytest.mark.parametrize("text,words", [
    ('[parallel]\ntp = 4\n', ["parallel.tp", "heads"]),
    # 5 pipeline stages of a 4-layer model: a stage without a block
    ('[model]\npreset = "tiny"\n[cluster]\npreset = "dgx-a100-80g"\nnodes = 7\n'
     '[parallel]\npp = 7\n', ["parallel.pp"]),
    ('[parallel]\nschedule = "1f2b"\n', ["parallel.schedule"]),
])
def test_cli_simulate_rejects_bad_plans(cli, tmp_path, text, words):
    from test_cli import assert_one_line_error

    f = tmp_path / "bad.toml"
    f.write_text(text)
    assert_one_line_error(cli("simulate", str(f)), *words)
