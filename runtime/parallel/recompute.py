"""Activation recompute (gradient checkpointing) of transformer blocks.

- none: keep every activation.
- selective: recompute only the attention core softmax(QK^T)V in backward
  (Korthikanti et al. 2022), via the model's `Attention.recompute_core` flag.
- full: keep only each block's input and recompute the whole block in
  backward (`checkpoint_wrapper`, non-reentrant autograd checkpointing, as
  torchtitan does); its state-dict hooks keep parameter names unchanged.
- op: torchtitan's per-op selective checkpointing: every block wrapped with
  `create_selective_checkpoint_contexts` and a policy that saves the outputs
  of matmuls (every second one of a block recomputed), of the SDPA kernels
  and of reduce-scatters, and recomputes the rest (`sandbox.recompute`).
- layer: torchtitan's `selective_ac_option = "2"`: the 2nd, 4th, ... block of
  a rank (counted over its pipeline chunks) fully checkpointed.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

MODES = ("none", "selective", "full", "op", "layer")

_ops = torch.ops.aten
# torchtitan's _op_sac_save_list; addmm too, which the runtime's biased (GPT)
# linears dispatch to and torchtitan's bias-free models never produce
MATMULS = {_ops.mm.default, _ops.addmm.default}
SAVED = MATMULS | {
    _ops._scaled_dot_product_flash_attention.default,
    _ops._scaled_dot_product_efficient_attention.default,
    _ops._scaled_dot_product_cudnn_attention.default,
    _ops._scaled_dot_product_flash_attention_for_cpu.default,
    torch.ops._c10d_functional.reduce_scatter_tensor.default,
    _ops.max.default,
}


def op_policy(meta: dict):
    """The per-op policy of one block's forward (and its recompute): counts
    matmuls separately in each and saves the odd-numbered ones."""

    def policy(ctx, func, *args, **kwargs):
        mode = "recompute" if ctx.is_recompute else "forward"
        if func in MATMULS:
            meta[mode] += 1
            if meta[mode] % 2 == 0:
                return CheckpointPolicy.PREFER_RECOMPUTE
        return CheckpointPolicy.MUST_SAVE if func in SAVED else CheckpointPolicy.PREFER_RECOMPUTE

    return policy


def _op_context():
    return create_selective_checkpoint_contexts(op_policy(defaultdict(int)))


def apply_recompute(model: nn.Module, mode: str, start: int = 0) -> int:
    """Apply recompute `mode` to every block of `model` (a GPT or a chunk) in
    place; `start`: blocks of this rank wrapped before (for "layer"). Returns
    the count including this chunk's blocks."""
    if mode not in MODES:
        raise ValueError(f"parallel.recompute: unknown mode {mode!r}, expected one of {MODES}")
    count = start
    for name, block in list(model.layers.items()):
        count += 1
        block.attention.recompute_core = mode == "selective"
        if mode == "full" or (mode == "layer" and count % 2 == 0):
            model.layers[name] = checkpoint_wrapper(block, preserve_rng_state=False)
        elif mode == "op":
            model.layers[name] = checkpoint_wrapper(block, context_fn=_op_context,
                                                    preserve_rng_state=False)
    return count
