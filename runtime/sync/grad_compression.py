"""Gradient compression for plain data parallelism: DDP communication hooks.

`parallel.grad_compression` -> the hook registered on the DDP module (ZeRO 0,
tp = pp = 1), each one the PyTorch building block where PyTorch has it:

- none: `default_hooks.allreduce_hook` (what DDP does without a hook; it is
  registered so that the bytes are counted the same way as for the others).
- fp16 / bf16: `default_hooks.fp16_compress_hook` / `bf16_compress_hook`:
  the bucket is cast to 16 bits, divided by n, all-reduced, cast back.
- int8: `int8_hook` below: each rank quantises (bucket + its residual)
  symmetrically to int8 with one fp32 scale per block of `INT8_BLOCK`
  entries (max |x| / 127; the bucketing of QSGD, Alistarh et al. 2017),
  all-gathers the int8 blocks and the scales, dequantises and averages;
  the rounding error stays in its residual (error feedback). One scale per
  25 MB DDP bucket was tried first: a few large entries then round most
  others to zero, and gpt-mini ended 19% above all-reduce. PyTorch's
  `quantization_hooks.quantization_pertensor_hook` does the same without
  error feedback, but fails on torch 2.13 ("invalid index of a 0-dim tensor"
  in `quantize_and_allgather`), so it is not used.
- powersgd:R: `powerSGD_hook` with `PowerSGDState` (Vogels et al. 2019):
  rank-R factors P, Q of every gradient matrix are all-reduced, with error
  feedback and warm start; vectors and matrices that rank R would not shrink
  by `POWERSGD_MIN_COMPRESSION_RATE` are all-reduced uncompressed. PyTorch
  runs plain all-reduce for the first `POWERSGD_START_ITER` steps (DDP
  rebuilds its buckets after the first one; 2 is the least it accepts).
  PowerSGD issues its P and Q all-reduces from future callbacks; with
  several buckets in flight gloo then sees the collectives of different
  buckets in a different order on each rank ("Received data size doesn't
  match expected size", torch 2.13). On gloo the hook therefore waits for
  each bucket before returning (no overlap with backward; CPU runs only).
- topk:F: `topk_hook` below (PyTorch has no sparsifying hook): each rank keeps
  the ceil(F * numel) largest-magnitude entries of (bucket + its residual),
  all-gathers values (fp32) and indices (int32), scatter-adds them and
  divides by n; what it did not send stays in its residual (error feedback,
  Stich et al. 2018; Lin et al. 2018).
  Both all-gather hooks run plain all-reduce in the first step, as PowerSGD
  does, because DDP renumbers its buckets after it (residuals are per bucket).

Every hook is wrapped to record what it hands to torch.distributed in a
`runtime.sync.traffic.Traffic`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as psgd
from torch.nn.parallel import DistributedDataParallel as DDP

from runtime.sync.traffic import Traffic

POWERSGD_START_ITER = 2  # plain all-reduce before this step (PyTorch's minimum)
POWERSGD_MIN_COMPRESSION_RATE = 2.0  # PyTorch's default
INT8_BLOCK = 1024  # entries per int8 scale (0.4% of extra bytes)
GATHER_START_ITER = 1  # int8/top-k: plain all-reduce in step 1 (DDP rebuilds buckets)
FP32_BYTES, INDEX_BYTES = 4, 4


@dataclass
class GatherState:
    """State of `int8_hook` / `topk_hook`: the group, the fraction of entries
    top-k keeps, the steps seen, each bucket's residual (error feedback)."""

    process_group: dist.ProcessGroup
    fraction: float = 1.0
    iter: int = 0
    residuals: dict[int, torch.Tensor] = field(default_factory=dict)

    def start(self, bucket) -> torch.Tensor | None:
        """Count the step; None while still all-reducing plain buckets, else
        the bucket plus its residual (a new tensor)."""
        warm = self.iter < GATHER_START_ITER
        if bucket.is_last():
            self.iter += 1
        if warm:
            return None
        buf, residual = bucket.buffer(), self.residuals.get(bucket.index())
        if residual is None or residual.shape != buf.shape:
            return buf.clone()
        return buf + residual


def _gather(group: dist.ProcessGroup, parts: list[torch.Tensor], decode) -> torch.futures.Future:
    """All-gather each tensor of `parts` (async); then `decode(gathered)` where
    gathered[i] is the list of every rank's parts[i]."""
    n = group.size()
    gathered = [[torch.empty_like(t) for _ in range(n)] for t in parts]
    futs = [dist.all_gather(out, t, group=group, async_op=True).get_future()
            for out, t in zip(gathered, parts, strict=True)]
    return torch.futures.collect_all(futs).then(lambda _: decode(gathered))


