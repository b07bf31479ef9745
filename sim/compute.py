"""Compute cost model: a roofline per kernel with calibrated efficiency curves.

Each kernel of a transformer block (per tensor-parallel rank, per microbatch)
is a GEMM, a batched attention GEMM or a memory-bound op. Its time is

    kernel_overhead_s + max(FLOPs / (peak * eff(FLOPs)), bytes / (HBM * mem_eff))

with `eff` from the cluster's calibration profile (`sandbox.profile`). GEMM
dimensions are padded to the profile's `gemm_tile` (the tensor-core tile
128 x 128 x 32 on GPUs, so awkward shapes cost more than their FLOPs; none
on a CPU). The attention core is two batched GEMMs plus, unless the
profile's `attention_fused` says the measured rate covers it (SDPA), a
scale-mask-softmax and dropout over the s x s scores. Units: seconds, FLOP,
bytes.

A profile may also hold whole layers measured as the runtime runs them
(`Profile.block`, `runtime.layer_bench`); for a plan with exactly such a
layer `calibrated_layer` scales the kernel sum to the measurement and
`block_optimizer_correction` replaces the modelled AdamW time of a block by
the measured one (the framework's glue between kernels and, under tensor
parallelism, DTensor's dispatch and redistributions, which per-kernel
benchmarks do not see).
"""

from __future__ import annotations

from dataclasses import dataclass

from sandbox import memory
from sandbox.layout import grad_ranks, local_seq_len
from sandbox.profile import BlockPoint, Profile
from sandbox.specs import Plan


@dataclass(frozen=True)
class Device:
    """What a kernel runs against: dense peak FLOP/s, HBM bytes/s, profile."""

    peak_flops: float
    hbm_bytes_per_s: float
    profile: Profile


def device_of(plan: Plan, profile: Profile) -> Device:
    gpu = plan.cluster.gpu
    return Device(gpu.peak_flops(plan.train.precision), gpu.hbm_gb_per_s * 1e9, profile)


def gemm_time(d: Device, m: int, n: int, k: int, batch: int = 1, bytes_per: int = 2,
              attention: bool = False) -> float:
    """Seconds for `batch` GEMMs of (m x k) @ (k x n)."""
    pr = d.profile
    padded = pr.padded_gemm_flops(m, n, k, batch)
    t_flops = (pr.attention_seconds(padded, d.peak_flops) if attention
               else pr.matmul_seconds(padded, d.peak_flops))
    t_bytes = bytes_per * batch * (m * k + k * n + m * n) / pr.memory_rate(d.hbm_bytes_per_s)
    return d.profile.kernel_overhead_s + max(t_flops, t_bytes)


def memory_time(d: Device, nbytes: float) -> float:
    """Seconds for a memory-bound kernel moving `nbytes` bytes."""
    return d.profile.kernel_overhead_s + nbytes / d.profile.memory_rate(d.hbm_bytes_per_s)


@dataclass(frozen=True)
class LayerTimes:
    """One block on one TP rank for one microbatch, seconds, no communication."""

    fwd: float
    bwd_input: float  # backward to the block's input (B of ZB-H1)
    bwd_weight: float  # weight-gradient GEMMs (W of ZB-H1)
    attn_core: float = 0.0  # forward of the attention core (selective recompute)
    wgrad_column: tuple[float, ...] = ()  # wgrad of the QKV and MLP-in GEMMs

    @property
    def bwd(self) -> float:
        return self.bwd_input + self.bwd_weight


