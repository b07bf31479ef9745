"""Calibration on a tiny budget: a loadable profile with sane values that the
simulator uses, reproducible within the measured spread."""

from __future__ import annotations

import dataclasses
import tomllib

import pytest

import sandbox
from runtime.calibrate.collectives import CollectiveFit, fit_alpha_beta
from runtime.calibrate.kernels import summarize
from runtime.calibrate.profile import agreement, measurements
from runtime.calibrate.run import Budget, calibrate
from sandbox.profile import bus_factor

# One process x 1 thread: a single-threaded rank (stable on a loaded 2-core box);
# the tiny model's shapes; two collective sizes. About 10 s per calibration.
TINY = Budget(repeats=5, min_time_s=0.002, collective_min_time_s=0.002, micro_batches=(1,),
              tps=(1,), squares=(),
              collective_sizes=(4096, 1 << 20), copy_bytes=16 << 20, adamw_params=200_000,
              models=("tiny",))
# Two calibrations agree on a point when their medians differ by at most the sum
# of their inter-quartile ranges plus this fraction of the larger median, on at
# least AGREE of the points (a shared 2-core machine: other jobs come and go).
TOLERANCE, AGREE = 0.5, 0.8


def _calibrate():
    return calibrate("cpu", budget=TINY, processes=(2,), progress=False)


@pytest.fixture(scope="module")
def cal():
    return _calibrate()


@pytest.fixture(scope="module")
def profile_path(cal, tmp_path_factory):
    return cal.write(tmp_path_factory.mktemp("cal") / "profile.toml")


def test_profile_is_loadable_toml_with_sane_values(profile_path):
    data = tomllib.loads(profile_path.read_text())
    m = data["measurements"]
    assert m["machine"]["cores"] >= 1 and m["machine"]["torch"]
    kernels = m["kernel"]
    kinds = {k["kind"] for k in kernels}
    assert {"gemm", "attention", "memory", "copy", "optimizer"} <= kinds
    for k in kernels:
        assert k["time_s"] > 0 and k["time_min_s"] <= k["time_s"] <= k["time_max_s"]
        assert k["rate"] > 0
        if k["flops"] > 0:
            assert 0 < k["efficiency"] <= 1.5, k
    copy = next(k for k in kernels if k["kind"] == "copy")
    assert 1e8 < copy["rate"] < 1e13  # bytes/s: between 0.1 GB/s and 10 TB/s
    ops = {c["op"] for c in m["collective"]}
    assert ops == {"all_reduce", "all_gather", "reduce_scatter", "send_recv"}
    for c in m["collective"]:
        assert c["latency_s"] > 0 and c["busbw_bytes_per_s"] > 0
        assert c["bytes"] == sorted(c["bytes"]) and all(t > 0 for t in c["time_s"])


def test_measurements_round_trip_through_toml(cal, profile_path):
    """The [measurements] table (written by tomli_w) loads back exactly, and the
    profile part loads back as the profile the calibration gives."""
    from runtime.calibrate.profile import _plain, measurements
    from sandbox.profile import load_profile

    m = tomllib.loads(profile_path.read_text())["measurements"]
    assert {k: m[k] for k in m if k != "compute_by_processes"} == _plain(measurements(cal))
    assert load_profile(profile_path) == cal.to_profile()
    tricky = {"note": 'a "quoted"\nline\\', "nested": {"x y": [1.5, float("inf")]}}
    from runtime.calibrate.profile import dumps_toml

    assert tomllib.loads(dumps_toml(tricky)) == tricky


def test_profile_loads_and_the_simulator_uses_it(cal, profile_path):
    from sandbox.profile import load_profile

    prof = load_profile(profile_path)
    assert prof.matmul and prof.attention and prof.memory_bytes_per_s > 0
    assert all(r > 0 for _, r in prof.matmul + prof.attention)
    assert [x for x, _ in prof.matmul] == sorted(x for x, _ in prof.matmul)
    assert {c.op for c in prof.collective} == {"all_reduce", "all_gather", "reduce_scatter",
                                               "send_recv"}
    assert all(c.group_size == 2 and c.backend == "gloo" for c in prof.collective)
    base = {"model": {"preset": "tiny"}, "parallel": {"dp": 2, "global_batch": 8}}
    plain = sandbox.simulate(sandbox.load(base)).to_dict()
    named = sandbox.load({**base, "cluster": {"preset": "localhost",
                                              "profile": str(profile_path)}})
    assert named.cluster.profile == str(profile_path)
    calibrated = sandbox.simulate(named).to_dict()
    assert calibrated["step_time_s"] > 0
    assert calibrated["step_time_s"] != pytest.approx(plain["step_time_s"], rel=1e-3)


