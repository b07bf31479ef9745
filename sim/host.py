"""Host-side dispatch: the CPU cost of launching a step's kernels.

In eager PyTorch (Megatron-LM, torchtitan without CUDA graphs) the host
dispatches every kernel from Python and the autograd engine; it runs ahead of
the GPU asynchronously, so a piece of work takes `max(GPU time, host time)`:
small models and small microbatches are bound by the host, not the GPU.
Host time = modelled kernels x `Profile.host_op_overhead_s` (seconds per
kernel, from calibration; 0 disables the bound). The kernel counts are those
of `sim.compute` (what the simulator charges GPU time for), so the constant
is the host cost per modelled kernel, framework glue (views, bias adds,
autograd bookkeeping) included. With `attention = "flash"` the core is one
kernel forward and `FLASH_BWD_KERNELS` backward, and the elementwise kernels
are those of `sim.block_kernels` (fewer with `train.compile`).
"""

from __future__ import annotations

from dataclasses import dataclass

from sandbox import recompute
from sandbox.specs import Plan
from sim.block_kernels import FLASH_BWD_KERNELS, FLASH_FWD_KERNELS, elementwise_kernels
from sim.roofline import fp8_cast_kernels

BLOCK_GEMMS = 4  # QKV, attention output, MLP in, MLP out
ATTENTION_GEMMS = 2  # QK^T, PV
BLOCK_MEMORY_OPS = 4  # norms, softmax+dropout, activation, dropout+residual


@dataclass(frozen=True)
class HostOps:
    """Kernels launched per transformer block and per embedding / head, per microbatch."""

    block_fwd: int
    block_bwd_input: int
    block_bwd_weight: int
    embedding_fwd: int = 1
    embedding_bwd: int = 1
    head_fwd: int = 3  # norm, logits GEMM, cross-entropy
    head_bwd: int = 5  # cross-entropy, two GEMMs, norm (x2)
    attn_core: int = ATTENTION_GEMMS + 1  # the core's forward again (selective recompute)
    op_recompute: int = 0  # kernels "op" recompute re-runs (GEMMs, casts, elementwise, colls)


def host_ops(plan: Plan) -> HostOps:
    """Kernel counts of one block (tensor-parallel collectives included)."""
    p = plan.parallel
    tp_colls = 0 if p.tp == 1 else (4 if p.sequence_parallel else 2)
    cf, cd, cw = (0, 0, 0)
    if plan.train.precision == "fp8":
        # per linear GEMM, the casts of its (forward, dgrad, wgrad) operands
        cf, cd, cw = (BLOCK_GEMMS * k for k in fp8_cast_kernels(plan.train.fp8_recipe))
    if plan.train.attention == "flash":
        elem = len(elementwise_kernels(plan))
        redo = recompute.op_recomputed_linears(plan.model, plan.train.precision)
        casts = len(redo) * fp8_cast_kernels(plan.train.fp8_recipe)[0] \
            if plan.train.precision == "fp8" else 0
        op = len(redo) + casts + elem + (2 if p.tp > 1 else 0)  # re-run AG / AR
        return HostOps(block_fwd=BLOCK_GEMMS + FLASH_FWD_KERNELS + elem + tp_colls + cf,
                       block_bwd_input=BLOCK_GEMMS + FLASH_BWD_KERNELS + elem + tp_colls + cd,
                       block_bwd_weight=BLOCK_GEMMS + cw, attn_core=FLASH_FWD_KERNELS,
                       op_recompute=op)
    fwd = BLOCK_GEMMS + ATTENTION_GEMMS + BLOCK_MEMORY_OPS + tp_colls + cf
    bwd_input = BLOCK_GEMMS + 2 * ATTENTION_GEMMS + BLOCK_MEMORY_OPS + tp_colls + cd
    return HostOps(block_fwd=fwd, block_bwd_input=bwd_input,
                   block_bwd_weight=BLOCK_GEMMS + cw)
