"""Activation recompute (gradient checkpointing) of transformer blocks.

- none: keep every activation.
- selective: recompute only the attention core softmax(QK^T)V in backward
  (Korthikanti et al. 2022), via the model's `Attention.recompute_core` flag.
- full: keep only each block's input and recompute the whole block in
  backward (`checkpoint_wrapper`, non-reentrant autograd checkpointing, as
  torchtitan does); its state-dict hooks keep parameter names unchanged.
"""

from __future__ import annotations

from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

MODES = ("none", "selective", "full")


def apply_recompute(model: nn.Module, mode: str) -> None:
    """Apply recompute `mode` to every block of `model` (a GPT or a chunk) in place."""
    if mode not in MODES:
        raise ValueError(f"parallel.recompute: unknown mode {mode!r}, expected one of {MODES}")
    for name, block in list(model.layers.items()):
        block.attention.recompute_core = mode == "selective"
        if mode == "full":
            model.layers[name] = checkpoint_wrapper(block, preserve_rng_state=False)