def test_more_work_takes_longer(cal):
    """Forward+backward of a linear (3x the FLOPs) takes longer than its forward
    (fastest repeats: the least disturbed by other jobs on a shared machine)."""
    ks = cal.kernels[0].kernels
    for k in ks:
        if k.pass_ == "fwd" and k.kind in ("gemm", "attention"):
            both = next(b for b in ks if b.name == k.name and b.shape == k.shape
                        and b.pass_ == "fwd+bwd")
            assert both.time.min > k.time.min, (k.name, k.shape)


def test_two_calibrations_agree_within_spread(cal):
    again = _calibrate()
    a = agreement(measurements(cal), measurements(again), TOLERANCE)
    assert a["points"] == sum(len(k.kernels) for k in cal.kernels) + len(
        cal.collectives[0].points)
    assert a["agree_fraction"] >= AGREE, a


def test_agreement_detects_a_different_machine(cal):
    """The criterion can fail: the same points 3x slower with a tight spread do
    not agree."""
    m = measurements(cal)
    slow = {**m, "kernel": [{**k, "time_s": 3 * k["time_s"], "time_q1_s": 3 * k["time_s"],
                             "time_q3_s": 3 * k["time_s"]} for k in m["kernel"]],
            "collective": []}
    tight = {**m, "kernel": [{**k, "time_q1_s": k["time_s"], "time_q3_s": k["time_s"]}
                             for k in m["kernel"]], "collective": []}
    assert agreement(tight, slow, TOLERANCE)["agree_fraction"] == 0.0
    assert agreement(tight, tight, TOLERANCE)["agree_fraction"] == 1.0


def test_alpha_beta_fit_recovers_latency_and_bandwidth():
    sizes = [1 << k for k in range(10, 25, 2)]
    for op in ("all_reduce", "all_gather", "send_recv"):
        truth = CollectiveFit(op, 50e-6, 2e9)
        times = [truth.predict(s, 4) for s in sizes]
        fit = fit_alpha_beta(op, sizes, times, 4)
        assert fit.latency_s == pytest.approx(50e-6, rel=1e-3)
        assert fit.busbw_bytes_per_s == pytest.approx(2e9, rel=1e-3)
    assert bus_factor("all_reduce", 2) == 1.0 and bus_factor("all_gather", 4) == 0.75


def test_summarize_quartiles():
    s = summarize([5, 1, 3, 2, 4])
    assert (s.median, s.min, s.max, s.n) == (3, 1, 5, 5)
    assert s.q1 == 2 and s.q3 == 4 and s.iqr_rel == pytest.approx(2 / 3)


def test_cli_calibrate_rejects_missing_directory(cli, tmp_path):
    r = cli("calibrate", "--out", str(tmp_path / "nope" / "p.toml"), "--quick")
    assert r.returncode == 1
    assert "no such directory" in r.stderr and "Traceback" not in r.stderr


def test_cpu_profile_matches_the_runtime_kernels(cal, profile_path):
    """A CPU calibration runs each rank with the threads `sandbox run` gives it,
    says that a CPU BLAS pads nothing and that the measured attention (SDPA)
    covers the softmax; the profile keeps both through TOML."""
    from runtime.calibrate.run import rank_threads
    from sandbox.profile import dump_profile, load_profile, profile_from_dict

    assert all(pk.threads == rank_threads() for pk in cal.kernels)
    prof = load_profile(profile_path)
    assert prof.gemm_tile == (1, 1, 1) and prof.attention_fused is True
    back = profile_from_dict(tomllib.loads(dump_profile(prof)))
    assert back == prof


def test_bad_gemm_tile_is_one_line(tmp_path):
    from sandbox.errors import SandboxError
    from sandbox.profile import load_profile

    p = tmp_path / "p.toml"
    p.write_text("[compute]\ngemm_tile = [128, 0]\n")
    with pytest.raises(SandboxError, match="gemm_tile"):
        load_profile(p)


