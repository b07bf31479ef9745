"""Dynamic loss scaling for fp16 training (Micikevicius et al. 2018).

fp16 gradients below about 6e-8 flush to zero. Multiplying the loss by a
scale S before backward multiplies every gradient by S (exactly, S being a
power of two), and dividing them by S again before clipping and the
optimizer step leaves the update unchanged. The rule is Megatron-LM's and
`torch.amp.GradScaler`'s: S starts at 2**16; a step whose gradient norm is
not finite (an overflow somewhere, on any rank: the norm is reduced over
every rank) is skipped (no optimizer step; the learning-rate schedule goes
on, as with `torch.amp`) and halves S; `growth_interval` finite steps in a
row double it.

The trainer keeps one `DynamicLossScale` when `train.precision = "fp16"`
(`runtime.train`), on every device: on CPU the arithmetic stays fp32, so
the scale changes nothing but is exercised. Its state is saved with each
checkpoint.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass
class DynamicLossScale:
    """The loss scale and its update rule (see the module docstring)."""

    scale: float = 2.0**16
    growth_interval: int = 1000  # finite steps in a row before doubling
    backoff: float = 0.5
    growth: float = 2.0
    min_scale: float = 1.0
    good_steps: int = 0  # finite steps since the last change

    def update(self, finite: bool) -> bool:
        """Record one step; returns whether the optimizer may step."""
        if not finite:
            self.scale = max(self.min_scale, self.scale * self.backoff)
            self.good_steps = 0
            return False
        self.good_steps += 1
        if self.good_steps >= self.growth_interval:
            self.scale *= self.growth
            self.good_steps = 0
        return True

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v)
