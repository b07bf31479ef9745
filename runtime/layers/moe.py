"""The mixture-of-experts feed-forward of a MoE block (`sandbox.experts`).

    router: nn.Linear(hidden, experts); scores = softmax over all experts
    (fp32), the top `experts_per_token` kept and renormalised over the k
    (Mixtral / Qwen3); routed experts as grouped weights, one parameter per
    matrix of shape [experts, ...] (SwiGLU w1, w3: [E, hidden, width], w2:
    [E, width, hidden]; GELU fc1, fc2; biases `*_bias` when spec.bias);
    `shared_experts` FFNs of the expert width that every token visits.

Routing is dropless (every token-expert pair computed) unless
`capacity_factor` > 0: then each expert keeps the first
ceil(capacity_factor * tokens * k / experts) of its pairs in token order
(tokens of one forward call, i.e. one micro-batch, gathered over tp under
sequence parallelism) and drops the rest deterministically, the same in
every layout.

Load balance: DeepSeek-V3's sequence-wise balance loss, layout-independent
because it never mixes sequences: per sequence f_i = E / (k T) * (tokens
routed to expert i) and P_i = mean over its T tokens of expert i's score,
loss = router_aux_loss * sum_i f_i P_i, averaged over the sequences. Its
gradient enters through `AuxLossScaler` (Megatron's MoEAuxLossAutoScaler):
forward returns the block output unchanged, backward adds
`aux_grad_scale` x d(aux)/d(.) (the training loop sets the scale to the LM
loss's: loss scale / micro-batches), so it works under pipelining and
recompute too. The forward's aux values are kept in `aux_values` for logging.

Expert and tensor parallelism (`runtime.parallel.expert.apply_ep`) set
`groups`; without it (one process, or plain data parallelism) every expert
runs locally.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor

from runtime.layers.feed_forward import FeedForward
from runtime.parallel.expert_dispatch import (
    ExpertGroups,
    copy_to_tp,
    dispatch_compute_combine,
    gather_sequence,
    reduce_from_tp,
    split_sequence,
)
from sandbox.specs import Model


class AuxLossScaler(torch.autograd.Function):
    """Identity on `output`; backward also sends `scale` to the aux loss."""

    @staticmethod
    def forward(ctx, output: torch.Tensor, aux: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        ctx.aux_shape = aux.shape
        return output.view_as(output)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, torch.full(ctx.aux_shape, ctx.scale, device=grad.device), None


def sequence_balance_loss(probs: torch.Tensor, topk: torch.Tensor, experts: int) -> torch.Tensor:
    """DeepSeek-V3's sequence-wise balance loss (without its coefficient).

    probs: (b, s, E) router scores; topk: (b, s, k) chosen experts. Returns
    the mean over the b sequences of sum_i f_i P_i (1 under perfect balance)."""
    b, s, k = topk.shape
    chosen = torch.zeros(b, experts, device=probs.device, dtype=probs.dtype)
    chosen.scatter_add_(1, topk.reshape(b, -1), torch.ones(b, s * k, device=probs.device,
                                                           dtype=probs.dtype))
    f = chosen * (experts / (k * s))
    p = probs.mean(dim=1)
    return (f * p).sum(-1).mean()


def _local(p: torch.Tensor) -> torch.Tensor:
    return p.to_local() if isinstance(p, DTensor) else p


class GroupedExperts(nn.Module):
    """`n` FFNs of width `width` as stacked [n, ...] weights."""

    def __init__(self, spec: Model, n: int, width: int):
        super().__init__()
        self.gated = spec.activation == "swiglu"
        h, bias = spec.hidden, spec.bias
        up = ("w1", "w3") if self.gated else ("fc1",)
        down = "w2" if self.gated else "fc2"
        self.up, self.down = up, down
        for name in up:
            setattr(self, name, nn.Parameter(torch.empty(n, h, width)))
        setattr(self, down, nn.Parameter(torch.empty(n, width, h)))
        if bias:
            for name in up:
                setattr(self, f"{name}_bias", nn.Parameter(torch.empty(n, width)))
            setattr(self, f"{down}_bias", nn.Parameter(torch.empty(n, h)))
        self.bias = bias

    def forward(self, x: torch.Tensor, counts: list[int],
                groups: ExpertGroups | None = None) -> torch.Tensor:
        """x: (sum(counts), hidden) rows grouped by local expert, counts[e]
        rows for expert e. Under tp the width is split: partial outputs are
        all-reduced over tp before the output bias."""
        w = {n: _local(getattr(self, n)) for n in (*self.up, self.down)}
        b = {n: _local(getattr(self, f"{n}_bias")) for n in (*self.up, self.down)} if self.bias \
            else {}
        outs = []
        for e, xe in enumerate(x.split(counts)):
            proj = [xe @ w[n][e] + (b[n][e] if b else 0) for n in self.up]
            act = F.silu(proj[0]) * proj[1] if self.gated else F.gelu(proj[0], approximate="tanh")
            outs.append(act @ w[self.down][e])
        y = torch.cat(outs) if outs else x.new_zeros(0, x.shape[-1])
        if groups is not None and groups.tp_group is not None:
            y = reduce_from_tp(y, groups.tp_group)
        if b:
            y = y + torch.repeat_interleave(b[self.down], torch.tensor(counts, device=y.device),
                                            dim=0)
        return y


class MoE(nn.Module):
    """Router, routed experts (grouped), shared experts; (b, s, h) -> (b, s, h)."""

    def __init__(self, spec: Model):
        super().__init__()
        self.n_experts, self.top_k = spec.experts, spec.experts_per_token
        self.capacity_factor, self.aux_coef = spec.capacity_factor, spec.router_aux_loss
        self.router = nn.Linear(spec.hidden, spec.experts, bias=spec.bias)
        self.experts = GroupedExperts(spec, spec.experts, spec.expert_ffn_hidden)
        self.shared = nn.ModuleList(FeedForward(spec, spec.expert_ffn_hidden)
                                    for _ in range(spec.shared_experts))
        self.groups: ExpertGroups | None = None  # set by runtime.parallel.expert.apply_ep
        self.aux_grad_scale = 1.0  # d(objective)/d(aux) of one forward (the loop sets it)
        self.aux_values: list[torch.Tensor] = []  # aux losses of the training forwards, for logging
        self.dense_routing = False  # `route_dense` (export tracing uses it always)

    def capacity(self, tokens: int) -> int | None:
        """Most pairs one expert keeps from `tokens` tokens (None: dropless)."""
        if self.capacity_factor <= 0:
            return None
        return math.ceil(self.capacity_factor * tokens * self.top_k / self.n_experts)

    def route(self, x: torch.Tensor, gates: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Weighted sum over each token's kept experts; x: (T, h), gates and idx (T, k)."""
        T, k = idx.shape
        flat = idx.reshape(-1)
        order = torch.argsort(flat, stable=True)  # pairs by expert, in token order
        counts = torch.bincount(flat, minlength=self.n_experts)
        cap = self.capacity(T)
        if cap is not None:
            starts = torch.cumsum(counts, 0) - counts
            position = torch.arange(T * k, device=x.device) - starts[flat[order]]
            order = order[position < cap]
            counts = counts.clamp(max=cap)
        token = order // k
        g = self.groups
        src = copy_to_tp(x, g.tp_group) if g is not None and g.tp_group is not None else x
        y = dispatch_compute_combine(src[token], counts, self.experts, g)
        weights = gates.reshape(-1)[order].unsqueeze(-1).to(y.dtype)
        return torch.zeros_like(x).index_add(0, token, (y * weights).to(x.dtype))

    def route_dense(self, x: torch.Tensor, gates: torch.Tensor, idx: torch.Tensor
                    ) -> torch.Tensor:
        """`route` for export (static shapes, ONNX TopK / CumSum): every expert
        on every token, weighted by the sparse top-k gates (0 elsewhere, and
        for pairs past the capacity: the cumulative count in token order).
        The same function as `route` on one process."""
        weights = torch.zeros(x.shape[0], self.n_experts, dtype=gates.dtype,
                              device=x.device).scatter(1, idx, gates)
        if self.capacity_factor > 0:
            chosen = (weights > 0).to(torch.int64)
            cap = torch.ceil(torch.tensor(self.capacity_factor * self.top_k / self.n_experts)
                             * x.shape[0])
            weights = weights * (torch.cumsum(chosen, 0) <= cap).to(weights.dtype)
        e = self.experts
        ups = [torch.einsum("th,ehf->etf", x, getattr(e, n))
               + (getattr(e, f"{n}_bias").unsqueeze(1) if e.bias else 0) for n in e.up]
        act = F.silu(ups[0]) * ups[1] if e.gated else F.gelu(ups[0], approximate="tanh")
        y = torch.einsum("etf,efh->eth", act, getattr(e, e.down))
        if e.bias:
            y = y + getattr(e, f"{e.down}_bias").unsqueeze(1)
        return torch.einsum("te,eth->th", weights.to(y.dtype), y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.groups
        if isinstance(x, DTensor):  # the sequence-parallel norm's Shard(1) output
            x = x.to_local()
        sp = g is not None and g.tp_group is not None and g.sequence_parallel
        if sp:
            x = gather_sequence(x, g.tp_group)
        b, s, h = x.shape
        flat = x.reshape(-1, h)
        probs = torch.softmax(self.router(flat).float(), dim=-1)
        top, idx = probs.topk(self.top_k, dim=-1)
        gates = top / top.sum(-1, keepdim=True)
        dense = torch.compiler.is_exporting() or self.dense_routing
        out = (self.route_dense if dense else self.route)(flat, gates, idx)
        for ffn in self.shared:
            out = out + ffn(flat)
        out = out.view(b, s, h)
        if sp:
            out = split_sequence(out, g.tp_group)
        if self.aux_coef > 0 and torch.is_grad_enabled():
            aux = self.aux_coef * sequence_balance_loss(probs.view(b, s, -1),
                                                        idx.view(b, s, -1), self.n_experts)
            if torch._C._current_graph_task_id() == -1:  # not a recompute in backward
                self.aux_values.append(aux.detach())
            out = AuxLossScaler.apply(out, aux, self.aux_grad_scale)
        return out


def moe_modules(parts: list[nn.Module]) -> list[MoE]:
    """Every MoE feed-forward in `parts` (model chunks, possibly wrapped)."""
    return [m for part in parts for m in part.modules() if isinstance(m, MoE)]
