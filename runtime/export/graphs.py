"""Export a `runtime.model.GPT` to ONNX with `torch.onnx.export(..., dynamo=True)`.

Two graphs per model, both fp32 (quantization happens afterwards in
onnxruntime, see `runtime.export.quantize`):

- the *full* graph: ``input_ids`` int64 (batch, seq) -> ``logits`` float32
  (batch, seq, vocab), batch and seq dynamic (seq up to the context length);
- the *decoder* graph for incremental decoding: ``input_ids`` (batch, seq)
  plus ``past_key_i`` / ``past_value_i`` float32 (batch, kv_heads, past,
  head_dim) for every layer -> ``logits`` and ``present_key_i`` /
  ``present_value_i`` (batch, kv_heads, past + seq, head_dim). A prompt is
  run with past length 0, then one token at a time. With multi-head latent
  attention the cache is MLA's compressed one: ``key`` holds the normalised
  latent (batch, 1, past, kv_lora_rank), ``value`` the rotated RoPE key
  (batch, 1, past, qk_rope_head_dim).

`CachedGPT` reuses the GPT's own submodules (embeddings, norms, projections,
MLPs, RoPE helpers); only the attention core is rewritten to take a cache and
an explicit causal mask whose query positions start at the past length. Head
counts are read from the projection widths, so pruned models (fewer heads or
MLP channels than their spec says) export as they are.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
import torch.nn.functional as F
from torch import nn

from runtime.layers.mla import LatentAttention, rope_at
from runtime.model import GPT, Attention, apply_rope, rope_cos_sin

OPSET = 18  # ONNX default opset of torch.onnx's dynamo exporter in torch 2.x
TRACE_BATCH = 2  # trace with batch and lengths >= 2 so no dim is specialised
TRACE_SEQ = 3
TRACE_PAST = 4


@dataclass(frozen=True)
class GraphInfo:
    """What an exported graph is: file, opset, names and symbolic shapes."""

    path: str
    opset: int
    inputs: dict[str, list[str | int]]
    outputs: dict[str, list[str | int]]

    def to_dict(self) -> dict:
        return {"path": self.path, "opset": self.opset, "inputs": self.inputs,
                "outputs": self.outputs}


def _ffn_width(ff: nn.Module) -> int:
    """An FFN's width (a MoE block's: its experts' width, `runtime.layers.moe`)."""
    if hasattr(ff, "experts"):
        return (ff.experts.w1 if ff.experts.gated else ff.experts.fc1).shape[-1]
    return (ff.w1 if ff.gated else ff.fc1).out_features


def shape_of(model: GPT) -> dict[str, int]:
    """The real shape of a (possibly pruned) model, read from its weights."""
    block = model.layers["0"]
    att: Attention = block.attention
    hidden_ff = _ffn_width(block.feed_forward)
    if isinstance(att, LatentAttention):
        return _mla_shape(model, hidden_ff)
    return {
        "layers": len(model.layers),
        "hidden": model.spec.hidden,
        "heads": att.wq.out_features // att.head_dim,
        "kv_heads": att.wk.out_features // att.head_dim,
        "head_dim": att.head_dim,
        "ffn_hidden": hidden_ff,
        "vocab": model.spec.vocab,
        "seq_len": model.spec.seq_len,
        "heads_per_layer": [b.attention.wq.out_features // att.head_dim
                            for b in model.layers.values()],
        "ffn_per_layer": [_ffn_width(b.feed_forward) for b in model.layers.values()],
    }


def _mla_shape(model: GPT, hidden_ff: int) -> dict:
    """`shape_of` for multi-head latent attention: its heads and ranks."""
    att: LatentAttention = model.layers["0"].attention
    heads = att.wkv_b.out_features // (att.nope + att.v_dim)
    s = model.spec
    return {"layers": len(model.layers), "hidden": s.hidden, "attention": "mla",
            "heads": heads, "kv_heads": heads, "head_dim": att.nope,
            "q_lora_rank": att.q_rank, "kv_lora_rank": att.kv_rank,
            "qk_rope_head_dim": att.rope_dim, "v_head_dim": att.v_dim,
            "ffn_hidden": hidden_ff, "vocab": s.vocab, "seq_len": s.seq_len}


