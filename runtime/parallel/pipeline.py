"""Pipeline parallelism with `torch.distributed.pipelining`.

The model is cut into pp*vpp chunks of consecutive layers, exactly as
`sandbox.layout.chunk_layers` says (uneven `stage_layers` too); the first chunk
keeps the embeddings, the last the final norm and head, and a chunk drops
what it does not own (the GPT's forward skips missing parts). Pipeline rank
r owns chunks r, r+pp, r+2pp, ... (Megatron's interleaved / "loop" layout;
with vpp = 1 just chunk r). Each chunk becomes a `PipelineStage`, and the
plan's schedule drives them:

    gpipe            -> ScheduleGPipe
    1f1b             -> Schedule1F1B
    interleaved-1f1b -> ScheduleInterleaved1F1B (vpp chunks per rank)
    zero-bubble      -> ScheduleInterleavedZeroBubble (ZB1P, Qi et al. 2024:
                        backward split into input- and weight-gradient
                        passes; runs with the loop layout, also with one
                        chunk per rank. ScheduleZBVZeroBubble would need the
                        V layout with exactly two chunks per rank, which the
                        plan's vpp = 1 for zero-bubble does not describe.)

The loss (mean cross-entropy of a microbatch) is computed on the last stage;
the schedules scale gradients by 1/microbatches, so they are the gradients of
the mean over all microbatches.

Tied embeddings across stages (Megatron-LM's approach): the last stage holds
its own copy of the embedding matrix as the head, initialised identically;
after backward the first and last stages all-reduce (sum) the two gradients,
so both copies take the same optimizer step and stay equal — the single-
process tied gradient is exactly that sum.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.pipelining import (
    PipelineStage,
    Schedule1F1B,
    ScheduleGPipe,
    ScheduleInterleaved1F1B,
    ScheduleInterleavedZeroBubble,
)
from torch.distributed.pipelining.schedules import PipelineScheduleSingle, _PipelineSchedule
from torch.distributed.tensor import DTensor

from runtime.model import GPT
from sandbox.layout import chunk_ids, chunk_layers
from sandbox.specs import Plan

SCHEDULES: dict[str, type[_PipelineSchedule]] = {
    "gpipe": ScheduleGPipe,
    "1f1b": Schedule1F1B,
    "interleaved-1f1b": ScheduleInterleaved1F1B,
    "zero-bubble": ScheduleInterleavedZeroBubble,
}


def split_model(model: GPT, plan: Plan, pp_rank: int) -> list[tuple[int, GPT]]:
    """(chunk index, chunk) for each chunk pipeline rank `pp_rank` owns.

    The blocks of every chunk come from `sandbox.layout.chunk_layers` (uneven
    `parallel.stage_layers` included), the chunks of a rank from
    `sandbox.layout.chunk_ids`: the layout the simulator times.
    """
    p = plan.parallel
    layers = chunk_layers(plan)
    if layers[-1].stop != len(model.layers):
        raise ValueError(f"split_model: the plan's chunks hold {layers[-1].stop} blocks, "
                         f"the model has {len(model.layers)}")
    ids, n_chunks = chunk_ids(pp_rank, p.pp, p.vpp), len(layers)
    chunks = []
    for stage in ids:
        chunk = model if len(ids) == 1 else copy.deepcopy(model)
        keep = {str(i) for i in layers[stage]}
        for name in [n for n in chunk.layers if n not in keep]:
            del chunk.layers[name]
        if stage != 0:
            chunk.tok_embeddings, chunk.pos_embeddings = None, None
        if stage != n_chunks - 1:
            chunk.norm, chunk.output = None, None
        chunks.append((stage, chunk))
    return chunks


def build_schedule(plan: Plan, modules: list[tuple[int, nn.Module]], pp_mesh: DeviceMesh,
                   device: torch.device, loss_fn: Callable) -> _PipelineSchedule:
    """PipelineStages for this rank's chunks, driven by the plan's schedule."""
    p = plan.parallel
    cls = SCHEDULES[p.schedule]
    group = pp_mesh.get_group()
    stages = [PipelineStage(m, i, p.pp * p.vpp, device, group=group) for i, m in modules]
    if issubclass(cls, PipelineScheduleSingle):
        if len(stages) != 1:
            raise ValueError(f"parallel.schedule: {p.schedule} runs one stage per pipeline "
                             f"rank; vpp = {p.vpp} needs interleaved-1f1b")
        return cls(stages[0], n_microbatches=p.microbatches, loss_fn=loss_fn)
    return cls(stages, n_microbatches=p.microbatches, loss_fn=loss_fn)


def tied_group(mesh: DeviceMesh) -> dist.ProcessGroup | None:
    """Process group of the first and last pipeline rank at this (dp, cp, tp)
    coordinate; None on middle stages. A group of its own, not the pp group
    the stages' send/recv run on. Collective: every rank must call it."""
    grid = mesh.mesh.flatten(1)  # (pp, dp * cp * tp)
    pairs = [[int(grid[0, i]), int(grid[-1, i])] for i in range(grid.shape[1])]
    group, _ = dist.new_subgroups_by_enumeration(pairs)
    return group


def tied_copies(chunks: list[tuple[int, nn.Module]], n_stages: int) -> list[nn.Parameter]:
    """This rank's copies of a tied embedding matrix: the first stage's token
    embedding and the last stage's head."""
    out = []
    for stage, chunk in chunks:
        if stage == 0:
            out.append(chunk.tok_embeddings.weight)
        if stage == n_stages - 1:
            out.append(chunk.output.weight)
    return out


def sync_tied_grads(params: list[nn.Parameter], group: dist.ProcessGroup | None) -> None:
    """Sum the gradients of the tied copies over the first and last stage."""
    if group is None or not params:
        return
    for p in params:  # e.g. the vocab-parallel embedding's gradient may come back Replicate
        if isinstance(p.grad, DTensor) and p.grad.placements != p.placements:
            p.grad = p.grad.redistribute(p.device_mesh, p.placements)
    local = [p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad for p in params]
    total = torch.stack(local).sum(0)
    dist.all_reduce(total, group=group)
    for g in local:
        g.copy_(total)
