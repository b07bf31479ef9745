"""The dense feed-forward of a block: GELU MLP or SwiGLU (`Model.activation`).

Also the width of one expert for a MoE block's shared experts (`runtime.layers.moe`).
Re-exported by `runtime.model`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sandbox.specs import Model


class FeedForward(nn.Module):
    """GELU MLP (fc1, fc2) or SwiGLU (w1 gate, w3 up, w2 down)."""

    def __init__(self, spec: Model, width: int | None = None):
        super().__init__()
        self.gated = spec.activation == "swiglu"
        h, f, bias = spec.hidden, width or spec.ffn_hidden, spec.bias
        if self.gated:
            self.w1, self.w3 = nn.Linear(h, f, bias=bias), nn.Linear(h, f, bias=bias)
            self.w2 = nn.Linear(f, h, bias=bias)
        else:
            self.fc1, self.fc2 = nn.Linear(h, f, bias=bias), nn.Linear(f, h, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            return self.w2(F.silu(self.w1(x)) * self.w3(x))
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))