def _repeat_kv(x: torch.Tensor, rep: int) -> torch.Tensor:
    """(b, kv, t, d) -> (b, kv*rep, t, d), each kv head repeated rep times in place."""
    if rep == 1:
        return x
    b, kv, t, d = x.shape
    return x[:, :, None].expand(b, kv, rep, t, d).reshape(b, kv * rep, t, d)


def attend_cached(att: Attention, x: torch.Tensor, past_k: torch.Tensor,
                  past_v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Attention of new tokens x (b, s, h) over past (b, kv, p, d) plus themselves.

    Returns (output (b, s, h), present_k, present_v) with RoPE applied at
    positions p..p+s-1 and a causal mask offset by p.
    """
    q, k, v = att.heads(att.wq(x)), att.heads(att.wk(x)), att.heads(att.wv(x))
    past = past_k.shape[2]
    s = q.shape[2]
    if att.rope_theta:
        cos, sin = rope_cos_sin(s, att.head_dim, att.rope_theta, offset=past, device=x.device)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    k = torch.cat([past_k, k], dim=2)
    v = torch.cat([past_v, v], dim=2)
    total = k.shape[2]
    qpos = torch.arange(s, device=x.device)[:, None] + past
    kpos = torch.arange(total, device=x.device)[None, :]
    mask = kpos <= qpos  # (s, total): True where attention is allowed
    rep = q.shape[1] // k.shape[1]
    y = F.scaled_dot_product_attention(q, _repeat_kv(k, rep), _repeat_kv(v, rep), attn_mask=mask)
    b = y.shape[0]
    return att.wo(y.transpose(1, 2).reshape(b, s, -1)), k, v


def attend_cached_latent(att: LatentAttention, x: torch.Tensor, past_c: torch.Tensor,
                         past_kr: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """MLA's `attend_cached`: the cache holds the normalised latent (b, 1, p,
    kv_lora_rank) and the rotated RoPE key (b, 1, p, qk_rope_head_dim), the
    compressed KV cache of DeepSeek-V2; keys and values are up-projected from
    the whole latent at every step."""
    past = past_c.shape[2]
    s = x.shape[1]
    q = att.queries(x)
    c, k_r = att.latent(x)
    c = torch.cat([past_c, c], dim=2)
    k_r = torch.cat([past_kr, rope_at(k_r, att.rope_theta, offset=past)], dim=2)
    k_nope, v = att.keys_values(c)
    qpos = torch.arange(s, device=x.device)[:, None] + past
    mask = torch.arange(c.shape[2], device=x.device)[None, :] <= qpos
    y = att.scores_values(q, k_nope, k_r, v, offset=past, mask=mask)
    return att.output(y), c, k_r


class CachedGPT(nn.Module):
    """A GPT's forward with a key/value cache, built on the GPT's submodules.

    forward(input_ids, past_key_0, past_value_0, ...) ->
    (logits, present_key_0, present_value_0, ...).
    """

    def __init__(self, model: GPT):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        m = self.model
        past_len = past[0].shape[2]
        h = m.tok_embeddings(input_ids)
        if m.pos_embeddings is not None:
            pos = torch.arange(input_ids.shape[1], device=input_ids.device) + past_len
            h = h + m.pos_embeddings(pos)
        presents: list[torch.Tensor] = []
        for i, layer in enumerate(m.layers.values()):
            attend = attend_cached_latent if isinstance(layer.attention, LatentAttention) \
                else attend_cached
            a, k, v = attend(layer.attention, layer.attention_norm(h), past[2 * i],
                             past[2 * i + 1])
            h = h + a
            h = h + layer.feed_forward(layer.ffn_norm(h))
            presents += [k, v]
        return (m.output(m.norm(h)), *presents)


def empty_past(model: GPT, batch: int, length: int = 0) -> list[torch.Tensor]:
    """Zero caches (b, kv_heads, length, head_dim) for every layer, k then v
    (MLA: latent (b, 1, length, kv_lora_rank) then RoPE key (b, 1, length,
    qk_rope_head_dim))."""
    out = []
    for layer in model.layers.values():
        att = layer.attention
        if isinstance(att, LatentAttention):
            out += [torch.zeros(batch, 1, length, d) for d in (att.kv_rank, att.rope_dim)]
            continue
        kv = att.wk.out_features // att.head_dim
        out += [torch.zeros(batch, kv, length, att.head_dim) for _ in range(2)]
    return out


def _past_names(n_layers: int, prefix: str) -> list[str]:
    return [f"{prefix}_{kind}_{i}" for i in range(n_layers) for kind in ("key", "value")]


def _save(program, path: Path) -> None:
    """Save without the exporter's per-node debug metadata (stack traces, FX
    names: about 1 KB per node, which a deployed file does not need)."""
    program.save(str(path), external_data=False)
    model = onnx.load(str(path))
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    onnx.save(model, str(path))


def _check(path: Path) -> None:
    """ONNX checker (full, with shape inference) and strict shape inference."""
    onnx.checker.check_model(str(path), full_check=True)  # includes shape inference
    onnx.shape_inference.infer_shapes_path(str(path), str(path), check_type=True,
                                           strict_mode=True)


def export_full(model: GPT, path: str | Path) -> GraphInfo:
    """Write the token ids -> logits graph to `path` and check it."""
    model = model.eval()
    path = Path(path)
    batch = torch.export.Dim("batch", min=1, max=4096)
    seq = torch.export.Dim("seq", min=1, max=model.spec.seq_len)
    ids = torch.randint(0, model.spec.vocab, (TRACE_BATCH, TRACE_SEQ + TRACE_PAST))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model, (ids,), dynamo=True, opset_version=OPSET, input_names=["input_ids"],
            output_names=["logits"], dynamic_shapes={"x": {0: batch, 1: seq}},
            verbose=False, optimize=True)
    _save(program, path)
    _check(path)
    return GraphInfo(str(path), OPSET, {"input_ids": ["batch", "seq"]},
                     {"logits": ["batch", "seq", model.spec.vocab]})


def export_decoder(model: GPT, path: str | Path) -> GraphInfo:
    """Write the incremental-decoding graph (with past key/values) to `path`."""
    model = model.eval()
    path = Path(path)
    n = len(model.layers)
    wrapper = CachedGPT(model).eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    seq = torch.export.Dim("seq", min=1, max=model.spec.seq_len)
    past = torch.export.Dim("past", min=0, max=model.spec.seq_len)
    ids = torch.randint(0, model.spec.vocab, (TRACE_BATCH, TRACE_SEQ))
    pasts = [torch.randn(p.shape[0], p.shape[1], TRACE_PAST, p.shape[3])
             for p in empty_past(model, TRACE_BATCH)]
    dyn = {"input_ids": {0: batch, 1: seq},
           "past": tuple({0: batch, 2: past} for _ in range(2 * n))}
    in_names = ["input_ids", *_past_names(n, "past")]
    out_names = ["logits", *_past_names(n, "present")]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapper, (ids, *pasts), dynamo=True, opset_version=OPSET, input_names=in_names,
            output_names=out_names, dynamic_shapes=dyn, verbose=False, optimize=True)
    _save(program, path)
    _check(path)
    mla = isinstance(model.layers["0"].attention, LatentAttention)
    dims = ["kv_lora_rank", "qk_rope_head_dim"] if mla else ["head_dim", "head_dim"]
    heads = 1 if mla else "kv_heads"
    cache_in = {name: ["batch", heads, "past", dims[i % 2]]
                for i, name in enumerate(in_names[1:])}
    cache_out = {name: ["batch", heads, "past + seq", dims[i % 2]]
                 for i, name in enumerate(out_names[1:])}
    return GraphInfo(str(path), OPSET, {"input_ids": ["batch", "seq"], **cache_in},
                     {"logits": ["batch", "seq", model.spec.vocab], **cache_out})