def int8_hook(state, bucket):
    """Mean of the ranks' blockwise int8-quantised buckets (all-gather), error
    feedback."""
    group, buf = state.process_group, bucket.buffer()
    x = state.start(bucket)
    if x is None:
        return default_hooks.allreduce_hook(group, bucket)
    numel = x.numel()
    blocks = torch.nn.functional.pad(x, (0, -numel % INT8_BLOCK)).view(-1, INT8_BLOCK)
    scale = (blocks.abs().amax(dim=1, keepdim=True) / 127.0).clamp_min(torch.finfo(x.dtype).tiny)
    q = torch.round(blocks / scale).clamp_(-127, 127).to(torch.int8)
    state.residuals[bucket.index()] = x - (q.to(x.dtype) * scale).view(-1)[:numel]

    def decode(gathered):
        qs, scales = gathered
        total = sum(qi.to(buf.dtype) * si for qi, si in zip(qs, scales, strict=True))
        return buf.copy_(total.view(-1)[:numel].div_(len(qs)))

    return _gather(group, [q, scale], decode)


def topk_hook(state, bucket):
    """Mean of the ranks' top-k sparsified buckets (all-gather), error feedback."""
    group, buf = state.process_group, bucket.buffer()
    x = state.start(bucket)
    if x is None:
        return default_hooks.allreduce_hook(group, bucket)
    k = max(1, math.ceil(state.fraction * x.numel()))
    idx = x.abs().topk(k, sorted=False).indices
    values = x[idx]
    x[idx] = 0.0
    state.residuals[bucket.index()] = x  # what this rank did not send this time

    def decode(gathered):
        all_values, all_idx = gathered
        dense = torch.zeros_like(buf)
        dense.index_add_(0, torch.cat(all_idx).long(), torch.cat(all_values))
        return buf.copy_(dense.div_(len(all_values)))

    return _gather(group, [values, idx.to(torch.int32)], decode)


def _serialised(hook):
    """The hook, finishing each bucket's collectives before it returns."""

    def serialised(state, bucket):
        fut = hook(state, bucket)
        fut.wait()
        return fut

    return serialised


def _counted(hook, traffic: Traffic, payload):
    """Wrap a comm hook so that `payload(state, bucket)` -> [(op, bytes)] is
    recorded for every bucket (called before the hook changes its state)."""

    def counted(state, bucket):
        before = payload(state, bucket)
        fut = hook(state, bucket)
        for op, nbytes in before() if callable(before) else before:
            traffic.record(op, nbytes)
        return fut

    return counted


def _dense(elem_bytes: int):
    return lambda state, bucket: [("all_reduce", bucket.buffer().numel() * elem_bytes)]


def _int8(state, bucket):
    numel = bucket.buffer().numel()
    if state.iter < GATHER_START_ITER:
        return [("all_reduce", numel * FP32_BYTES)]
    blocks = -(-numel // INT8_BLOCK)
    return [("all_gather", blocks * INT8_BLOCK), ("all_gather", blocks * FP32_BYTES)]


def _topk(state, bucket):
    numel = bucket.buffer().numel()
    if state.iter < GATHER_START_ITER:
        return [("all_reduce", numel * FP32_BYTES)]
    k = max(1, math.ceil(state.fraction * numel))
    return [("all_gather", k * FP32_BYTES), ("all_gather", k * INDEX_BYTES)]


def _powersgd(state, bucket):
    """PowerSGD counts the elements it all-reduces in its state while the
    hook runs; read the difference afterwards (plain all-reduce before it starts)."""
    start = state.total_numel_after_compression
    numel = bucket.buffer().numel()

    def after():
        sent = state.total_numel_after_compression - start
        return [("all_reduce", (sent if sent > 0 else numel) * FP32_BYTES)]

    return after


def register_compression(ddp: DDP, compression: tuple[str, float], group: dist.ProcessGroup,
                         traffic: Traffic, seed: int = 0) -> object:
    """Register the hook for `compression` (`Parallel.compression` of a
    validated plan) on `ddp`, averaging over `group`; returns the hook's state."""
    kind, arg = compression
    if kind == "powersgd":
        state = psgd.PowerSGDState(process_group=group, matrix_approximation_rank=int(arg),
                                   start_powerSGD_iter=POWERSGD_START_ITER,
                                   min_compression_rate=POWERSGD_MIN_COMPRESSION_RATE,
                                   use_error_feedback=True, warm_start=True, random_seed=seed)
        hook, payload = psgd.powerSGD_hook, _powersgd
        if dist.get_backend(group) == "gloo":
            hook = _serialised(hook)
    elif kind == "topk":
        state, hook, payload = GatherState(group, fraction=arg), topk_hook, _topk
    elif kind == "int8":
        state, hook, payload = GatherState(group), int8_hook, _int8
    elif kind in ("fp16", "bf16"):
        state = group
        hook = (default_hooks.fp16_compress_hook if kind == "fp16"
                else default_hooks.bf16_compress_hook)
        payload = _dense(2)
    else:
        state, hook, payload = group, default_hooks.allreduce_hook, _dense(FP32_BYTES)
    ddp.register_comm_hook(state, _counted(hook, traffic, payload))
    return state
