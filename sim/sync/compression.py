"""Gradient compression: the bytes each scheme puts on the wire and its kernels.

`bucket_steps(...)` lowers the data-parallel reduction of one gradient bucket
(`n` parameters of one tensor-parallel rank of one pipeline stage) into a
sequence of steps: `("compute", seconds)` for compress / decompress kernels
on the GPU and `(op, nbytes)` for collectives over the data-parallel group,
`op` one of all_reduce | reduce_scatter | all_gather (`nbytes` the buffer,
as in `sim.network.collectives`). Gradients are Megatron's main_grad:
`sandbox.memory.grad_bytes_per_param` bytes each, fp32 except in fp16
training, whose gradients are already 16-bit.

- none: ring all-reduce of the n gradients (reduce-scatter with ZeRO >= 1).
- fp16 / bf16: cast to 16 bits (read 4, write 2 bytes per value), reduce the
  16-bit buffer, cast back; nothing to do when the gradients are 16-bit.
- int8: per-bucket scaled quantisation (read 4, write 1); DeepSpeed's
  compressed all-reduce: the int8 chunks are exchanged (reduce-scatter
  pattern), each rank dequantises the p-1 chunks of its shard, sums in fp32
  and re-quantises, then the int8 shards are all-gathered and dequantised.
- topk:F: error feedback (grad + residual), top-k selection of k = F*n
  values; sparse vectors do not add up in a ring, so every rank all-gathers
  the others' (fp32 value, int32 index) pairs (8 bytes each: `p*k*8` bytes
  gathered, so top-k saves bytes only when F < 1/p) and scatter-adds them.
- powersgd:R (Vogels et al. 2019, PyTorch's `powerSGD_hook`): each weight
  matrix M (m x n) with `(m + n) R * 2 < m n` (the hook's
  `min_compression_rate` 2) is sent as P = M Q (m x R) and Q = M^T P
  (n x R), two all-reduces with an orthogonalisation of P between; vectors
  (biases, norms) and small matrices go uncompressed in the first one.
  Kernels: the three GEMMs of each matrix (fp32, at the GPU's FP32 peak as
  PyTorch disables TF32 matmuls by default), Gram-Schmidt over P, error
  feedback (M + residual, residual = M - P Q^T) as memory-bound passes.

Selection and scatter kernels are charged their bytes moved at the HBM rate
(`sim.compute.memory_time`); that is a lower bound for top-k selection
(radix select reads the data more than once). Units: bytes, seconds.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from sandbox import memory
from sandbox.profile import bus_factor
from sandbox.specs import Model, Plan
from sim import compute

MIN_COMPRESSION_RATE = 2.0  # PyTorch PowerSGDState.min_compression_rate default
Step = tuple  # ("compute", seconds) | (op, nbytes)


@dataclass(frozen=True)
class Matrices:
    """The 2-D weights one tensor-parallel rank of a stage holds, by shape."""

    shapes: tuple[tuple[int, int, int], ...]  # (rows, cols, how many)
    vector_params: float  # parameters not in those matrices (biases, norms)


def stage_matrices(m: Model, tp: int, pp: int, stage: int, layers: int) -> Matrices:
    """Weight matrices of `layers` blocks plus the embedding / head of `stage`."""
    h = m.hidden
    ffn_in = (2 if m.activation == "swiglu" else 1) * m.ffn_hidden
    shapes = [((m.q_dim + 2 * m.kv_dim) // tp, h, layers), (h, m.q_dim // tp, layers),
              (ffn_in // tp, h, layers), (h, m.ffn_hidden // tp, layers)]
    if stage == 0:
        shapes.append((m.vocab // tp, h, 1))
        if m.position == "learned":
            shapes.append((m.seq_len, h, 1))
    if stage == pp - 1 and (not m.tied_embeddings or pp > 1):
        shapes.append((m.vocab // tp, h, 1))
    total = (memory.stage_params_per_gpu(m, tp, pp, stage)
             + (layers - m.layers / pp) * memory.layer_params_per_gpu(m, tp))
    in_mats = sum(r * c * k for r, c, k in shapes)
    return Matrices(tuple(shapes), max(0.0, total - in_mats))


def _powersgd_split(mats: Matrices, rank: int) -> tuple[list, float]:
    """(compressed (rows, cols, count) list, parameters sent uncompressed)."""
    comp, plain = [], mats.vector_params
    for r, c, k in mats.shapes:
        if (r + c) * rank * MIN_COMPRESSION_RATE < r * c:
            comp.append((r, c, k))
        else:
            plain += r * c * k
    return comp, plain


def grad_bytes(plan: Plan) -> int:
    """Bytes per uncompressed gradient value on the wire."""
    return memory.grad_bytes_per_param(plan.train.precision)


def wire_bytes(plan: Plan, dev: compute.Device, mats: Matrices, p: int,
               compressed: bool = True) -> float:
    """Bytes one rank sends per step to reduce its stage's gradients over `p`
    ranks (ring factors included); `compressed=False`: without compression."""
    if not compressed:
        op = "reduce_scatter" if plan.parallel.zero >= 1 else "all_reduce"
        n = sum(r * c * k for r, c, k in mats.shapes) + mats.vector_params
        return bus_factor(op, p) * n * grad_bytes(plan)
    return sum(bus_factor(st[0], p) * st[1] for st in bucket_steps(plan, dev, mats, 1.0, p)
               if st[0] != "compute")


def bucket_steps(plan: Plan, dev: compute.Device, mats: Matrices, share: float,
                 p: int) -> list[Step]:
    """Steps of one bucket holding `share` (a fraction) of the stage's
    gradients, reduced over `p` data-parallel ranks (see the module docstring)."""
    name, arg = plan.parallel.compression
    n = share * (sum(r * c * k for r, c, k in mats.shapes) + mats.vector_params)
    sharded = plan.parallel.zero >= 1  # a reduce-scatter leaves each rank its shard
    mt = compute.memory_time
    if name == "none" or (name in ("fp16", "bf16") and grad_bytes(plan) == 2):
        return [("reduce_scatter" if sharded else "all_reduce", n * grad_bytes(plan))]
    if name in ("fp16", "bf16"):
        back = n / p if sharded else n
        return [("compute", mt(dev, n * 6)),
                ("reduce_scatter" if sharded else "all_reduce", n * 2),
                ("compute", mt(dev, back * 6))]
    if name == "int8":
        steps = [("compute", mt(dev, n * 5)), ("reduce_scatter", n * 1),
                 ("compute", mt(dev, n * (p - 1) / p + n / p * (4 + 1)))]
        if not sharded:
            steps += [("all_gather", n * 1), ("compute", mt(dev, n * 5))]
        return steps
    if name == "topk":
        k = math.ceil(arg * n)
        return [("compute", mt(dev, n * 16 + k * 8)), ("all_gather", p * k * 8),
                ("compute", mt(dev, n * 4 + p * k * 16))]
    # PyTorch runs the hook's fp32 matmuls without TF32 by default: the FP32 peak
    dev32 = dataclasses.replace(dev, peak_flops=plan.cluster.gpu.peak_flops("fp32"))
    return _powersgd_steps(dev32, mats, share, int(arg), grad_bytes(plan))


def _powersgd_steps(dev: compute.Device, mats: Matrices, share: float, rank: int,
                    value_bytes: int) -> list[Step]:
    comp, plain = _powersgd_split(mats, rank)
    g = compute.gemm_time
    n_comp = sum(r * c * k for r, c, k in comp)
    p_vals = sum(r * rank * k for r, c, k in comp)
    q_vals = sum(c * rank * k for r, c, k in comp)
    mt = compute.memory_time
    make_p = sum(g(dev, r, rank, c, batch=k, bytes_per=4) for r, c, k in comp)
    orth = mt(dev, rank * p_vals * 4 * 2)  # Gram-Schmidt: one pass over P per column
    make_q = sum(g(dev, c, rank, r, batch=k, bytes_per=4) for r, c, k in comp)
    expand = sum(g(dev, r, c, rank, batch=k, bytes_per=4) for r, c, k in comp)
    feedback = mt(dev, n_comp * 12)  # M + residual before, residual = M - P Q^T after
    return [("compute", share * (feedback + make_p)),
            ("all_reduce", share * (p_vals + plain) * value_bytes),
            ("compute", share * (orth + make_q)),
            ("all_reduce", share * q_vals * value_bytes),
            ("compute", share * (expand + feedback))]


def push_payload(plan: Plan, dev: compute.Device, n: float) -> tuple[float, float]:
    """(bytes, compress seconds) of `n` gradients pushed to parameter servers
    (the servers sum what they receive; PowerSGD has no push form)."""
    name, arg = plan.parallel.compression
    mt = compute.memory_time
    if name == "none" or (name in ("fp16", "bf16") and grad_bytes(plan) == 2):
        return n * grad_bytes(plan), 0.0
    if name in ("fp16", "bf16"):
        return n * 2, mt(dev, n * 6)
    if name == "int8":
        return n * 1, mt(dev, n * 5)
    if name == "topk":
        k = math.ceil(arg * n)
        return k * 8, mt(dev, n * 16 + k * 8)
    raise ValueError("powersgd needs dp_mode = 'allreduce'")
