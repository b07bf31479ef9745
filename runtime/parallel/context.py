"""Context parallelism over the "cp" mesh dimension: ring or all-gather attention.

Each sequence of s tokens is cut into 2*cp equal chunks; cp rank k holds
chunks k and 2cp-1-k (`sandbox.layout.cp_chunks`: the causal load balance, an
early chunk with few keys before it paired with a late one, so every rank
does the same attention work). Everything but attention is per token and
runs on the local s/cp tokens unchanged; RoPE (and learned position
embeddings) use the chunks' true positions. Attention needs every earlier
key, obtained one of two ways (`parallel.cp_method`):

- "ring" (Liu et al. 2023, ring attention; Megatron-Core / TE's CP): cp-1
  steps; at step t a rank holds the K/V of cp rank (k - t) mod cp, computes
  its queries' attention against it block pair by block pair (q chunk i
  against kv chunk j: j == i causal, j < i full, j > i skipped) and passes
  K/V on to cp rank k+1 (`batch_isend_irecv`). The partial outputs are
  merged with their log-sum-exp (online softmax), so the result is the
  exact softmax over all visible keys. Backward: the shift is an
  autograd Function whose backward sends the K/V gradient the other way
  round the ring, so autograd runs the reverse ring and each rank ends up
  with dK/dV of its own chunks, summed over every rank's queries. Here the
  transfers are not overlapped with the block compute (a CPU reference).
- "allgather" (Llama 3's CP, Dubey et al. 2024, section 3.3.2): K/V of the
  whole sequence gathered over cp with the differentiable
  `torch.distributed.nn.functional.all_gather` (its backward reduces the
  gradients back to their owners), then the local queries attend to the
  causally visible keys with one masked SDPA.

`train.attention` is not consulted under cp (the ring's blocks are explicit
matmul-softmax-matmul, all-gather one masked SDPA). The loss of a cp rank is
the mean over its tokens; all cp ranks hold equal token counts, so averaging
the loss and the gradients over dp x cp (`runtime.parallel.mesh.grad_mesh`)
gives the single-process mean.

PyTorch's own `torch.distributed.tensor.experimental.context_parallel`
(torch 2.13) does not run on CPU: it dispatches only the CUDA SDPA kernels
(flash, efficient, cuDNN); on CPU with gloo SDPA lowers to
`aten._scaled_dot_product_flash_attention_for_cpu`, which fails with
"does not have a sharding strategy registered" (probe: two gloo processes,
one causal SDPA under `context_parallel(mesh, buffers=[x])`). Hence this file.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.nn.functional import all_gather

from runtime.model import rope_cos_sin
from sandbox.layout import cp_chunks

CP_METHODS = ("ring", "allgather")


class ContextParallel:
    """One rank's place in a cp group and its attention over the whole sequence."""

    def __init__(self, group: dist.ProcessGroup, seq_len: int, method: str = "ring"):
        if method not in CP_METHODS:
            raise ValueError(f"parallel.cp_method: {method!r}, expected one of {CP_METHODS}")
        self.group, self.method, self.seq_len = group, method, seq_len
        self.rank, self.size = dist.get_rank(group), dist.get_world_size(group)
        self.chunk = seq_len // (2 * self.size)  # tokens per chunk
        self.chunks = cp_chunks(self.size, self.rank)
        self.positions = torch.cat([self.span(c) for c in self.chunks])

    def span(self, chunk: int) -> torch.Tensor:
        """Token positions of chunk `chunk` of a sequence."""
        return torch.arange(chunk * self.chunk, (chunk + 1) * self.chunk)

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """(b, s) tokens or targets -> (b, s/cp): this rank's two chunks."""
        return batch[:, self.positions.to(batch.device)]

    def rope(self, head_dim: int, theta: float, device: torch.device
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE cos / sin tables (s/cp, head_dim/2) at this rank's positions."""
        cos, sin = rope_cos_sin(self.seq_len, head_dim, theta, device=device)
        pos = self.positions.to(device)
        return cos[pos], sin[pos]

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Causal attention of the local queries q (b, n, s/cp, d) over the whole
        sequence's keys; k, v (b, n_kv, s/cp, d) are the local ones (GQA:
        n_kv divides n; exchanged before the heads are repeated)."""
        if self.method == "allgather":
            return allgather_attention(q, k, v, self)
        return ring_attention(q, k, v, self)


def _repeat(x: torch.Tensor, n: int) -> torch.Tensor:
    return x if x.shape[1] == n else x.repeat_interleave(n // x.shape[1], dim=1)


def allgather_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        cp: ContextParallel) -> torch.Tensor:
    """K/V of all cp ranks gathered into sequence order, one masked SDPA."""
    parts = all_gather(torch.stack([k, v]).contiguous(), group=cp.group)
    ordered: list[torch.Tensor | None] = [None] * (2 * cp.size)
    for r, part in enumerate(parts):
        first, second = cp_chunks(cp.size, r)
        ordered[first], ordered[second] = part.chunk(2, dim=3)
    k_all, v_all = torch.cat(ordered, dim=3)
    keys = torch.arange(cp.seq_len, device=q.device)
    visible = cp.positions.to(q.device)[:, None] >= keys[None, :]  # True: attend
    n = q.shape[1]
    return F.scaled_dot_product_attention(q, _repeat(k_all, n), _repeat(v_all, n),
                                          attn_mask=visible)


def _exchange(x: torch.Tensor, cp: ContextParallel, hop: int) -> torch.Tensor:
    """Send x to cp rank (rank + hop) and receive the same shape from (rank - hop)."""
    peer = lambda r: dist.get_global_rank(cp.group, r % cp.size)  # noqa: E731
    out = torch.empty_like(x)
    ops = [dist.P2POp(dist.isend, x.contiguous(), peer(cp.rank + hop), cp.group),
           dist.P2POp(dist.irecv, out, peer(cp.rank - hop), cp.group)]
    for work in dist.batch_isend_irecv(ops):
        work.wait()
    return out


class _RingShift(torch.autograd.Function):
    """Forward: K/V one step round the ring; backward: their gradient one step back."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, cp: ContextParallel) -> torch.Tensor:
        ctx.cp = cp
        return _exchange(x, cp, +1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _exchange(grad, ctx.cp, -1), None


def block_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T / sqrt(d)) v of one block pair (causal: the diagonal
    block) and the rows' log-sum-exp (b, n, s_q, 1), in fp32."""
    scores = (q.float() @ k.float().transpose(-2, -1)) * q.shape[-1] ** -0.5
    if causal:
        future = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)
    return torch.exp(scores - lse) @ v.float(), lse


