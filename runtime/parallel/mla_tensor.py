"""Tensor (and sequence) parallelism of multi-head latent attention (`runtime.layers.mla`).

Megatron-Core's MLA layout, as DTensor parallel styles: the heads are split
over the tp ranks.

- column-wise (per head): the query up-projection `wq_b` (or the full-rank
  `wq`) and the key-value up-projection `wkv_b`. Their output rows are laid
  out head by head (head i: its d_nope + d_rope query rows; its d_nope key
  then d_v value rows), so a contiguous `Shard(0)` of n / tp heads keeps each
  head's parts together;
- row-wise: the output `wo` (its input columns are head by head too), with the
  block's sequence-parallel `Shard(1)` output when SP is on;
- replicated: the down-projections `wq_a`, `wkv_a` and the latent norms
  `q_norm`, `kv_norm` (plain parameters, the same on every tp rank). Their
  gradients are complete on every rank because the inputs of `wq_b` / `wkv_b`
  enter DTensor as `Replicate` (whose backward all-reduces the partial input
  gradient) and the RoPE key, which every rank's heads share, goes through
  `copy_to_tp` at `shared_key` (identity forward, all-reduce of its gradient in
  backward: Megatron's "f" operator, written with DTensor);
- sequence parallel: the attention block's input is all-gathered (`Shard(1)`
  -> `Replicate`, a local tensor) before the down-projections; its backward
  keeps this rank's sequence slice of the (complete) gradient.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    RowwiseParallel,
)

from runtime.layers.mla import LatentAttention


def copy_to_tp(x: torch.Tensor, mesh: DeviceMesh) -> torch.Tensor:
    """x itself in forward; in backward its gradient summed over the tp ranks."""
    return DTensor.from_local(x, mesh, [Replicate()], run_check=False).to_local(
        grad_placements=[Partial()])


def mla_plan(att: LatentAttention, tp_mesh: DeviceMesh, sequence_parallel: bool,
             prefix: str = "attention") -> dict[str, Any]:
    """The `parallelize_module` plan entries of one block's MLA (names under
    `prefix`), and the all-reduce of the shared RoPE key's gradient."""
    seq = Shard(1) if sequence_parallel else Replicate()
    plan: dict[str, Any] = {
        f"{prefix}.{'wq_b' if att.q_rank else 'wq'}": ColwiseParallel(),
        f"{prefix}.wkv_b": ColwiseParallel(),
        f"{prefix}.wo": RowwiseParallel(output_layouts=seq),
    }
    if sequence_parallel:
        plan[prefix] = PrepareModuleInput(input_layouts=(Shard(1),),
                                          desired_input_layouts=(Replicate(),),
                                          use_local_output=True)

    def hook(_mod: nn.Module, _args: Any, out: torch.Tensor) -> torch.Tensor:
        return copy_to_tp(out, tp_mesh)

    att.shared_key.register_forward_hook(hook)
    return plan
