"""FP8 training as torchao Float8Linear / Transformer Engine run it (issue 17).

Only the linear layers' GEMMs run in FP8, on the profile's FP8 curve at the
FP8 peak; attention, memory-bound kernels, embedding and LM head stay bf16;
each FP8 GEMM operand is cast with dynamic scaling (`sim.compute.fp8_casts`).
Closed forms on llama3-8b, one H100 node.
"""

from __future__ import annotations

import pytest

import sandbox
from sandbox import memory
from sandbox.profile import Profile, profile_from_dict
from sim import compute, simulate
from sim.host import host_ops


def plan(precision="fp8", zero=1, **train):
    return sandbox.load({"model": {"preset": "llama3-8b"},
                         "cluster": {"preset": "dgx-h100", "nodes": 1},
                         "parallel": {"dp": 8, "micro_batch": 1, "global_batch": 16,
                                      "zero": zero},
                         "train": {"precision": precision, **train}})


def linear_gemms(p):
    m, tokens = p.model, p.parallel.micro_batch * p.model.seq_len
    return [(tokens, m.q_dim + 2 * m.kv_dim, m.hidden), (tokens, m.hidden, m.q_dim),
            (tokens, 2 * m.ffn_hidden, m.hidden), (tokens, m.hidden, m.ffn_hidden)]


def test_fp8_gemm_follows_the_curve_at_the_fp8_peak():
    prof, gpu = Profile(), plan().cluster.gpu
    d8, d16 = compute.device_of(plan(), prof), compute.device_of(plan("bf16"), prof)
    assert (d8.peak_flops, d8.fp8_peak_flops) == (gpu.peak_flops("bf16"), gpu.peak_flops("fp8"))
    for M, N, K in linear_gemms(plan()):
        f = prof.padded_gemm_flops(M, N, K)
        eff8 = prof.matmul_efficiency * f / (f + 2 * prof.matmul_half_flops)  # 2x half point
        eff16 = prof.matmul_efficiency * f / (f + prof.matmul_half_flops)
        t8 = compute.gemm_time(d8, M, N, K, fp8=True)
        t16 = compute.gemm_time(d16, M, N, K)
        assert t8 == pytest.approx(prof.kernel_overhead_s + f / (gpu.peak_flops("fp8") * eff8))
        assert t16 == pytest.approx(prof.kernel_overhead_s + f / (gpu.peak_flops("bf16") * eff16))
        ratio = (t16 - prof.kernel_overhead_s) / (t8 - prof.kernel_overhead_s)
        assert ratio == pytest.approx(gpu.peak_flops("fp8") / gpu.peak_flops("bf16")
                                      * eff8 / eff16)
        assert 1.9 < ratio < 2.0  # large GEMMs: nearly the 2x of the peaks


def test_only_linear_gemms_change_and_casts_are_added():
    p8, p16 = plan(), plan("bf16")
    prof = Profile()
    d8, d16 = compute.device_of(p8, prof), compute.device_of(p16, prof)
    l8, l16 = compute.layer_times(p8, d8), compute.layer_times(p16, d16)
    gemms = linear_gemms(p8)
    cf, cd, cw = compute.fp8_cast_times(p8, d8, gemms)
    assert min(cf, cd, cw) > 0
    delta = sum(compute.gemm_time(d8, M, N, K, fp8=True) - compute.gemm_time(d16, M, N, K)
                for M, N, K in gemms)
    # attention core, norms, activations: identical (bf16 at the bf16 peak)
    assert l8.fwd - l16.fwd == pytest.approx(delta + cf, rel=1e-9)
    assert l8.attn_core == l16.attn_core
    # embedding and the LM head stay bf16
    assert compute.head_times(p8, d8) == compute.head_times(p16, d16)
    assert compute.embedding_times(p8, d8) == compute.embedding_times(p16, d16)


def test_cast_bytes_and_kernel_counts():
    (M, N, K) = linear_gemms(plan())[0]
    assert compute.fp8_casts(plan(), M, N, K) == (5 * (M * K + K * N), 5 * (M * N + K * N),
                                                  5 * M * K)
    row = plan(fp8_recipe="rowwise")
    # rowwise: a 2nd grad_output cast for wgrad, and each backward GEMM's output
    # rescaled (read + write, 16-bit: grad_input M x K, grad_weight N x K)
    assert compute.fp8_casts(row, M, N, K) == (5 * (M * K + K * N),
                                               5 * (M * N + K * N) + 4 * M * K,
                                               5 * (M * N + M * K) + 4 * K * N)
    h8, h16, hr = host_ops(plan()), host_ops(plan("bf16")), host_ops(row)
    assert h8.block_fwd - h16.block_fwd == 4 * 2 * 2  # 4 GEMMs x 2 casts x 2 kernels
    assert h8.block_bwd_input - h16.block_bwd_input == 4 * 2 * 2
    assert hr.block_bwd_input - h16.block_bwd_input == 4 * (2 * 2 + 1)  # + the rescale
    assert (h8.block_bwd_weight - h16.block_bwd_weight,
            hr.block_bwd_weight - h16.block_bwd_weight) == (4 * 2, 4 * (2 * 2 + 1))