def merge(acc: tuple[torch.Tensor, torch.Tensor] | None, out: torch.Tensor,
          lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Online softmax: combine two partial attentions over disjoint key sets."""
    if acc is None:
        return out, lse
    total = torch.logaddexp(acc[1], lse)
    return acc[0] * torch.exp(acc[1] - total) + out * torch.exp(lse - total), total


def ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   cp: ContextParallel) -> torch.Tensor:
    """Causal ring attention with the 2*cp chunk load balance (module docstring)."""
    n = q.shape[1]
    q_parts = q.chunk(2, dim=2)  # this rank's chunks cp.chunks
    acc: list[tuple[torch.Tensor, torch.Tensor] | None] = [None, None]
    kv = torch.stack([k, v])
    for step in range(cp.size):
        if step:
            kv = _RingShift.apply(kv, cp)
        source = (cp.rank - step) % cp.size  # whose K/V this rank holds now
        k_parts, v_parts = (_repeat(t, n).chunk(2, dim=2) for t in kv)
        for i, q_chunk in enumerate(cp.chunks):
            for j, kv_chunk in enumerate(cp_chunks(cp.size, source)):
                if kv_chunk > q_chunk:  # keys after every query: masked out
                    continue
                out, lse = block_attention(q_parts[i], k_parts[j], v_parts[j],
                                           causal=kv_chunk == q_chunk)
                acc[i] = merge(acc[i], out, lse)
    return torch.cat([a[0] for a in acc], dim=2).type_as(q)


def _true_positions(cp: ContextParallel):
    def hook(_module: nn.Module, args: tuple) -> tuple:
        (index,) = args
        return (cp.positions.to(index.device)[index],)

    return hook


def apply_cp(model: nn.Module, cp: ContextParallel) -> None:
    """Make `model` (a GPT or a pipeline chunk) context parallel in place:
    every attention block exchanges K/V over cp, learned position embeddings
    look up the chunks' true positions. Before tensor parallelism (the
    position hook must run before TP's input hook)."""
    for block in model.layers.values():
        block.attention.context = cp
    if getattr(model, "pos_embeddings", None) is not None:
        model.pos_embeddings.register_forward_pre_hook(_true_positions(cp))