def layer_times(plan: Plan, d: Device) -> LayerTimes:
    """Kernel times of one transformer block (Megatron-LM's kernels). With
    context parallelism the block runs on its s / cp local tokens and the
    attention core on cp KV blocks of s / cp keys each (the ring's steps)."""
    m, p = plan.model, plan.parallel
    t, b, s, h = p.tp, p.micro_batch, local_seq_len(plan), m.hidden
    kv_blocks = p.cp  # context parallelism: local queries x cp KV chunks (ring steps)
    w = 4 if plan.train.precision == "fp32" else 2
    tokens = b * s
    sp = p.sequence_parallel and t > 1
    tok_local = tokens // t if sp else tokens
    heads = m.heads // t
    qkv = (m.q_dim + 2 * m.kv_dim) // t
    ffn_in = (2 if m.activation == "swiglu" else 1) * m.ffn_hidden // t
    ffn = m.ffn_hidden // t
    gemms = [(tokens, qkv, h), (tokens, h, m.q_dim // t), (tokens, ffn_in, h), (tokens, h, ffn)]
    fwd_gemm = sum(gemm_time(d, M, N, K, bytes_per=w) for M, N, K in gemms)
    # dgrad: (M x N) @ (N x K); wgrad: (K x M) @ (M x N)
    dgrad = sum(gemm_time(d, M, K, N, bytes_per=w) for M, N, K in gemms)
    wgrads = [gemm_time(d, K, N, M, bytes_per=w) for M, N, K in gemms]
    wgrad = sum(wgrads)
    hd = m.head_dim
    score = kv_blocks * gemm_time(d, s, s, hd, batch=b * heads, bytes_per=w, attention=True)
    ctx = kv_blocks * gemm_time(d, s, hd, s, batch=b * heads, bytes_per=w, attention=True)
    attn_fwd = score + ctx
    attn_bwd = 2 * (score + ctx)
    # Memory-bound kernels (bytes read + written): two norms, scale-mask-softmax
    # and dropout on the s x s scores (not with a fused attention core),
    # bias+activation, two dropout+residual adds.
    ss = b * heads * s * s * kv_blocks
    norm = 2 * tok_local * h * w * 2
    softmax = 0 if d.profile.attention_fused else ss * w * 2 + ss * (w * 2 + 1)
    act = tokens * ffn * w * (3 if m.activation == "swiglu" else 2)
    resid = 2 * tok_local * h * (3 * w + 1)
    elem_fwd = [x for x in (norm, softmax, act, resid) if x]
    mem_fwd = sum(memory_time(d, x) for x in elem_fwd)
    mem_bwd = sum(memory_time(d, 2 * x) for x in elem_fwd)
    return LayerTimes(fwd=fwd_gemm + attn_fwd + mem_fwd, bwd_input=dgrad + attn_bwd + mem_bwd,
                      bwd_weight=wgrad,
                      attn_core=attn_fwd + (memory_time(d, softmax) if softmax else 0.0),
                      wgrad_column=(wgrads[0], wgrads[2]))


def embedding_times(plan: Plan, d: Device) -> tuple[float, float]:
    """(forward, backward) seconds of the token + position embedding on stage 0."""
    m, p = plan.model, plan.parallel
    w = 4 if plan.train.precision == "fp32" else 2
    nbytes = 3 * p.micro_batch * local_seq_len(plan) * m.hidden * w
    return memory_time(d, nbytes), memory_time(d, 2 * nbytes)


def head_times(plan: Plan, d: Device) -> tuple[float, float]:
    """(forward, backward) seconds of final norm, logits GEMM and cross-entropy."""
    m, p = plan.model, plan.parallel
    w = 4 if plan.train.precision == "fp32" else 2
    tokens = p.micro_batch * local_seq_len(plan)
    vloc = m.vocab // p.tp
    logits = gemm_time(d, tokens, vloc, m.hidden, bytes_per=w)
    back = gemm_time(d, tokens, m.hidden, vloc, bytes_per=w) + gemm_time(
        d, m.hidden, vloc, tokens, bytes_per=w)
    xent = memory_time(d, tokens * vloc * 4 * 3)  # fp32 logits: softmax, loss, grad
    norm = memory_time(d, 2 * tokens * m.hidden * w * 2)
    return logits + xent + norm, back + xent + 2 * norm


def optimizer_time(d: Device, params: float, precision: str) -> float:
    """Adam step over `params` parameters: fp32 master, two moments, the grad
    read and the 16-bit weight written (bytes moved per parameter)."""
    per = 4 * 2 * 3 + 4 + (0 if precision == "fp32" else 2)
    return memory_time(d, params * per) + 10 * d.profile.kernel_overhead_s


def measured_block(plan: Plan, d: Device) -> BlockPoint | None:
    """The profile's measured layer of exactly this plan's shape, if any
    (none under context parallelism: no measured layer runs a ring)."""
    m, p = plan.model, plan.parallel
    if p.cp > 1:
        return None
    return d.profile.block_point(p.tp, p.sequence_parallel, p.micro_batch, m.seq_len, m.hidden,
                                 m.heads, m.ffn_hidden)


def calibrated_layer(plan: Plan, d: Device, lt: LayerTimes, tp_comm_s: float) -> LayerTimes:
    """`lt` scaled so that one block's kernels plus its modelled (exposed)
    tensor-parallel communication `tp_comm_s` (forward + backward, seconds)
    take the measured layer's forward + backward seconds. Unchanged without a
    measured layer of this shape, or if the modelled communication alone
    takes longer than the measurement (then the measurement is not used)."""
    bp = measured_block(plan, d)
    total = lt.fwd + lt.bwd
    if bp is None or total <= 0 or bp.seconds <= tp_comm_s:
        return lt
    k = (bp.seconds - tp_comm_s) / total
    return LayerTimes(fwd=k * lt.fwd, bwd_input=k * lt.bwd_input, bwd_weight=k * lt.bwd_weight,
                      attn_core=k * lt.attn_core,
                      wgrad_column=tuple(k * w for w in lt.wgrad_column))


def block_optimizer_correction(plan: Plan, d: Device) -> float:
    """Seconds to add per block to a rank's modelled optimizer step: the
    measured AdamW step over one block's parameters minus its modelled time
    (`optimizer_time` without the fixed per-step part). 0 without a measured
    layer, and with ZeRO over dp x cp > 1 (the layer was measured unsharded)."""
    p = plan.parallel
    bp = measured_block(plan, d)
    if bp is None or (p.zero >= 1 and grad_ranks(plan) > 1):
        return 0.0
    n = memory.layer_params_per_gpu(plan.model, p.tp)
    precision = plan.train.precision
    return bp.optimizer_s - (optimizer_time(d, n, precision) - optimizer_time(d, 0, precision))
