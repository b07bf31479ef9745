"""A mixture-of-experts block's routed part on one rank: router, grouped experts, permutes.

Per MoE block and micro-batch on one tensor-parallel rank of the busiest
expert-parallel rank (`sandbox.experts`: under balance every rank is it):

- the router GEMM tokens x hidden x experts (16-bit; its input is the rank's
  sequence-parallel share of the tokens) and the softmax / top-k over the
  fp32 logits (a memory-bound kernel);
- the permute (gather each token's k copies into expert order: read
  tokens x h, write tokens x k x h) and the unpermute (read the k expert
  outputs and the gates, write the weighted sum);
- the routed experts as a grouped GEMM: each local expert's two (SwiGLU:
  gate-up fused, then down) linears priced on the profile's matmul curve
  for ITS token count (`sim.roofline.gemm_time`; a small per-expert GEMM runs
  at the curve's lower efficiency: the grouped-GEMM mechanism), forward,
  dgrad and wgrad, FP8 and its casts as the dense FFN's linears
  (`sim.roofline.fp8_cast_times`); expert FFN width split by tp (expert TP =
  tp), every tp rank computing all the tokens its local experts receive;
- the experts' activation (silu, multiply; one fused kernel with
  `train.compile`) over those tokens.

Backward memory-bound kernels move twice the forward bytes (as `sim.compute`).
The shared experts and the attention are ordinary GEMMs of `sim.compute`.
Units: seconds, bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sandbox import experts
from sandbox.layout import local_seq_len
from sandbox.specs import Plan
from sim import roofline


@dataclass(frozen=True)
class RoutedTimes:
    """Seconds of one MoE block's routed part (module docstring) on one rank."""

    fwd: float
    dgrad: float
    wgrad: float
    expert_fwd: float  # of which: the routed experts' forward GEMMs alone


def rank_tokens(plan: Plan) -> int:
    """Tokens one rank routes per micro-batch (its sequence-parallel share)."""
    p = plan.parallel
    tokens = p.micro_batch * local_seq_len(plan)
    return tokens // p.tp if p.sequence_parallel and p.tp > 1 else tokens


def expert_tokens(plan: Plan) -> list[float]:
    """Token copies each local expert of the busiest ep rank computes per
    micro-batch (every tp rank of it computes all of them on its 1/tp width)."""
    m, p = plan.model, plan.parallel
    tokens = p.micro_batch * local_seq_len(plan)  # the tp group's tokens, gathered
    return experts.busiest_expert_loads(m, tokens, p.ep, plan.cluster.variation_seed)


def expert_gemms(plan: Plan, n: float) -> list[tuple[int, int, int]]:
    """(M, N, K) of one expert's linears for n token copies on one tp rank."""
    m, t = plan.model, plan.parallel.tp
    rows = int(math.ceil(n))
    ffn_in = (2 if m.activation == "swiglu" else 1) * m.expert_ffn_hidden // t
    return [(rows, ffn_in, m.hidden), (rows, m.hidden, m.expert_ffn_hidden // t)]


def grouped_gemm_times(plan: Plan, d: roofline.Device, loads: list[float]
                       ) -> tuple[float, float, float]:
    """(forward, dgrad, wgrad) seconds of the routed experts' GEMMs, each expert
    priced at its own token count `loads[i]` (experts with no tokens skip)."""
    w = 4 if plan.train.precision == "fp32" else 2
    f8 = plan.train.precision == "fp8"
    fwd = dgrad = wgrad = 0.0
    for n in loads:
        if n <= 0:
            continue
        gemms = expert_gemms(plan, n)
        cf, cd, cw = roofline.fp8_cast_times(plan, d, gemms)
        fwd += sum(roofline.gemm_time(d, M, N, K, bytes_per=w, fp8=f8) for M, N, K in gemms) + cf
        dgrad += sum(roofline.gemm_time(d, M, K, N, bytes_per=w, fp8=f8)
                     for M, N, K in gemms) + cd
        wgrad += sum(roofline.gemm_time(d, K, N, M, bytes_per=w, fp8=f8)
                     for M, N, K in gemms) + cw
    return fwd, dgrad, wgrad


def routed_kernels(plan: Plan, copies: float) -> tuple[float, ...]:
    """Bytes of the forward memory-bound kernels around the routed experts:
    router softmax / top-k, permute, the experts' activation over `copies`
    token copies, unpermute."""
    m, p, tr = plan.model, plan.parallel, plan.train
    w = 4 if tr.precision == "fp32" else 2
    tokens = rank_tokens(plan)
    k = m.experts_per_token
    router = tokens * m.experts * 4 * 2 + tokens * k * (4 + 8)  # fp32 logits in / probs out, top-k
    permute = tokens * m.hidden * w + tokens * k * m.hidden * w
    unpermute = tokens * k * (m.hidden * w + 4) + tokens * m.hidden * w
    ffn = copies * m.expert_ffn_hidden / p.tp
    gated = m.activation == "swiglu"
    if tr.compile:
        act = [(3 if gated else 2) * w * ffn]
    else:
        act = [2 * w * ffn, 3 * w * ffn] if gated else [2 * w * ffn]
    return (router, permute, *act, unpermute)


def routed_times(plan: Plan, d: roofline.Device) -> RoutedTimes:
    """The routed part of one MoE block (module docstring)."""
    m = plan.model
    w = 4 if plan.train.precision == "fp32" else 2
    tokens = rank_tokens(plan)
    loads = expert_tokens(plan)
    e_f, e_d, e_w = grouped_gemm_times(plan, d, loads)
    router_f = roofline.gemm_time(d, tokens, m.experts, m.hidden, bytes_per=w)
    router_d = roofline.gemm_time(d, tokens, m.hidden, m.experts, bytes_per=w)
    router_w = roofline.gemm_time(d, m.hidden, m.experts, tokens, bytes_per=w)
    elem = routed_kernels(plan, sum(loads))
    mem_f = sum(roofline.memory_time(d, x) for x in elem)
    mem_b = sum(roofline.memory_time(d, 2 * x) for x in elem)
    return RoutedTimes(fwd=e_f + router_f + mem_f, dgrad=e_d + router_d + mem_b,
                       wgrad=e_w + router_w, expert_fwd=e_f)


def moe_note(plan: Plan) -> dict:
    """`SimResult.extra` fields of a MoE plan: the busiest ep rank's load over
    the balanced one, the dropped share of token copies, the local experts'
    token copies per micro-batch (min, max)."""
    m, p = plan.model, plan.parallel
    tokens = p.micro_batch * local_seq_len(plan)
    seed = plan.cluster.variation_seed
    loads = expert_tokens(plan)
    return {"ep": p.ep, "router_skew": m.router_skew,
            "moe_load_factor": experts.load_factor(m, tokens, p.ep, seed),
            "moe_dropped_fraction": experts.dropped_fraction(m, tokens, p.ep, seed),
            "moe_expert_tokens": [min(loads), max(loads)]}
