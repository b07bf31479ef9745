"""Which tensors each recompute mode keeps, as pure functions (bytes, counts).

`parallel.recompute`:
- "selective": Megatron-LM's (Korthikanti et al. 2022): the attention core
  re-run in backward.
- "full": every block keeps only its input and re-runs its forward in backward.
- "op": torchtitan's per-op selective activation checkpointing
  (`apply_ac`, mode "selective", `selective_ac_option = "op"`): every block is
  checkpointed with a `create_selective_checkpoint_contexts` policy that saves
  the outputs of the ops in its `_op_sac_save_list` (`aten.mm`, the SDPA /
  flash kernels, `_c10d_functional.reduce_scatter_tensor`, `aten.max`) except
  every second `aten.mm` of a block (the policy counts them in forward order
  and recomputes the even-numbered ones); everything else (norms, RoPE, the
  SwiGLU / GeLU elementwise ops, the residual adds, the all-gathers and
  all-reduces, the other mm) is re-run in backward. In a Llama block the mm
  order is wq, wk, wv, wo, w1, w3, w2: wq, wv, w1 and w2 are kept (GeLU: wq,
  wv, fc1; fc2, the last, is not needed by backward and not re-run). FP8
  (torchao Float8Linear) keeps the same outputs: its autograd function
  (`manual_float8_matmul_with_args_in_float8` / `matmul_with_hp_or_float8_args`)
  calls `torch.mm` on Float8Tensor subclass arguments, and the SAC policy, a
  TorchDispatchMode, sees that `aten.mm.default` before the subclass's
  `__torch_dispatch__` lowers it to `aten._scaled_mm` (modes dispatch
  before subclasses); its bf16 output is what is saved. (The `aten.abs`
  outputs torchtitan's list also held from 2024-11-26 to 2025-02-06, #701 /
  #820, cost nothing with tensorwise scaling under torch.compile, which fuses
  abs into the amax reduction: #820's tensorwise runs peak the same.)
- "layer": torchtitan's `selective_ac_option = "2"`: every second block of a
  rank is fully checkpointed (`ptd_checkpoint_wrapper`), the others keep all.
"""

from __future__ import annotations

from sandbox.experts import routed_rows
from sandbox.sections import Model

CHECKPOINTING = ("full", "op", "layer")  # modes that re-run forward work in backward


def block_linears(m: Model) -> tuple[tuple[str, int, int, bool], ...]:
    """One block's linear layers in forward order: (name, out features, in
    features, row-parallel) of the unsharded weights (row-parallel: the
    tensor-parallel output projections, whose local outputs are partial sums)."""
    h, q, kv, f = m.hidden, m.q_dim, m.kv_dim, m.ffn_hidden
    attn = (("wq", q, h, False), ("wk", kv, h, False), ("wv", kv, h, False),
            ("wo", h, q, True))
    if m.activation == "swiglu":
        return attn + (("w1", f, h, False), ("w3", f, h, False), ("w2", h, f, True))
    return attn + (("fc1", f, h, False), ("fc2", h, f, True))


def mla_projections(m: Model) -> list[tuple[int, int]]:
    """(in, out) widths of MLA's linear layers: query down and up (or one
    full-rank query projection), the key-value down projection to the latent
    plus the shared RoPE key, its up projection to keys and values, output."""
    h, nope, v = m.hidden, m.head_dim, m.v_head_dim
    q = ([(h, m.q_lora_rank), (m.q_lora_rank, m.q_dim)] if m.q_lora_rank
         else [(h, m.q_dim)])
    return q + [(h, m.kv_lora_rank + m.qk_rope_head_dim),
                (m.kv_lora_rank, m.heads * (nope + v)), (m.heads * v, h)]


def block_mms(m: Model, moe: bool = False
              ) -> tuple[tuple[str, int, int, str, float], ...]:
    """One block's matmuls in forward order as (name, out, in, split, rows):
    split "col" (column-parallel: out / tp columns per rank), "row"
    (row-parallel: full-width partial sums) or "rep" (replicated over tp:
    MLA's down-projections); rows: token rows per token of the block (the
    routed copies, `sandbox.experts.routed_rows`, for the grouped expert
    GEMMs; 1 else). MLA's projections (`mla_projections`: wq_a, wq_b
    (or wq), wkv_a, wkv_b, wo) replace wq, wk, wv, wo; a MoE block's FFN is
    the routed experts' grouped w1, w3, w2, then the shared experts' w1, w3,
    w2 (torchtitan's `MoE.forward` order). The router's gate is left out:
    torchtitan's SelectiveAC forces it recomputed without counting it
    (`force_recompute_mm_shapes_by_fqns = ["moe.router.gate"]`). A dense,
    non-MLA block: `block_linears`."""
    if m.kind == "mla":
        proj = mla_projections(m)
        names = (("wq_a", "wq_b") if m.q_lora_rank else ("wq",)) + ("wkv_a", "wkv_b", "wo")
        split = (("rep", "col") if m.q_lora_rank else ("col",)) + ("rep", "col", "row")
        attn = tuple((n, o, i, sp, 1.0) for n, (i, o), sp in zip(names, proj, split, strict=True))
    else:
        attn = tuple((n, o, i, "row" if r else "col", 1.0) for n, o, i, r in block_linears(m)[:4])
    h, gated = m.hidden, m.activation == "swiglu"
    if not moe:
        ffn = tuple((n, o, i, "row" if r else "col", 1.0) for n, o, i, r in block_linears(m)[4:])
        return attn + ffn

    def mlp(prefix: str, f: int, rows: float) -> tuple[tuple[str, int, int, str, float], ...]:
        up = ((prefix + "w1", f, h, "col", rows), (prefix + "w3", f, h, "col", rows)) if gated \
            else ((prefix + "fc1", f, h, "col", rows),)
        return up + ((prefix + ("w2" if gated else "fc2"), h, f, "row", rows),)
    shared = mlp("shared.", m.shared_experts * m.expert_ffn_hidden, 1.0) if m.shared_experts \
        else ()
    return attn + mlp("experts.", m.expert_ffn_hidden, routed_rows(m)) + shared


