"""Seconds of a flash-attention kernel from its published curve (`sandbox.attention_kernels`).

`occupancy` is the SM fill of a launch relative to the benchmark's: one thread block per
(batch, head, 128-query tile), `sms` of them per wave; the benchmarks run >= 2,048 blocks
(16 waves), so their curves carry no underfill, while a micro-batch of few heads and short
local sequences leaves SMs idle. Units: FLOP, FLOP/s, seconds.
"""

from __future__ import annotations

import math

from sandbox.attention_kernels import efficiency, load, sms
from sandbox.counts import FLASH_BACKWARD_RATIO, FLASH_TILE, causal_fraction


def benchmark_blocks(head_dim: float) -> int:
    """Thread blocks of one benchmark launch: (tokens / tile) query tiles x heads."""
    d = load()
    return d.tokens // FLASH_TILE * max(1, round(d.hidden / head_dim))


def occupancy(gpu: str, blocks: float, head_dim: float) -> float:
    """SM fill of a launch of `blocks` thread blocks relative to the benchmark's (<= 1):
    (blocks / sms) / ceil(blocks / sms), over the same for the benchmark. 1 without SM data."""
    n_sms = sms(gpu)
    if n_sms <= 0 or blocks <= 0:
        return 1.0

    def fill(n: float) -> float:
        return (n / n_sms) / math.ceil(n / n_sms)

    return min(1.0, fill(blocks) / fill(benchmark_blocks(head_dim)))


def kernel_seconds(kernel: str, gpu: str, fwd_flops: float, local_seq: int, head_dim: float,
                   cp: int, blocks: float, peak_flops: float, glue: float
                   ) -> tuple[float, float]:
    """(forward, backward) compute seconds of one block's causal flash attention.

    `fwd_flops`: the FLOPs the forward executes (`sim.block_kernels.FlashWork`; backward
    2.5x); `local_seq`: the tokens of a kernel call (s / cp); `blocks`: thread blocks of
    a launch; `peak_flops`: the device's dense BF16 FLOP/s; `glue`: the profile's
    `attention_kernel_efficiency`. Without context parallelism the kernel is one causal
    call and takes the benchmark's time for its shape: the benchmark counts half the
    square, a causal kernel executes `causal_fraction` of it. With cp ranks the ring's
    (or the gathered keys') work is 1 / cp causal (the diagonal block) and the rest
    unmasked blocks, each at its curve for `local_seq`."""
    rate = peak_flops * glue * occupancy(gpu, blocks, head_dim)
    out = []
    for direction, flops in (("fwd", fwd_flops), ("bwd", FLASH_BACKWARD_RATIO * fwd_flops)):
        causal = efficiency(kernel, local_seq, head_dim, True, direction) \
            * causal_fraction(local_seq) / 0.5
        share = 1.0 / cp
        per_flop = share / causal
        if cp > 1:
            per_flop += (1.0 - share) / efficiency(kernel, local_seq, head_dim, False, direction)
        out.append(flops * per_flop / rate)
    return out[0], out[1]
