"""Structured pruning: remove whole attention heads and MLP channels.

Importance is measured on calibration batches with forward hooks:

- a query head's score is the mean L2 norm of its contribution to the
  attention output, ``||y_h @ W_o[:, h]^T||`` per token (y_h is the head's
  attention result);
- an MLP channel's score is ``mean |a_j| * ||W_down[:, j]||`` (a_j its
  activation, after the gate for SwiGLU).

The same number of heads and channels is removed from every layer (each
layer keeps its own best ones), so the pruned model has one shape that a
spec can state: heads, kv_heads, head_dim (unchanged) and ffn_hidden. With
grouped-query attention, heads are removed consistently: the same number of
query heads from every KV group when ``fraction * heads_per_group`` rounds to
at least one, else whole KV groups (their key/value heads and all their query
heads). The Linear layers are replaced by smaller ones: the parameters, the
FLOPs and the exported file really shrink (no masks).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from runtime.model import GPT, Attention, FeedForward


@dataclass
class PruneResult:
    """What pruning did: the new per-layer shape and parameter counts."""

    fraction: float
    heads_before: int
    heads_after: int
    kv_heads_before: int
    kv_heads_after: int
    ffn_before: int
    ffn_after: int
    params_before: int
    params_after: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _round(x: float) -> int:
    return int(x + 0.5)


def _shrink(lin: nn.Linear, out_idx: torch.Tensor | None = None,
            in_idx: torch.Tensor | None = None) -> nn.Linear:
    """A new Linear keeping rows `out_idx` and columns `in_idx` of `lin`."""
    w = lin.weight.detach()
    if out_idx is not None:
        w = w.index_select(0, out_idx)
    if in_idx is not None:
        w = w.index_select(1, in_idx)
    new = nn.Linear(w.shape[1], w.shape[0], bias=lin.bias is not None)
    with torch.no_grad():
        new.weight.copy_(w)
        if lin.bias is not None:
            b = lin.bias.detach()
            new.bias.copy_(b.index_select(0, out_idx) if out_idx is not None else b)
    return new


@torch.no_grad()
def importance(model: GPT, batches: Iterable[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
    """Per-layer scores: {"heads": [(heads,) ...], "ffn": [(ffn_hidden,) ...]}."""
    layers = list(model.layers.values())
    heads = [torch.zeros(b.attention.wq.out_features // b.attention.head_dim) for b in layers]
    ffn = [torch.zeros((b.feed_forward.w2 if b.feed_forward.gated else b.feed_forward.fc2)
                       .in_features) for b in layers]
    hooks = []

    def head_hook(i: int, att: Attention):
        def hook(_mod, args):
            y = args[0]  # (b, s, heads*d)
            b, s, _ = y.shape
            y = y.view(b, s, -1, att.head_dim)
            wo = att.wo.weight.view(att.wo.out_features, -1, att.head_dim)  # (h_out, H, d)
            contrib = torch.einsum("bshd,ohd->bsho", y, wo)
            heads[i].add_(contrib.norm(dim=-1).mean(dim=(0, 1)))
        return hook

    def ffn_hook(i: int, down: nn.Linear):
        def hook(_mod, args):
            a = args[0]
            ffn[i].add_(a.abs().mean(dim=(0, 1)) * down.weight.norm(dim=0))
        return hook

    for i, blk in enumerate(layers):
        att, ff = blk.attention, blk.feed_forward
        down = ff.w2 if ff.gated else ff.fc2
        hooks.append(att.wo.register_forward_pre_hook(head_hook(i, att)))
        hooks.append(down.register_forward_pre_hook(ffn_hook(i, down)))
    model.eval()
    try:
        for batch in batches:
            model(batch)
    finally:
        for h in hooks:
            h.remove()
    return {"heads": heads, "ffn": ffn}


def _keep_heads(score: torch.Tensor, kv_heads: int, fraction: float) -> tuple[list[int], int]:
    """Indices of query heads to keep (sorted) and the new number of KV groups."""
    n = score.numel()
    rep = n // kv_heads
    per_group = _round(fraction * rep) if rep > 1 else 0
    if per_group >= 1:
        per_group = min(per_group, rep - 1)
        keep = []
        for g in range(kv_heads):
            s = score[g * rep:(g + 1) * rep]
            top = torch.topk(s, rep - per_group).indices.sort().values + g * rep
            keep += top.tolist()
        return keep, kv_heads
    drop_groups = min(_round(fraction * kv_heads), kv_heads - 1)
    group_score = score.view(kv_heads, rep).sum(dim=1)
    groups = torch.topk(group_score, kv_heads - drop_groups).indices.sort().values.tolist()
    return [g * rep + j for g in groups for j in range(rep)], len(groups)


def _prune_attention(att: Attention, keep_q: list[int], kv_heads: int, new_kv: int) -> None:
    d = att.head_dim
    rep = (att.wq.out_features // d) // kv_heads
    q_rows = torch.tensor([h * d + j for h in keep_q for j in range(d)])
    att.wq = _shrink(att.wq, out_idx=q_rows)
    att.wo = _shrink(att.wo, in_idx=q_rows)
    if new_kv != kv_heads:
        groups = sorted({h // rep for h in keep_q})
        kv_rows = torch.tensor([g * d + j for g in groups for j in range(d)])
        att.wk = _shrink(att.wk, out_idx=kv_rows)
        att.wv = _shrink(att.wv, out_idx=kv_rows)


def _prune_ffn(ff: FeedForward, keep: torch.Tensor) -> None:
    if ff.gated:
        ff.w1, ff.w3 = _shrink(ff.w1, out_idx=keep), _shrink(ff.w3, out_idx=keep)
        ff.w2 = _shrink(ff.w2, in_idx=keep)
    else:
        ff.fc1 = _shrink(ff.fc1, out_idx=keep)
        ff.fc2 = _shrink(ff.fc2, in_idx=keep)


def n_params(model: nn.Module) -> int:
    """Distinct parameters (a tied head counts once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


@torch.no_grad()
def prune(model: GPT, fraction: float, batches: Iterable[torch.Tensor]) -> tuple[GPT, PruneResult]:
    """A pruned copy of `model` (the original is untouched) and what changed.

    `fraction` (0..1) of the heads and of the MLP channels are removed in
    every layer, the least important first, rounded half up per layer.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"prune fraction must be in [0, 1), got {fraction}")
    scores = importance(model, batches)
    student = copy.deepcopy(model).eval()
    blk0 = student.layers["0"].attention
    heads = blk0.wq.out_features // blk0.head_dim
    kv = blk0.wk.out_features // blk0.head_dim
    ff0 = student.layers["0"].feed_forward
    ffn = (ff0.w1 if ff0.gated else ff0.fc1).out_features
    ffn_keep = ffn - min(_round(fraction * ffn), ffn - 1)
    new_heads, new_kv = heads, kv
    for i, blk in enumerate(student.layers.values()):
        keep_q, new_kv = _keep_heads(scores["heads"][i], kv, fraction)
        new_heads = len(keep_q)
        if new_heads != heads:
            _prune_attention(blk.attention, keep_q, kv, new_kv)
        keep_f = torch.topk(scores["ffn"][i], ffn_keep).indices.sort().values
        if ffn_keep != ffn:
            _prune_ffn(blk.feed_forward, keep_f)
    result = PruneResult(fraction, heads, new_heads, kv, new_kv, ffn, ffn_keep,
                         n_params(model), n_params(student))
    return student, result
