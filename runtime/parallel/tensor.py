"""Tensor (and sequence) parallelism with DTensor `parallelize_module`.

Megatron-LM's layout, written the way torchtitan's `apply_tp` writes it:

- attention: wq, wk, wv column-wise (each rank owns heads/tp query heads and
  kv_heads/tp key/value heads), wo row-wise; feed-forward: fc1 (or w1, w3)
  column-wise, fc2 (or w2) row-wise. One all-reduce per sub-layer forward.
- token embedding: row-wise (vocabulary-parallel) embedding; output head:
  column-wise over the vocabulary with a Replicate output, so the loss is the
  ordinary cross-entropy on full logits and agrees with one process. With
  tied embeddings both are the same `Shard(0)` parameter, re-tied after
  sharding.
- learned position embeddings: replicated (they are small) via
  `distribute_module`; their output is cut to this rank's sequence shard
  when sequence parallelism is on.
- sequence parallelism (Korthikanti et al. 2022): the norms run on sequence
  shards (`SequenceParallel`), activations between blocks are `Shard(1)`,
  all-gathered before attention / feed-forward (`PrepareModuleInput`) and
  reduce-scattered after wo / fc2 (`RowwiseParallel(output_layouts=Shard(1))`).

Multi-head latent attention blocks take `runtime.parallel.mla_tensor`'s plan
for their attention instead. Works on a whole model or on a pipeline chunk
(parts set to None are skipped).
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_module
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from runtime.layers.mla import LatentAttention
from runtime.parallel.mla_tensor import mla_plan


def _replicate_positions(module: nn.Embedding, mesh: DeviceMesh, sequence_parallel: bool) -> None:
    """Replicated learned position table; output (seq, hidden) or its Shard(0) slice."""

    def inputs(_mod: nn.Module, args: Any, mesh: DeviceMesh) -> tuple:
        return tuple(DTensor.from_local(a, mesh, [Replicate()], run_check=False) for a in args)

    def outputs(_mod: nn.Module, out: DTensor, mesh: DeviceMesh):
        if sequence_parallel:
            out = out.redistribute(mesh, [Shard(0)])
        return out.to_local()

    distribute_module(module, mesh, input_fn=inputs, output_fn=outputs)


def apply_tp(model: nn.Module, tp_mesh: DeviceMesh, sequence_parallel: bool) -> None:
    """Shard `model` (a GPT or a pipeline chunk of one) over `tp_mesh` in place."""
    sp = sequence_parallel
    seq = Shard(1) if sp else Replicate()  # layout of activations between blocks
    top: dict[str, Any] = {}
    if model.tok_embeddings is not None:
        top["tok_embeddings"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=seq)
    if model.norm is not None and sp:
        top["norm"] = SequenceParallel()
    if model.output is not None:
        top["output"] = ColwiseParallel(input_layouts=seq, output_layouts=Replicate())
    if top:
        parallelize_module(model, tp_mesh, top)
    if model.pos_embeddings is not None:
        _replicate_positions(model.pos_embeddings, tp_mesh, sp)
    if model.tok_embeddings is not None and model.output is not None and model.spec.tied_embeddings:
        model.output.weight = model.tok_embeddings.weight  # both Shard(0) over the vocabulary

    for block in model.layers.values():
        moe = not hasattr(block.feed_forward, "gated")  # runtime.parallel.expert shards it
        gated = getattr(block.feed_forward, "gated", False)
        up = ("w1", "w3") if gated else ("fc1",)
        down = "w2" if gated else "fc2"
        plan: dict[str, Any] = {
            "attention.wq": ColwiseParallel(),
            "attention.wk": ColwiseParallel(),
            "attention.wv": ColwiseParallel(),
            "attention.wo": RowwiseParallel(output_layouts=seq),
        }
        if not moe:
            plan.update({**{f"feed_forward.{n}": ColwiseParallel() for n in up},
                         f"feed_forward.{down}": RowwiseParallel(output_layouts=seq)})
        if sp:
            plan.update({
                "attention_norm": SequenceParallel(),
                "attention": PrepareModuleInput(input_layouts=(Shard(1),),
                                                desired_input_layouts=(Replicate(),)),
                "ffn_norm": SequenceParallel(),
            })
            if not moe:
                plan["feed_forward"] = PrepareModuleInput(input_layouts=(Shard(1),),
                                                          desired_input_layouts=(Replicate(),))
        if isinstance(block.attention, LatentAttention):  # MLA: `runtime.parallel.mla_tensor`
            plan = {k: v for k, v in plan.items() if k.partition(".")[0] != "attention"}
            plan.update(mla_plan(block.attention, tp_mesh, sp))
        parallelize_module(block, tp_mesh, plan)