def test_tile_padding_and_fused_attention_come_from_the_profile():
    """GPU (default profile): an awkward GEMM costs its padded shape and the
    unfused (eager) attention pays a softmax pass over the s x s scores; with a
    CPU profile's tile (1, 1, 1) and fused attention neither happens."""
    from sandbox.profile import Profile
    from sim import compute

    plan = sandbox.load({"model": {"preset": "gpt-mini"}, "parallel": {"micro_batch": 4},
                         "train": {"attention": "eager"}})
    gpu = compute.device_of(plan, Profile())
    cpu = compute.device_of(plan, Profile(gemm_tile=(1, 1, 1), attention_fused=True))
    # 129 rows pad to 256 on the GPU tile: as slow as 256 rows
    assert compute.gemm_time(gpu, 129, 1024, 1024) == pytest.approx(
        compute.gemm_time(gpu, 256, 1024, 1024))
    flat = ((1e3, 1e11), (1e15, 1e11))  # a measured curve at one rate: time ~ FLOPs
    for tile, ratio in (((128, 128, 32), 1.0), ((1, 1, 1), 129 / 256)):
        d = compute.device_of(plan, Profile(matmul=flat, gemm_tile=tile, kernel_overhead_s=0))
        assert compute.gemm_time(d, 129, 1024, 1024) == pytest.approx(
            ratio * compute.gemm_time(d, 256, 1024, 1024), rel=0.02)
    lt_gpu, lt_cpu = compute.layer_times(plan, gpu), compute.layer_times(plan, cpu)
    m = plan.model
    ss, w = 4 * m.heads * m.seq_len ** 2, 4 if plan.train.precision == "fp32" else 2
    softmax = gpu.profile.kernel_overhead_s + (ss * w * 2 + ss * (2 * w + 1)) / (
        gpu.profile.memory_rate(gpu.hbm_bytes_per_s))
    unfused_cpu = compute.layer_times(plan, compute.device_of(
        plan, Profile(gemm_tile=(1, 1, 1))))
    assert unfused_cpu.fwd - lt_cpu.fwd == pytest.approx(softmax, rel=1e-9)
    assert lt_cpu.attn_core < unfused_cpu.attn_core
    assert lt_gpu.fwd > lt_cpu.fwd


def test_profile_has_the_measured_layer(profile_path):
    """The calibration times a whole layer as the runtime runs it (tiny, b=1,
    tp=1 here) and its AdamW step; the profile keeps both."""
    from sandbox.profile import load_profile

    prof = load_profile(profile_path)
    spec = sandbox.load({"model": {"preset": "tiny"}}).model
    bp = prof.block_point(1, False, 1, spec.seq_len, spec.hidden, spec.heads, spec.ffn_hidden)
    assert bp is not None and bp.seconds > 0 and bp.optimizer_s > 0
    assert prof.block_point(2, True, 1, spec.seq_len, spec.hidden, spec.heads,
                            spec.ffn_hidden) is None


def test_a_measured_layer_sets_the_block_time():
    """With a measured layer of the plan's shape, a block's kernels plus its
    modelled TP communication take the measured time and the optimizer pays the
    measured AdamW step; other shapes, and ZeRO over dp > 1 for the optimizer,
    keep the kernel model."""
    from sandbox.memory import layer_params_per_gpu
    from sandbox.profile import BlockPoint, Profile
    from sim import compute, simulate

    base = {"model": {"preset": "gpt-mini"}, "cluster": {"preset": "localhost"},
            "parallel": {"micro_batch": 4, "global_batch": 16, "tp": 2}}
    plan = sandbox.load(base)
    m = plan.model
    bp = BlockPoint(2, True, 4, m.seq_len, m.hidden, m.heads, m.ffn_hidden, 0.2, 0.03)
    d0 = compute.device_of(plan, Profile())
    d = compute.device_of(plan, Profile(block=(bp,)))
    lt = compute.layer_times(plan, d)
    cal = compute.calibrated_layer(plan, d, lt, 0.05)
    assert cal.fwd + cal.bwd + 0.05 == pytest.approx(0.2)
    assert cal.fwd / cal.bwd == pytest.approx(lt.fwd / lt.bwd)
    assert compute.calibrated_layer(plan, d0, lt, 0.05) == lt  # nothing measured
    assert compute.calibrated_layer(plan, d, lt, 0.5) == lt  # comm alone exceeds it
    other = sandbox.load({**base, "parallel": {**base["parallel"], "micro_batch": 2}})
    assert compute.calibrated_layer(other, d, lt, 0.05) == lt  # another shape
    n = layer_params_per_gpu(m, 2)
    per_block = compute.optimizer_time(d, n, "fp32") - compute.optimizer_time(d, 0, "fp32")
    assert compute.block_optimizer_correction(plan, d) == pytest.approx(0.03 - per_block)
    zero = sandbox.load({**base, "parallel": {**base["parallel"], "dp": 2, "zero": 1}})
    assert compute.block_optimizer_correction(zero, d) == 0.0
    # and the simulator uses it: a slower measured layer, a slower step
    slow = Profile(block=(dataclasses.replace(bp, seconds=0.4),))
    t = [simulate(plan, profile=p).step_time_s for p in (Profile(block=(bp,)), slow)]
    assert t[1] > t[0]
