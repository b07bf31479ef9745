"""Expert parallelism's forward-time communication (the MoE block calls it).

- `dispatch_compute_combine`: each rank sorts its token-expert pairs by
  expert, exchanges the per-expert counts (`all_to_all_single` of E
  integers), sends every pair's hidden vector to the rank owning its expert
  and gets the outputs back by the reverse all-to-all (`_AllToAll`,
  autograd-aware: backward is the all-to-all with the splits swapped).
- Megatron's f / g operators for the experts' tensor parallelism
  (`copy_to_tp`, `reduce_from_tp`) and the sequence-parallel gather / split
  around routing (`gather_sequence`, `split_sequence`).

`runtime.parallel.expert.apply_ep` shards the model and sets the
`ExpertGroups` these run over; `runtime.layers.moe` imports this module only, so
the MoE block does not depend on the code that shards it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class ExpertGroups:
    """Process groups one MoE block communicates over (None: size 1)."""

    ep_group: dist.ProcessGroup | None
    ep: int
    tp_group: dist.ProcessGroup | None
    sequence_parallel: bool


# ------------------------------------------------------------ collectives
class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, out_splits: list[int], in_splits: list[int],
                group: dist.ProcessGroup) -> torch.Tensor:
        ctx.splits, ctx.group = (in_splits, out_splits), group
        out = x.new_empty((sum(out_splits), *x.shape[1:]))
        dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        out_splits, in_splits = ctx.splits
        back = _AllToAll.apply(grad.contiguous(), out_splits, in_splits, ctx.group)
        return back, None, None, None


class _CopyToTP(torch.autograd.Function):  # forward identity, backward all-reduce
    @staticmethod
    def forward(ctx, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _ReduceFromTP(torch.autograd.Function):  # forward all-reduce, backward identity
    @staticmethod
    def forward(ctx, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        x = x.contiguous().clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def _gather(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=1)


def _own(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    n = dist.get_world_size(group)
    return x.chunk(n, dim=1)[dist.get_rank(group)].contiguous()


class _GatherSequence(torch.autograd.Function):
    """(b, s/tp, h) shards -> (b, s, h) on every tp rank; backward keeps this
    rank's slice of the (replicated) gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.group = group
        return _gather(x, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _own(grad, ctx.group), None


class _SplitSequence(torch.autograd.Function):
    """(b, s, h) replicated -> this rank's (b, s/tp, h); backward all-gathers."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.group = group
        return _own(x, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _gather(grad, ctx.group), None


def copy_to_tp(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    return _CopyToTP.apply(x, group)


def reduce_from_tp(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    return _ReduceFromTP.apply(x, group)


def gather_sequence(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    return _GatherSequence.apply(x, group)


def split_sequence(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    return _SplitSequence.apply(x, group)


def dispatch_compute_combine(x: torch.Tensor, counts: torch.Tensor, experts: nn.Module,
                             groups: ExpertGroups | None) -> torch.Tensor:
    """Outputs of the token-expert pairs `x` (rows sorted by expert, counts[e]
    rows for global expert e) through `experts` (this rank's local ones)."""
    if groups is None or groups.ep_group is None:
        return experts(x, counts.tolist(), groups)
    group, ranks = groups.ep_group, groups.ep
    local = counts.numel() // ranks
    recv = torch.empty_like(counts)
    dist.all_to_all_single(recv, counts, group=group)  # [source, my local expert]
    recv = recv.view(ranks, local)
    send, got = counts.view(ranks, local).sum(1).tolist(), recv.sum(1).tolist()
    pieces = recv.flatten().tolist()
    chunks = _AllToAll.apply(x, got, send, group).split(pieces)  # (source, expert) order
    by_expert = [s * local + e for e in range(local) for s in range(ranks)]
    y = experts(torch.cat([chunks[i] for i in by_expert]), recv.sum(0).tolist(), groups)
    back = dict(zip(by_expert, y.split([pieces[i] for i in by_expert]), strict=True))
    y = torch.cat([back[i] for i in range(ranks * local)])  # (source, expert) order
    return _AllToAll.apply(y, send, got, group)
