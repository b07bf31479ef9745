"""Kernel times on one device: a roofline with the profile's efficiency curves.

A kernel takes

    kernel_overhead_s + max(FLOPs / (peak * eff(FLOPs)), bytes / (HBM * mem_eff))

with `eff` from the cluster's calibration profile (`sandbox.profile`) and GEMM
dimensions padded to the profile's `gemm_tile`. FP8 linears run against the
FP8 dense peak and pay their dynamic-scaling casts (`fp8_casts`). The leaf
that `sim.compute` (a block's kernels) and `sim.moe_compute` (the routed
experts) both price their kernels with. Units: seconds, FLOP/s, bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from sandbox.profile import Profile
from sandbox.sections import GPU
from sandbox.specs import Plan


@dataclass(frozen=True)
class Device:
    """What a kernel runs against: dense peak FLOP/s of its 16/32-bit GEMMs,
    HBM bytes/s, profile, and the FP8 dense peak (FLOP/s; 0: no FP8 GEMMs)."""

    peak_flops: float
    hbm_bytes_per_s: float
    profile: Profile
    fp8_peak_flops: float = 0.0


def device_for(gpu: GPU, precision: str, profile: Profile) -> Device:
    """The device of `gpu` training in `precision`: FP8 runs their non-linear
    GEMMs in bf16, so their base peak is bf16's and the FP8 peak is separate."""
    k = gpu.sustained_fraction()  # a power cap below TDP lowers the sustained clock
    if precision == "fp8":
        return Device(k * gpu.peak_flops("bf16"), gpu.hbm_gb_per_s * 1e9, profile,
                      k * gpu.peak_flops("fp8"))
    return Device(k * gpu.peak_flops(precision), gpu.hbm_gb_per_s * 1e9, profile)


def device_of(plan: Plan, profile: Profile) -> Device:
    return device_for(plan.cluster.gpu, plan.train.precision, profile)


def gemm_time(d: Device, m: int, n: int, k: int, batch: int = 1, bytes_per: int = 2,
              attention: bool = False, fp8: bool = False) -> float:
    """Seconds for `batch` GEMMs of (m x k) @ (k x n); `fp8`: FP8 inputs (1
    byte) and a bf16 output at the FP8 peak, when the device has one."""
    pr = d.profile
    padded = pr.padded_gemm_flops(m, n, k, batch)
    fp8 = fp8 and d.fp8_peak_flops > 0
    if attention:
        t_flops = pr.attention_seconds(padded, d.peak_flops)
    elif fp8:
        t_flops = pr.fp8_matmul_seconds(padded, d.fp8_peak_flops, d.peak_flops)
    else:
        t_flops = pr.matmul_seconds(padded, d.peak_flops)
    nbytes = (batch * ((m * k + k * n) + 2 * m * n) if fp8
              else bytes_per * batch * (m * k + k * n + m * n))
    return d.profile.kernel_overhead_s + max(t_flops, nbytes / pr.memory_rate(d.hbm_bytes_per_s))


# torchao Float8Linear (torchao/float8/float8_linear.py, matmul_with_hp_or_float8_args):
# forward casts the input and the weight; it saves both in high precision and
# backward casts the grad_output and the weight again for dgrad, the grad_output
# and the input again for wgrad. A tensorwise fp8 grad_output serves both backward
# GEMMs (one scale); rowwise scales along the other axis for wgrad (a second cast).
FP8_CASTS = {"tensorwise": (("input", "weight"), ("grad_output", "weight"), ("input",)),
             "rowwise": (("input", "weight"), ("grad_output", "weight"),
                         ("grad_output", "input"))}
CAST_KERNELS = 2  # amax (reads bf16), then scale + cast (reads bf16, writes fp8)
# torchao's rowwise recipe runs its backward GEMMs without fast accumulation, and
# the rowwise CUTLASS kernel is so slow there that it calls cuBLAS's tensorwise
# GEMM with unit scales and rescales the output in a separate kernel (reads and
# writes the 16-bit output: torchao float8_ops.addmm_float8_unwrapped,
# pytorch/ao#1325; one extra kernel per GEMM under torch.compile, pytorch/ao#2184)
RESCALE_BYTES = 4


def fp8_cast_kernels(recipe: str) -> tuple[int, int, int]:
    """Kernels the casts (and rowwise rescales) of one FP8 linear launch in
    (forward, dgrad, wgrad)."""
    rescale = 1 if recipe == "rowwise" else 0
    f, d, w = (len(phase) * CAST_KERNELS for phase in FP8_CASTS[recipe])
    return f, d + rescale, w + rescale


def fp8_casts(plan: Plan, M: int, N: int, K: int) -> tuple[float, float, float]:
    """Bytes moved by the dynamic-scaling casts of one FP8 linear (M tokens,
    N outputs, K inputs) in (forward, dgrad, wgrad): 2 + 2 + 1 bytes per
    element cast, and with the rowwise recipe the backward GEMMs' output
    rescales (`RESCALE_BYTES` per output element). With `fp8_all_gather`
    ZeRO-3 gathers the weight already cast (FSDP casts the local shard before
    the gather), so its casts move only 1/shard of it."""
    t, p = plan.train, plan.parallel
    weight = float(K * N)
    if t.fp8_all_gather and p.zero >= 3 and p.shard_size > 1:
        weight /= p.shard_size
    size = {"input": float(M * K), "weight": weight, "grad_output": float(M * N)}
    casts = [sum(5 * size[x] for x in phase) for phase in FP8_CASTS[t.fp8_recipe]]
    if t.fp8_recipe == "rowwise":  # the backward GEMMs' output rescales
        casts[1] += RESCALE_BYTES * M * K  # dgrad: grad_input, M x K
        casts[2] += RESCALE_BYTES * K * N  # wgrad: grad_weight, N x K
    return casts[0], casts[1], casts[2]


def fp8_cast_times(plan: Plan, d: Device, gemms: list[tuple[int, int, int]]
                   ) -> tuple[float, float, float]:
    """(forward, dgrad, wgrad) seconds of the casts of these FP8 GEMMs."""
    if plan.train.precision != "fp8" or d.fp8_peak_flops <= 0:
        return 0.0, 0.0, 0.0
    out = [0.0, 0.0, 0.0]
    kernels = fp8_cast_kernels(plan.train.fp8_recipe)
    for M, N, K in gemms:
        for i, nbytes in enumerate(fp8_casts(plan, M, N, K)):
            # the kernels of a phase share its bytes
            out[i] += kernels[i] * d.profile.kernel_overhead_s + nbytes / \
                d.profile.memory_rate(d.hbm_bytes_per_s)
    return out[0], out[1], out[2]


def memory_time(d: Device, nbytes: float) -> float:
    """Seconds for a memory-bound kernel moving `nbytes` bytes."""
    return d.profile.kernel_overhead_s + nbytes / d.profile.memory_rate(d.hbm_bytes_per_s)