def op_saved_mms(m: Model, moe: bool = False, precision: str = "bf16") -> tuple[str, ...]:
    """Names of the matmuls of `block_mms` whose outputs "op" keeps: the
    odd-numbered ones (1st, 3rd, ...), the grouped expert GEMMs counted in
    the same alternation (fp8 too: `op_saved_linears`)."""
    return tuple(x[0] for i, x in enumerate(block_mms(m, moe)) if i % 2 == 0)


def op_saved_linears(m: Model, precision: str = "bf16") -> tuple[str, ...]:
    """Names of the linears whose outputs the "op" policy keeps: the odd-numbered
    mm of the block (1st, 3rd, ...), with fp8 as with bf16 (module docstring)."""
    return tuple(name for i, (name, *_r) in enumerate(block_linears(m)) if i % 2 == 0)


def op_recomputed_linears(m: Model, precision: str = "bf16"
                          ) -> tuple[tuple[str, int, int, bool], ...]:
    """The linears the "op" policy re-runs in backward (see `op_saved_linears`):
    the not-kept ones but the block's last (its output only feeds the residual
    add, which saves nothing, and the non-reentrant checkpoint stops re-running
    the forward once backward has what it needs: `early_stop`)."""
    kept, lin = op_saved_linears(m, precision), block_linears(m)
    return tuple(x for x in lin[:-1] if x[0] not in kept)


def layer_checkpointed(blocks: int) -> int:
    """Blocks of a rank with `blocks` blocks that "layer" checkpoints fully:
    torchtitan's counter checkpoints the 2nd, 4th, ... block it wraps."""
    return blocks // 2


def layer_checkpointed_fraction(blocks: float) -> float:
    """Share of a rank's blocks fully checkpointed by "layer" (0 for none)."""
    n = int(blocks)
    return layer_checkpointed(n) / n if n > 0 else 0.0


def op_saved_bytes_per_layer(m: Model, micro_batch: int, tp: int = 1,
                             sequence_parallel: bool = False,
                             precision: str = "bf16") -> float:
    """Bytes one block keeps under "op", per microbatch, per GPU (flash attention).

    Per token (w = 2 bytes, 4 with fp32): the block's input (h w, split over
    tp with SP); each kept linear's output: a column-parallel one its out/tp
    columns, a row-parallel one its full-width partial sums (h w on every
    tensor-parallel rank); the flash / SDPA kernel's output O (q_dim/tp w) and
    fp32 logsumexp (4 bytes per local head); with SP the two reduce-scatter
    outputs (h/tp w each; without SP the all-reduces are re-run instead).
    """
    tokens = m.seq_len * micro_batch
    w = 4 if precision == "fp32" else 2
    sp = sequence_parallel and tp > 1
    x = tokens * m.hidden * w / (tp if sp else 1)
    kept = set(op_saved_linears(m, precision))
    lin = sum(tokens * w * (out if row else out / tp)
              for name, out, _k, row in block_linears(m) if name in kept)
    sdpa = tokens * (w * m.q_dim + 4 * m.heads) / tp
    rs = 2 * tokens * m.hidden * w / tp if sp else 0.0
    return x + lin + sdpa + rs


def op_recompute_flops_per_token(m: Model, precision: str = "bf16") -> float:
    """Forward FLOPs per token and block that "op" re-runs: its recomputed linears."""
    return sum(2.0 * out * k for _n, out, k, _r in op_recomputed_linears(m, precision))


def forward_rerun_share(recompute: str, blocks: float) -> float:
    """Share of a rank's blocks (`blocks` of them) whose whole forward backward
    re-runs: 1 with "full", `layer_checkpointed_fraction` with "layer", else 0."""
    if recompute == "full":
        return 1.0
    return layer_checkpointed_fraction(blocks) if recompute == "layer" else 0.0


def attention_rerun_share(recompute: str, blocks: float) -> float:
    """Share of the blocks whose attention core backward re-runs (its ring too
    under context parallelism): "selective" and the fully re-run blocks."""
    return 1.0 if recompute == "selective" else forward_rerun_share(recompute, blocks)