def test_memory_adds_the_fp8_weight_copy():
    m8, m16 = memory.memory_per_gpu(plan()), memory.memory_per_gpu(plan("bf16"))
    linear = memory.linear_weights_per_gpu(plan().model, 1)
    assert m8["params"] - m16["params"] == pytest.approx(linear / 1e9, rel=1e-9)
    assert m8["activations"] == m16["activations"]  # torchao saves bf16 inputs
    # ZeRO-3 with fp8 all-gather: the gathered blocks' linear weights are 1 byte
    z16, z8 = plan(zero=3), plan(zero=3, fp8_all_gather=True)
    d = z8.parallel.dp
    n = memory.stage_params_per_gpu(z8.model, 1, 1, 0)
    block = memory.layer_params_per_gpu(z8.model, 1)
    root = n - z8.model.layers * block
    gathered = 2 * max(2 * block - linear, 2 * root)
    assert memory.memory_per_gpu(z8)["params"] == pytest.approx((n * 4 / d + gathered) / 1e9)
    assert memory.memory_per_gpu(z16)["params"] == pytest.approx(
        (n * 4 / d + 2 * max(block, root) * 2 + linear) / 1e9)


def test_fp8_all_gather_bytes_and_mfu():
    r16, r8 = simulate(plan(zero=3), timeline=False), \
        simulate(plan(zero=3, fp8_all_gather=True), timeline=False)
    p = plan(zero=3)
    d, L = p.parallel.dp, p.model.layers
    n = memory.stage_params_per_gpu(p.model, 1, 1, 0)
    linear = memory.linear_weights_per_gpu(p.model, 1)
    gathers = r8.extra["zero3_gathers_per_step"]
    assert r16.extra["zero3_allgather_bytes_per_gpu"] == pytest.approx(
        gathers * n * 2 * (d - 1) / d)
    assert r8.extra["zero3_allgather_bytes_per_gpu"] == pytest.approx(
        gathers * (n * 2 - L * linear) * (d - 1) / d)
    gpu = p.cluster.gpu
    assert r8.mfu == pytest.approx(r8.flops_per_step / (r8.step_time_s * d
                                                        * gpu.peak_flops("fp8")))
    assert r8.extra["mfu_vs_bf16_peak"] == pytest.approx(
        r8.mfu * gpu.peak_flops("fp8") / gpu.peak_flops("bf16"))
    assert simulate(plan(), timeline=False).step_time_s < \
        simulate(plan("bf16"), timeline=False).step_time_s


def test_fp8_curve_in_the_profile():
    prof = profile_from_dict({"compute": {"matmul_fp8": [[1e8, 3e13], [1e10, 4e14]]},
                              "fp8_matmul_efficiency": 0.6})
    assert prof.matmul_fp8 == ((1e8, 3e13), (1e10, 4e14))
    assert prof.fp8_matmul_seconds(1e10, 2e15, 1e15) == pytest.approx(1e10 / 4e14)
    # without an fp8 curve a measured bf16 one is stretched by the peak ratio
    bf = Profile(matmul=((1e8, 2e13), (1e10, 2e14)))
    assert bf.fp8_matmul_seconds(2e10, 2e15, 1e15) == pytest.approx(2e10 / 4e14)
    assert Profile(fp8_matmul_efficiency=0.5).fp8_matmul_seconds(1e20, 2e15, 1e15) == \
        pytest.approx(1e20 / (2e15 * 0.5))


def tp_plan(recipe: str, overlap: bool, precision: str = "fp8"):
    return sandbox.load({"model": {"preset": "llama3-8b"},
                         "cluster": {"preset": "dgx-h100", "nodes": 1},
                         "parallel": {"dp": 1, "tp": 8, "micro_batch": 1, "global_batch": 4,
                                      "sequence_parallel": True, "tp_comm_overlap": overlap},
                         "train": {"precision": precision, "fp8_recipe": recipe}})


def test_tp_gathers_carry_fp8_with_tensorwise_only():
    """torchao's Float8ColwiseParallel / Float8RowwiseParallel gather the fp8
    cast (tensorwise): an all-gather moves half the bytes; reduce-scatters and
    the rowwise recipe stay 16-bit. Async TP with rowwise scales leaves the
    all-gather-matmuls unfused: the gathers are exposed whole."""
    from sim.costs import tp_gather_bytes, tp_times
    from sim.network.topology import build

    tw, rw, bf = (tp_plan(r, False, pr) for r, pr in
                  (("tensorwise", "fp8"), ("rowwise", "fp8"), ("tensorwise", "bf16")))
    assert tp_gather_bytes(tw, 1000.0) == 500.0
    assert tp_gather_bytes(rw, 1000.0) == tp_gather_bytes(bf, 1000.0) == 1000.0
    prof = Profile()
    times = {}
    for name, p in (("tw", tw), ("rw", rw), ("bf", bf)):
        lt = compute.layer_times(p, compute.device_of(p, prof))
        times[name] = tp_times(p, build(p.cluster), prof, 0, lt)
    assert times["rw"] == pytest.approx(times["bf"])
    assert times["tw"][0] < times["bf"][0] and times["tw"][1] < times["bf"][1]
    # async TP: rowwise exposes its four all-gathers per direction in full
    rwo, two = tp_plan("rowwise", True), tp_plan("tensorwise", True)
    topo = build(rwo.cluster)
    lt_r = compute.layer_times(rwo, compute.device_of(rwo, prof))
    fwd_r, bwd_r = tp_times(rwo, topo, prof, 0, lt_r)
    fwd_plain, _ = times["rw"]
    # vanilla forward = 2 x (AG + RS); with async TP the RS hide, both AGs stay
    assert fwd_plain / 2 < fwd_r < fwd_plain
    fwd_t, _ = tp_times(two, topo, prof, 0, compute.layer_times(two, compute.device_of(two, prof)))
    assert fwd_t < fwd_r
