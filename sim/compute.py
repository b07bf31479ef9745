"""Compute cost model: a roofline per kernel with calibrated efficiency curves.

Each kernel of a transformer block (per tensor-parallel rank, per microbatch)
is a GEMM, a batched attention GEMM or a memory-bound op. Its time is

    kernel_overhead_s + max(FLOPs / (peak * eff(FLOPs)), bytes / (HBM * mem_eff))

with `eff` from the cluster's calibration profile (`sandbox.profile`;
the per-kernel roofline itself is `sim.roofline`, re-exported here). GEMM
dimensions are padded to the profile's `gemm_tile` (the tensor-core tile
128 x 128 x 32 on GPUs, so awkward shapes cost more than their FLOPs; none
on a CPU). The attention core is two batched GEMMs plus, unless the
profile's `attention_fused` says the measured rate covers it (SDPA), a
scale-mask-softmax and dropout over the s x s scores: that is
`train.attention = "eager"`, Megatron-LM's kernels as of 2021-22, unchanged.
With `attention = "flash"` (the default) the core is one fused causal kernel
priced by the attention curve over the FLOPs it executes and its HBM bytes,
and the elementwise chains are the eager-PyTorch or `torch.compile` kernels
of `sim.block_kernels`. Units: seconds, FLOP, bytes.

With `train.precision = "fp8"` only the linear layers' GEMMs (QKV,
attention output, MLP; forward, dgrad and wgrad) run in FP8, against the
FP8 dense peak on the profile's FP8 curve (`Profile.fp8_matmul_seconds`);
the attention core, norms, activations, embedding and the LM head stay bf16
at the bf16 peak, as in torchtitan (its float8 filter skips `output`) and
Transformer Engine's recipes. Each FP8 GEMM operand is cast with dynamic
scaling, two memory-bound kernels (amax, then scale + cast) as torchao's
`hp_tensor_to_float8_dynamic` runs them (`fp8_casts`).

A profile may also hold whole layers measured as the runtime runs them
(`Profile.block`, `runtime.layer_bench`); for a plan with exactly such a
layer `calibrated_layer` scales the kernel sum to the measurement and
`block_optimizer_correction` replaces the modelled AdamW time of a block by
the measured one (the framework's glue between kernels and, under tensor
parallelism, DTensor's dispatch and redistributions, which per-kernel
benchmarks do not see).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sandbox import attention_kernels, counts, memory, recompute
from sandbox.layout import grad_ranks, local_seq_len
from sandbox.profile import BlockPoint
from sandbox.specs import Plan
from sim import block_kernels, flash_kernels, moe_compute
from sim.roofline import (  # noqa: F401 (re-exported: callers name them sim.compute.*)
    CAST_KERNELS,
    FP8_CASTS,
    Device,
    device_for,
    device_of,
    fp8_cast_times,
    fp8_casts,
    gemm_time,
    memory_time,
)


@dataclass(frozen=True)
class LayerTimes:
    """One block on one TP rank for one microbatch, seconds, no communication."""

    fwd: float
    bwd_input: float  # backward to the block's input (B of ZB-H1)
    bwd_weight: float  # weight-gradient GEMMs (W of ZB-H1)
    attn_core: float = 0.0  # forward of the attention core (selective recompute)
    op_recompute: float = 0.0  # forward work "op" recompute re-runs (`op_recompute_time`)
    wgrad_column: tuple[float, ...] = ()  # wgrad of the QKV and MLP-in GEMMs
    # forward and dgrad seconds of the QKV, attention-output, MLP-in, MLP-out GEMMs
    gemm_fwd: tuple[float, ...] = ()
    gemm_dgrad: tuple[float, ...] = ()
    # MoE blocks: (forward, backward) seconds of attention and shared-expert compute
    ep_hide: tuple[float, float] = (0.0, 0.0)

    @property
    def bwd(self) -> float:
        return self.bwd_input + self.bwd_weight


def block_gemms(plan: Plan, tokens: int, moe: bool = False
                ) -> tuple[list[tuple[int, int, int]], tuple[tuple[int, ...], ...]]:
    """(M, N, K) of one block's linear GEMMs on one TP rank, and the indices of
    its four groups: attention in (QKV; MLA's down and up projections, the
    down ones replicated over tp as Megatron-Core runs them), attention out,
    MLP in, MLP out. A MoE block's MLP is its shared experts (one FFN of
    shared_experts x expert_ffn_hidden; none without them); its routed part
    is `sim.moe_compute`'s."""
    m, t, h = plan.model, plan.parallel.tp, plan.model.hidden
    if m.kind == "mla":
        q = ([(tokens, m.q_lora_rank, h), (tokens, m.q_dim // t, m.q_lora_rank)]
             if m.q_lora_rank else [(tokens, m.q_dim // t, h)])
        attn = q + [(tokens, m.kv_lora_rank + m.qk_rope_head_dim, h),
                    (tokens, m.heads * (m.head_dim + m.v_head_dim) // t, m.kv_lora_rank)]
        out = (tokens, h, m.v_dim // t)
    else:
        attn, out = [(tokens, (m.q_dim + 2 * m.kv_dim) // t, h)], (tokens, h, m.q_dim // t)
    width = m.shared_experts * m.expert_ffn_hidden if moe else m.ffn_hidden
    mlp = []
    if width:
        ffn_in = (2 if m.activation == "swiglu" else 1) * width // t
        mlp = [(tokens, ffn_in, h), (tokens, h, width // t)]
    gemms = attn + [out] + mlp
    a = len(attn)
    groups = (tuple(range(a)), (a,), (a + 1,) if mlp else (), (a + 2,) if mlp else ())
    return gemms, groups


def layer_times(plan: Plan, d: Device, moe: bool = False) -> LayerTimes:
    """Kernel times of one transformer block (Megatron-LM's kernels, or with
    `attention = "flash"` a flash kernel and eager/compiled elementwise chains).
    With context parallelism the block runs on its s / cp local tokens and the
    attention core on cp KV blocks of s / cp keys each (the ring's steps).
    `moe`: a mixture-of-experts block (shared experts as its MLP, the routed
    part from `sim.moe_compute`; `ep_hide`: its attention and shared-expert
    compute, forward and backward, that `parallel.ep_overlap` hides the
    all-to-alls behind)."""
    m, p = plan.model, plan.parallel
    t, b, s, h = p.tp, p.micro_batch, local_seq_len(plan), m.hidden
    kv_blocks = p.cp  # context parallelism: local queries x cp KV chunks (ring steps)
    w = 4 if plan.train.precision == "fp32" else 2
    tokens = b * s
    sp = p.sequence_parallel and t > 1
    tok_local = tokens // t if sp else tokens
    heads = m.heads // t
    ffn = (m.shared_experts * m.expert_ffn_hidden if moe else m.ffn_hidden) // t
    gemms, groups = block_gemms(plan, tokens, moe)
    f8 = plan.train.precision == "fp8"  # the linear layers' GEMMs in FP8
    cast_f, cast_d, cast_w = fp8_cast_times(plan, d, gemms)
    # tp_comm_overlap: each GEMM next to a collective runs as tp pieces of M / tp rows
    pieces = t if p.tp_comm_overlap and sp else 1
    fwds = tuple(pieces * gemm_time(d, M // pieces, N, K, bytes_per=w, fp8=f8)
                 for M, N, K in gemms)
    fwd_gemm = sum(fwds) + cast_f
    # dgrad: (M x N) @ (N x K); wgrad: (K x M) @ (M x N)
    dgrads = tuple(pieces * gemm_time(d, M // pieces, K, N, bytes_per=w, fp8=f8)
                   for M, N, K in gemms)
    dgrad = sum(dgrads) + cast_d
    wgrads = [gemm_time(d, K, N, M, bytes_per=w, fp8=f8) for M, N, K in gemms]
    wgrad = sum(wgrads) + cast_w
    fwds, dgrads = (tuple(sum(x[i] for i in g) for g in groups) for x in (fwds, dgrads))
    wgrad_column = (sum(wgrads[i] for i in groups[0]), sum(wgrads[i] for i in groups[2]))
    routed = moe_compute.routed_times(plan, d) if moe else None
    if plan.train.attention == "flash":
        core_f, core_b = flash_times(plan, d)
        elem = block_kernels.elementwise_kernels(plan, moe)
        mem_f = sum(memory_time(d, x) for x in elem)
        mem_b = sum(memory_time(d, 2 * x) for x in elem)
        lt = LayerTimes(fwd=fwd_gemm + core_f + mem_f, bwd_input=dgrad + core_b + mem_b,
                        bwd_weight=wgrad, attn_core=core_f,
                        op_recompute=op_recompute_time(plan, d, mem_f),
                        wgrad_column=wgrad_column, gemm_fwd=fwds, gemm_dgrad=dgrads)
        return _with_routed(lt, routed, (fwd_gemm + core_f, dgrad + wgrad + core_b))
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
    lt = LayerTimes(fwd=fwd_gemm + attn_fwd + mem_fwd, bwd_input=dgrad + attn_bwd + mem_bwd,
                    bwd_weight=wgrad,
                    attn_core=attn_fwd + (memory_time(d, softmax) if softmax else 0.0),
                    wgrad_column=wgrad_column, gemm_fwd=fwds, gemm_dgrad=dgrads)
    return _with_routed(lt, routed, (fwd_gemm + attn_fwd, dgrad + wgrad + attn_bwd))


def _with_routed(lt: LayerTimes, routed: moe_compute.RoutedTimes | None,
                 hide: tuple[float, float]) -> LayerTimes:
    """A MoE block: `lt` (attention, shared experts, elementwise) plus its routed part."""
    if routed is None:
        return lt
    return dataclasses.replace(lt, fwd=lt.fwd + routed.fwd,
                               bwd_input=lt.bwd_input + routed.dgrad,
                               bwd_weight=lt.bwd_weight + routed.wgrad, ep_hide=hide)


def op_recompute_time(plan: Plan, d: Device, elementwise_s: float) -> float:
    """Seconds of one block's forward work re-run by torchtitan's per-op policy
    (`parallel.recompute = "op"`, `sandbox.recompute`): the recomputed linears'
    GEMMs (with fp8 every linear and its casts) plus the block's elementwise
    kernels (`elementwise_s`: norms, RoPE, activation, residual adds); the
    flash kernel's output is kept, so it is not re-run."""
    m, p = plan.model, plan.parallel
    w = 4 if plan.train.precision == "fp32" else 2
    tokens, f8 = p.micro_batch * local_seq_len(plan), plan.train.precision == "fp8"
    gemms = [(tokens, out // p.tp if not row else out, k if not row else k // p.tp)
             for _n, out, k, row in recompute.op_recomputed_linears(m, plan.train.precision)]
    cast_f = fp8_cast_times(plan, d, gemms)[0]
    return sum(gemm_time(d, M, N, K, bytes_per=w, fp8=f8) for M, N, K in gemms) + cast_f \
        + elementwise_s


def flash_times(plan: Plan, d: Device) -> tuple[float, float]:
    """(forward, backward) seconds of one block's flash attention kernel(s).

    Executed FLOPs (`block_kernels.FlashWork`: causal fraction of the padded
    square forward, 2.5x that backward) at the published curve of
    `train.attention_kernel` for its shape times the profile's
    `attention_kernel_efficiency` (`sandbox.attention_kernels`), or, without
    that factor or curves for the GPU, at the attention curve's rate for the
    forward's executed FLOPs; or their HBM bytes if slower; one launch
    forward, `FLASH_BWD_KERNELS` backward."""
    m, p = plan.model, plan.parallel
    pr, hd, batch = d.profile, m.head_dim, p.micro_batch * (m.heads // p.tp)
    # q.k width and value width (MLA: head_dim + qk_rope_head_dim, v_head_dim)
    qk, vd = (hd + m.qk_rope_head_dim, m.v_head_dim) if m.kind == "mla" else (hd, hd)
    q, s = local_seq_len(plan), m.seq_len  # a cp rank's queries against all keys
    fw = block_kernels.flash_work(plan, pr.padded_gemm_flops(q, s, qk, batch)
                                  + pr.padded_gemm_flops(q, vd, s, batch))
    gpu = plan.cluster.gpu.name
    if pr.attention_kernel_efficiency > 0 and not pr.attention and \
            attention_kernels.has_curves(gpu):
        blocks = batch * -(-q // counts.FLASH_TILE)  # (batch, head, query tile) per launch
        t_f, t_b = flash_kernels.kernel_seconds(
            plan.train.attention_kernel, gpu, fw.fwd_flops, q, qk, p.cp, blocks,
            d.peak_flops, pr.attention_kernel_efficiency)
    else:
        rate = fw.fwd_flops / max(pr.attention_seconds(fw.fwd_flops, d.peak_flops), 1e-30)
        t_f, t_b = fw.fwd_flops / rate, fw.bwd_flops / rate
    mem = pr.memory_rate(d.hbm_bytes_per_s)
    fwd = pr.kernel_overhead_s + max(t_f, fw.fwd_bytes / mem)
    bwd = block_kernels.FLASH_BWD_KERNELS * pr.kernel_overhead_s + max(t_b, fw.bwd_bytes / mem)
    return fwd, bwd


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
    (none under context parallelism: no measured layer runs a ring, nor for
    MoE or MLA models: the measured layers are dense MHA / GQA blocks)."""
    m, p = plan.model, plan.parallel
    if p.cp > 1 or m.moe or m.kind == "mla":
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
                      attn_core=k * lt.attn_core, op_recompute=k * lt.op_recompute,
                      wgrad_column=tuple(k * w for w in lt.wgrad_column),
                      gemm_fwd=tuple(k * g for g in lt.gemm_fwd),
                      gemm_dgrad=tuple(k * g for g in lt.gemm_dgrad))


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
