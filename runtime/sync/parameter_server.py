"""A sharded parameter server on torch.distributed collectives (no sockets).

`parallel.dp_mode = "parameter-server"`: the model's parameters are split
into n shards, one per data-parallel rank, by `assign_shards` (whole tensors,
largest first onto the least loaded server). Every rank is a worker and the
server of one shard (the co-located layout of BytePS / ps-lite), so no GPU
sits idle as a pure server. Per step:

1. workers compute gradients of their local batch (no DDP);
2. push: for each shard, `dist.reduce` of the flattened gradients to its
   server, which divides by n (the mean gradient);
3. the server clips (global norm: squared norms of the shards summed over
   the dp group) and applies the optimizer to its shard only, so optimizer
   states exist once, on the server (workers hold no grads for other shards);
4. pull: for each shard, `dist.broadcast` of the updated parameters from
   its server to the workers (on a second process group).

Same gradient, same clipping, same AdamW as all-reduce DDP: the two train
the same model up to float rounding (tests/test_sync_variants.py).

`parallel.dp_mode = "async"` is `AsyncParameterServer`: asynchronous SGD with
staleness bound 1. The push of step t's gradients is issued without waiting
and travels while step t+1 computes; at step t+1 the servers apply the mean
gradient of step t, so every update uses a gradient computed on parameters
one version old (delayed SGD; the stale-synchronous parallel model of Ho et
al. 2013 with s = 1). The first step after a start has no gradient to apply.
At a checkpoint and at the end the in-flight gradient is waited for and
dropped, so a checkpoint holds the whole state and a resumed run repeats the
same updates. Unlike an asynchronous server over RPC, workers still meet in
the collectives every step: a slow worker still delays the others; what is
asynchronous is the gradient's arrival, overlapped with the next step.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from runtime.sync.traffic import Traffic


def assign_shards(sizes: list[int], n: int) -> list[int]:
    """The server (0..n-1) of each tensor: largest first onto the least
    loaded server, ties to the lowest index (deterministic on every rank)."""
    load, owner = [0] * n, [0] * len(sizes)
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        s = min(range(n), key=lambda s: (load[s], s))
        owner[i] = s
        load[s] += sizes[i]
    return owner


def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _unflat(flat: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    return [c.view_as(t) for c, t in zip(flat.split([t.numel() for t in like]), like,
                                         strict=True)]


class ParameterServer:
    """Push/pull of a sharded parameter server over the dp group.

    push_group: process group of the gradient reduces; pull_group: of the
    parameter broadcasts (a separate group, so that a pull never queues
    behind an in-flight push). Ranks are group ranks.
    """

    norm_over_dp = True  # each rank holds the gradients of its shard only

    def __init__(self, model: nn.Module, push_group: dist.ProcessGroup,
                 pull_group: dist.ProcessGroup, traffic: Traffic):
        self.params = list(dict.fromkeys(model.parameters()))  # a tied weight once
        self.push_group, self.pull_group, self.traffic = push_group, pull_group, traffic
        self.n, self.me = push_group.size(), push_group.rank()
        owner = assign_shards([p.numel() for p in self.params], self.n)
        self.shards = [[p for p, o in zip(self.params, owner, strict=True) if o == s]
                       for s in range(self.n)]

    def _push(self) -> tuple[list, list[torch.Tensor]]:
        """Issue the reduce of every shard's local gradients to its server."""
        works, flats = [], []
        for s, shard in enumerate(self.shards):
            flat = _flat([p.grad if p.grad is not None else torch.zeros_like(p) for p in shard])
            works.append(dist.reduce(flat, group_dst=s, group=self.push_group, async_op=True))
            self.traffic.record("reduce", flat.numel() * flat.element_size())
            flats.append(flat)
        return works, flats

    def _install(self, pushed: tuple[list, list[torch.Tensor]]) -> None:
        """Wait for a push; the server's shard gets the mean gradient, the
        other parameters none."""
        works, flats = pushed
        for w in works:
            w.wait()
        for p in self.params:
            p.grad = None
        mine = self.shards[self.me]
        for p, g in zip(mine, _unflat(flats[self.me].div_(self.n), mine), strict=True):
            p.grad = g

    def after_backward(self) -> None:
        """Push the gradients and wait for them (synchronous server)."""
        self._install(self._push())

    @torch.no_grad()
    def _pull(self) -> None:
        works, flats = [], []
        for s, shard in enumerate(self.shards):
            flat = _flat([p.detach() for p in shard])
            works.append(dist.broadcast(flat, group_src=s, group=self.pull_group,
                                        async_op=True))
            self.traffic.record("broadcast", flat.numel() * flat.element_size())
            flats.append(flat)
        for w in works:
            w.wait()
        for s, shard in enumerate(self.shards):
            if s != self.me:
                for p, v in zip(shard, _unflat(flats[s], shard), strict=True):
                    p.copy_(v)

    def after_optimizer_step(self, step: int, sync: bool = False) -> None:
        """Pull the updated shards from their servers (every step)."""
        self._pull()


class AsyncParameterServer(ParameterServer):
    """The parameter server with staleness 1: step t applies step t-1's gradient."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._pending: tuple[list, list[torch.Tensor]] | None = None

    def after_backward(self) -> None:
        """Issue this step's push without waiting; install the previous one."""
        previous, self._pending = self._pending, self._push()
        if previous is None:  # nothing to apply in the first step
            for p in self.params:
                p.grad = None
            return
        self._install(previous)

    def after_optimizer_step(self, step: int, sync: bool = False) -> None:
        """Pull; at a checkpoint or the end (`sync`), also wait for the
        in-flight push and drop it."""
        self._pull()
        if sync and self._pending is not None:
            for w in self._pending[0]:
                w.wait()
            self._pending = None
