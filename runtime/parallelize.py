"""Apply a plan's parallelism to the model: the contract the training loop uses.

`parallelize(plan, mesh, device)` builds the model from the plan's spec
(deterministic weights for the plan's seed), applies tensor parallelism,
activation recompute, data parallelism / ZeRO and pipeline parallelism, and
returns a `Parallelized` that runs one optimizer step's forward and backward.

This first version is the single-process path (world size 1); the parallel
modes compose small `apply_*` functions from the sibling modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from runtime.model import build_model
from sandbox.specs import Plan


@dataclass
class Parallelized:
    """The model parts this rank owns and how to run a step over them.

    parts: model chunks on this rank (one, or vpp chunks with interleaving).
    mesh: the (pp, dp, tp) DeviceMesh, or None in a single process.
    """

    plan: Plan
    parts: list[nn.Module]
    device: torch.device
    mesh: object | None = None
    autocast_dtype: torch.dtype | None = None
    extra: dict = field(default_factory=dict)

    def parameters(self) -> list[nn.Parameter]:
        seen, out = set(), []
        for part in self.parts:
            for p in part.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
        return out

    def _autocast(self):
        if self.autocast_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def step(self, tokens: torch.Tensor, targets: torch.Tensor) -> float:
        """Forward + backward over this replica's share of the global batch.

        tokens, targets: (sequences for this dp rank, seq_len) int64. Splits
        them into plan.parallel.micro_batch-sized microbatches, accumulates
        gradients scaled so they equal the gradient of the mean loss over the
        whole global batch, and returns that mean loss (same on every rank).
        """
        model = self.parts[0]
        chunks = tokens.split(self.plan.parallel.micro_batch)
        tchunks = targets.split(self.plan.parallel.micro_batch)
        total = torch.zeros((), device=self.device)
        for x, y in zip(chunks, tchunks, strict=True):
            with self._autocast():
                logits = model(x.to(self.device))
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.to(self.device).flatten())
            (loss / len(chunks)).backward()
            total += loss.detach()
        return (total / len(chunks)).item()

    @torch.no_grad()
    def evaluate(self, tokens: torch.Tensor, targets: torch.Tensor) -> float:
        """Mean loss over the batch without gradients (same on every rank)."""
        model = self.parts[0]
        losses = []
        for x, y in zip(tokens.split(self.plan.parallel.micro_batch),
                        targets.split(self.plan.parallel.micro_batch), strict=True):
            with self._autocast():
                logits = model(x.to(self.device))
            losses.append(F.cross_entropy(logits.float().flatten(0, 1),
                                          y.to(self.device).flatten()))
        return torch.stack(losses).mean().item()

    def clip_grad_norm_(self, max_norm: float) -> float:
        """Clip the global gradient norm over all ranks' shards; returns the norm."""
        return torch.nn.utils.clip_grad_norm_(self.parameters(), max_norm).item()

    def build_optimizer(self) -> torch.optim.Optimizer:
        """AdamW (or SGD) over this rank's parameters, sharded as ZeRO says."""
        t = self.plan.train
        if t.optimizer == "sgd":
            return torch.optim.SGD(self.parameters(), lr=t.lr, momentum=0.9,
                                   weight_decay=t.weight_decay)
        return torch.optim.AdamW(self.parameters(), lr=t.lr, betas=(0.9, 0.95),
                                 weight_decay=t.weight_decay)


def parallelize(plan: Plan, mesh: object | None, device: torch.device) -> Parallelized:
    """Build the model for this rank and apply the plan's parallelism."""
    p = plan.parallel
    if plan.world_size != 1:
        raise NotImplementedError("parallel modes are applied by the parallel modules")
    model = build_model(plan.model, seed=plan.train.seed).to(device)
    for block in model.layers.values():
        block.attention.recompute_core = p.recompute == "selective"
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(plan.train.precision)
    if device.type == "cpu":
        autocast = None  # CPU runs train in fp32
    return Parallelized(plan=plan, parts=[model], device=device, mesh=mesh,
                        autocast_dtype=autocast)
