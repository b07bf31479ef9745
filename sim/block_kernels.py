"""Work of a block's non-GEMM kernels as today's frameworks run them (`attention = "flash"`).

What each kernel executes, per tensor-parallel rank and micro-batch, without
pricing it (`sim.compute` prices, `sim.host` counts launches). Units: FLOP, bytes.

- Flash attention (FlashAttention-2/3, cuDNN / PyTorch SDPA): one fused causal
  kernel forward; it reads Q, K, V and writes O and the fp32 logsumexp, no
  s x s tensor touches HBM. It executes `counts.causal_fraction` of the score
  square (tiles above the diagonal skipped); its backward recomputes the
  scores, 2.5x the forward FLOPs (`counts.FLASH_BACKWARD_RATIO`), in three
  launches as FlashAttention-2 runs it: dot(dO, O) pre-processing, the dQ/dK/dV
  kernel, the fp32 dQ accumulator's conversion.
- Elementwise chains: two norms, RoPE on Q and K (Llama), the MLP activation
  and two residual adds; the runtime's models have no dropout. In eager PyTorch
  every op is its own kernel reading its inputs and writing its output: RoPE is
  torchtitan's complex multiply (upcast to fp32, rotate, cast back: three
  kernels per tensor), SwiGLU is silu then a multiply. `torch.compile`
  (inductor, one graph per block, `runtime.process.compile_blocks`) fuses each
  chain into one kernel that reads and writes each tensor once: RoPE one kernel
  per tensor, silu(gate) * up one kernel, the first residual add with the MLP's
  norm (read x and the branch, write x and the norm). The block's first norm and
  last add stay alone (they border the next graph).
  Backward kernels move twice the forward bytes, one launch each (as `sim.compute`).
"""

from __future__ import annotations

from dataclasses import dataclass

from sandbox import counts
from sandbox.layout import local_seq_len
from sandbox.specs import Plan

FLASH_FWD_KERNELS = 1
FLASH_BWD_KERNELS = 3  # FlashAttention-2: dot(dO, O), dq/dk/dv, dq fp32 -> 16-bit


@dataclass(frozen=True)
class FlashWork:
    """One block's flash attention on one TP rank, one micro-batch.

    `square_flops`: the score and context GEMMs' FLOPs over the full square
    (padded as the caller's profile pads); `fraction`: the causal share executed;
    bytes read + written by the forward and the backward kernels."""

    square_flops: float
    fraction: float
    fwd_bytes: float
    bwd_bytes: float

    @property
    def fwd_flops(self) -> float:
        return self.fraction * self.square_flops

    @property
    def bwd_flops(self) -> float:
        return counts.FLASH_BACKWARD_RATIO * self.fwd_flops


def flash_work(plan: Plan, square_flops: float) -> FlashWork:
    """The flash kernel of `plan`'s block given the padded square FLOPs."""
    m, p = plan.model, plan.parallel
    w = 4 if plan.train.precision == "fp32" else 2
    t, tokens = p.tp, p.micro_batch * local_seq_len(plan)  # this cp rank's tokens
    q, kv = m.q_dim / t, m.kv_dim / t
    kv2, o = 2 * kv, q  # K and V together; O (MLA: values and O of v_head_dim)
    if m.kind == "mla":
        kv2, o = kv + m.v_dim / t, m.v_dim / t
    rows = tokens * m.heads / t  # (query, head) rows: fp32 logsumexp and D = rowsum(dO * O)
    fwd = tokens * w * (q + kv2 + o) + 4 * rows  # read Q, K, V; write O, LSE
    bwd = (tokens * w * 2 * o + 4 * rows  # pre-processing: read O, dO; write D
           + tokens * w * (q + kv2 + o) + 8 * rows  # read Q, K, V, dO, LSE, D
           + tokens * (8 * q + w * kv2)  # fp32 dQ accumulated (write + read), write dK, dV
           + tokens * w * q)  # write dQ
    # with context parallelism K and V of all s tokens stream through the ring
    fwd += (p.cp - 1) * tokens * w * kv2
    bwd += (p.cp - 1) * tokens * w * 2 * kv2
    return FlashWork(square_flops, counts.causal_fraction(m.seq_len), fwd, bwd)


def elementwise_kernels(plan: Plan, moe: bool = False) -> tuple[float, ...]:
    """Bytes read + written by each forward elementwise kernel of one block
    (`moe`: a MoE block, whose MLP here is its shared experts; the routed
    part's kernels are `sim.moe_compute`'s). MLA: RoPE on the queries' and
    the shared key's RoPE parts only, and the RMSNorms of its two latents."""
    m, p, tr = plan.model, plan.parallel, plan.train
    w = 4 if tr.precision == "fp32" else 2
    t, tokens = p.tp, p.micro_batch * local_seq_len(plan)  # this cp rank's tokens
    tok_local = tokens / t if p.sequence_parallel and t > 1 else tokens
    hid = tok_local * m.hidden  # elements of the residual stream on this rank
    ffn = tokens * (m.shared_experts * m.expert_ffn_hidden if moe else m.ffn_hidden) / t
    rope = ([tokens * m.q_dim / t, tokens * m.kv_dim / t] if m.position == "rope" else [])
    latent = []
    if m.kind == "mla":
        rope = [tokens * m.heads * m.qk_rope_head_dim / t, tokens * m.qk_rope_head_dim]
        latent = [2 * w * tokens * r for r in (m.q_lora_rank, m.kv_lora_rank) if r]
    gated = m.activation == "swiglu"
    if tr.compile:
        ks = [2 * w * hid]  # attention norm
        ks += latent + [2 * w * n for n in rope]  # fused RoPE per tensor
        ks += [4 * w * hid]  # residual add + MLP norm
        ks += [(3 if gated else 2) * w * ffn] if ffn else []  # silu(gate) * up | gelu
        ks += [3 * w * hid]  # residual add
        return tuple(ks)
    ks = [2 * w * hid] + latent
    for n in rope:  # upcast, rotate (complex multiply), cast back
        ks += [(w + 4) * n, 8 * n, (4 + w) * n]
    ks += [3 * w * hid, 2 * w * hid]  # residual add, MLP norm
    if ffn:
        ks += [2 * w * ffn, 3 * w * ffn] if gated else [2 * w * ffn]  # silu, multiply | gelu
    ks += [3 * w * hid]
    return tuple(ks)
