"""The public H100 (and torchtitan's H200 / A100) runs as plans, one `Case` per row.

Sources (`../shared/validation/`, README there, plus one paper table):
- `h100_megatron_weak_scaling.csv`: Megatron-Core r0.8.0, GPT 1.7B-462B, TFLOP/s per GPU.
- `torchtitan_benchmarks.csv`: torchtitan (FSDP2 / TP / PP / CP / Float8), tokens/s per GPU
  and peak memory (GiB).
- `h100_automodel.csv`: NeMo AutoModel; pretraining rows (MoE ones as
  `experiments.validate_moe` builds them; LoRA fine-tuning freezes the base weights, which
  no plan expresses).
- Llama 3 (Dubey et al. 2024, Table 4): Llama 3 405B on 8,192 / 16,384 H100s, BF16 MFU.

Each row names the flash-attention kernel its stack ran (`train.attention_kernel`,
`sandbox.attention_kernels`; `KERNEL_EVIDENCE` says why per source).

Each row's plan is written from what its source states; where it is silent
(micro-batch, recompute, interleaving depth) `Case.variants` lists the
choices and the validation takes the simulator's fastest plan that fits, as
the benchmark's authors tuned theirs. Every assumption is in `Case.notes`.
A row a plan cannot express gets `Case.reason` instead of variants.
"""

from __future__ import annotations

import csv
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experiments import provenance

VALIDATION = provenance.ROOT.parent / "shared" / "validation"
GIB = 2**30
# recompute tried where a source does not say: Megatron-Core's kinds (selective =
# its core-attention recompute), and PyTorch-native stacks' (op = per-op SAC)
MEGATRON_RECOMPUTE = ("none", "selective", "full")
TORCH_RECOMPUTE = ("none", "op", "full")


# The flash kernel of each source's stack, and the evidence.
KERNEL_EVIDENCE = {
    "megatron": ("cudnn", "Megatron-Core runs attention in Transformer Engine's "
                 "DotProductAttention; on H100 TE selects its FusedAttention (cuDNN) backend "
                 "ahead of flash-attn (TE user guide, attention backends)"),
    "torchtitan": ("fa2", "torchtitan calls F.scaled_dot_product_attention; PyTorch SDPA's "
                   "flash backend is FlashAttention-2 (torchtitan models/llama/model.py, "
                   "PyTorch SDPA docs)"),
    "automodel": ("cudnn", "NeMo AutoModel runs Transformer Engine attention (its H100 "
                  "benchmark page: FSDP2 + TE), TE's cuDNN backend on H100"),
    "llama3": ("fa2", "kernel not stated by Dubey et al. 2024; assumed FlashAttention-2, the "
               "open flash kernel of its training period (2023 - early 2024) in PyTorch SDPA; "
               "FlashAttention-3 (Shah et al., July 2024) appeared after Llama 3's "
               "pretraining, and Meta's stack is not Transformer Engine - an assumption"),
}


def kernel_of(source: str) -> str:
    """`train.attention_kernel` of a source (a KERNEL_EVIDENCE key)."""
    return KERNEL_EVIDENCE[source][0]


def kernel_note(source: str) -> str:
    """The short row note (the evidence is `KERNEL_EVIDENCE`)."""
    k, why = KERNEL_EVIDENCE[source]
    return f"attention kernel {k}" + (" (assumed: not stated)" if "assumption" in why else "")


@dataclass
class Case:
    """One published row: its plans (alternatives the source leaves open) and truth."""

    source: str
    name: str
    metric: str  # "tflops_per_gpu" | "tokens_per_s_per_gpu" | "mfu"
    measured: float
    memory_gib: float | None = None  # published peak memory, GiB (torchtitan)
    variants: list[dict] = field(default_factory=list)  # plan dicts for sandbox.load
    notes: list[str] = field(default_factory=list)
    reason: str = ""  # why no plan expresses the row ("" = expressible)
    gpus: int = 0


def _read(name: str, data: Path) -> list[dict[str, str]]:
    with open(data / name) as f:
        return list(csv.DictReader(f))


def _plan(model: dict, cluster: dict, parallel: dict, train: dict) -> dict:
    return {"model": model, "cluster": {**provenance.AS_PUBLISHED, **cluster}, "parallel": parallel,
            "train": train}


def _nodes(gpus: int, per_node: int = 8) -> dict:
    return {"nodes": max(1, gpus // per_node), "gpus_per_node": min(per_node, gpus)}


def vpp_choices(layers: int, pp: int, most: int = 4) -> list[int]:
    """Interleaving depths to try: 1, and 2..`most` that leave every chunk >= 2 blocks."""
    if pp == 1:
        return [1]
    return [v for v in range(1, most + 1) if v == 1 or layers // (pp * v) >= 2]


def llama3_vpp_choices(layers: int, pp: int) -> list[int]:
    """Llama 3's interleaving depths to try: 2, 4, 8 where every chunk has a
    block except the first and the last, which may hold the embedding / the
    head alone (126 layers on 16 x 8 chunks: Dubey et al.'s one layer fewer
    on the first and last stage)."""
    return [v for v in (2, 4, 8) if layers >= pp * v - 2]


# ------------------------------------------------------------- Megatron-Core
def megatron_cases(data: Path = VALIDATION, cluster: str = "dgx-h100",
                   profile: str = "") -> list[Case]:
    """Megatron-Core's weak-scaling table: GPT (GeLU MLP of 4h, LayerNorm, learned
    positions, tied embeddings: Megatron's GPT defaults), BF16, flash attention
    (Transformer Engine), distributed optimizer (ZeRO 1) with overlapped gradient
    reduce-scatter and parameter all-gather, TP communication pipelined with
    the GEMMs (--tp-comm-overlap), sequence parallelism, TE's fused elementwise
    kernels (priced as `compile`). Micro-batch, recompute and interleaving are not stated: tried."""
    out = []
    for r in _read("h100_megatron_weak_scaling.csv", data):
        gpus, tp, pp, dp = int(r["num_gpus"]), int(r["tp"]), int(r["pp"]), int(r["dp"])
        layers, gb = int(r["layers"]), int(r["global_batch"])
        model = {"layers": layers, "hidden": int(r["hidden"]), "heads": int(r["heads"]),
                 "vocab": int(r["vocab"]), "seq_len": int(r["seq_len"]),
                 "ffn_hidden": 4 * int(r["hidden"]), "activation": "gelu",
                 "norm": "layernorm", "position": "learned", "bias": True,
                 "tied_embeddings": True}
        cl = {"preset": cluster, **_nodes(gpus)}
        if profile:
            cl["profile"] = profile
        case = Case("Megatron-Core H100 weak scaling", r["model"], "tflops_per_gpu",
                    float(r["tflops_per_gpu"]), gpus=gpus,
                    notes=["micro-batch, recompute, interleaving: best of the tried ones",
                           "FFN 4h, GeLU, LayerNorm assumed (not stated)",
                           kernel_note("megatron")])
        per_replica = gb // dp
        for mb, rec, v in itertools.product((1, 2, 4), MEGATRON_RECOMPUTE,
                                            vpp_choices(layers, pp)):
            if per_replica % mb:
                continue
            if v > 1 and (per_replica // mb) % pp:
                continue  # Megatron's interleaving needs micro-batches % pp == 0
            par = {"dp": dp, "tp": tp, "pp": pp, "vpp": v, "micro_batch": mb,
                   "global_batch": gb, "schedule": "interleaved-1f1b" if v > 1 else "1f1b",
                   "zero": 1, "sequence_parallel": tp > 1, "tp_comm_overlap": tp > 1,
                   "recompute": rec, "overlap_param_gather": True}
            # Transformer Engine fuses the elementwise chains (norm into the GEMM,
            # bias-GeLU, bias-dropout-add) as torch.compile does: `compile` prices that
            case.variants.append(_plan(model, cl, par, {
                "precision": "bf16", "attention": "flash", "compile": True,
                "attention_kernel": kernel_of("megatron")}))
        out.append(case)
    return out


# ---------------------------------------------------------------- torchtitan
_TT_MODELS = {"Llama 3.1 8B": "llama3-8b", "Llama 3 8B": "llama3-8b",
              "Llama 3.1 70B": "llama3-70b", "Llama 3 70B": "llama3-70b",
              "Llama 3.1 405B": "llama3-405b", "Llama 2 13B": "llama2-13b",
              "Llama 2 70B": "llama2-70b"}
_TT_CLUSTERS = {"H100": "grand-teton-h100", "H200": "dgx-h200", "A100": "dgx-a100-80g"}
_RECOMPUTE = {"none": "none", "full": "full"}


def torchtitan_recompute(ac: str) -> str:
    """torchtitan's activation_checkpointing column -> `parallel.recompute`:
    "selective" with option "op" (its configs' default; "selective op",
    "selective (per-op SAC)", "selective (op) ...") -> "op"; "selective layer"
    (option "2") -> "layer"."""
    words = ac.lower().replace("(", " ").replace(")", " ").split()
    if not words or words[0] != "selective":
        return _RECOMPUTE.get(words[0] if words else "", "none")
    return "layer" if "layer" in words else "op"


def torchtitan_case(r: dict[str, str], profile: str = "") -> Case:
    """One torchtitan benchmark row: FSDP2 (ZeRO 3) over `fsdp` ranks, TP with
    sequence parallelism, PP, CP; the row's `local_batch` sequences per
    data-parallel rank, split under PP into pp micro-batches (torchtitan at
    the benchmark's commit 9dec370: `experimental.pipeline_parallel_microbatches`
    defaults to the pp degree, parallelisms/pipelining_utils.py), with the
    interleaved schedule 2 stages per rank (`generate_split_points`); torch.compile and
    Float8 as the techniques column says. FSDP reshards after forward except
    with PP (torchtitan's default policy)."""
    gpus = int(r["num_gpus"])
    fsdp, tp, pp, cp = (int(r[k] or 1) for k in ("fsdp", "tp", "pp", "cp"))
    local = int(r["local_batch"])
    tech, prec = r["techniques"], r["precision"]
    name = (f"{r['model']} {gpus}x{r['gpu']} {tech} {prec}; seq {r['seq_len'] or '-'}, "
            f"cp {cp}, AC {r['activation_checkpointing'].split(' per ')[0]}"
            + (f", {r['schedule']}" if r["schedule"] else ""))
    case = Case("torchtitan", name,
                "tokens_per_s_per_gpu", float(r["tps_per_gpu"]), gpus=gpus,
                memory_gib=float(r["memory_gib"]) if r["memory_gib"] else None)
    model: dict[str, Any] = {"preset": _TT_MODELS[r["model"]]}
    if r["seq_len"]:
        model["seq_len"] = int(r["seq_len"])
    else:
        model["seq_len"] = 8192
        case.notes.append("seq_len not stated: 8,192 (torchtitan's Llama 3 configs)")
    rec = torchtitan_recompute(r["activation_checkpointing"])
    if rec in ("op", "layer"):
        case.notes.append(f"'{r['activation_checkpointing']}' -> simulator '{rec}'")
    cl = {"preset": _TT_CLUSTERS[r["gpu"]], **_nodes(gpus)}
    if profile and r["gpu"] != "A100":
        cl["profile"] = profile
    sched = "1f1b"
    vpp = 1
    if "Interleaved" in (r["schedule"] or ""):
        sched, vpp = "interleaved-1f1b", 2
        case.notes.append("interleaved 1F1B: 2 stages per rank (torchtitan 9dec370)")
    mb = local // pp if pp > 1 else local
    if pp > 1:
        case.notes.append(f"{pp} micro-batches of {mb} (torchtitan 9dec370's default: pp)")
    par = {"dp": fsdp, "tp": tp, "pp": pp, "cp": cp, "vpp": vpp, "micro_batch": mb,
           "global_batch": local * fsdp, "schedule": sched, "zero": 3,
           "reshard_after_forward": pp == 1, "sequence_parallel": tp > 1,
           "tp_comm_overlap": "async" in tech.lower() and tp > 1, "recompute": rec}
    train: dict[str, Any] = {"precision": "bf16", "attention": "flash",
                             "compile": "compile" in tech,
                             "attention_kernel": kernel_of("torchtitan")}
    if train["compile"] and "2025" in r["source_file"]:
        # torchtitan compiles its loss with the model since 2025 (components/loss.py,
        # build_cross_entropy_loss); the 2024-12 benchmark's train.py did not
        train["compile_loss"] = True
        case.notes.append("2025 torchtitan: loss compiled with the model")
    if prec.startswith("FP8"):
        train["precision"] = "fp8"
        train["fp8_recipe"] = "rowwise" if "rowwise" in prec else "tensorwise"
        train["fp8_all_gather"] = "float8 all-gather" in tech
    if fsdp * tp * pp * cp != gpus:
        case.reason = f"fsdp x tp x pp x cp = {fsdp * tp * pp * cp} != {gpus} GPUs"
        return case
    case.variants.append(_plan(model, cl, par, train))
    return case


def torchtitan_cases(data: Path = VALIDATION, profile: str = "") -> list[Case]:
    return [torchtitan_case(r, profile) for r in _read("torchtitan_benchmarks.csv", data)]


# ----------------------------------------------------------------- AutoModel
_AM_DENSE = {"Llama3 70B": "llama3-70b", "Llama3 8B": "llama3-8b"}


def automodel_cases(data: Path = VALIDATION, profile: str = "") -> list[Case]:
    """NeMo AutoModel (FSDP2, TE, BF16) rows: dense pretraining here; the MoE
    pretraining rows as `experiments.validate_moe` writes them (its
    assumptions in their notes; the hybrid Mamba ones not expressible);
    LoRA rows are not pretraining."""
    from experiments import validate_moe

    out = []
    for r in _read("h100_automodel.csv", data):
        gpus = int(r["num_gpus"])
        case = Case("NeMo AutoModel", f"{r['model']} ({r['workload']}, {gpus} GPUs)",
                    "tokens_per_s_per_gpu", float(r["tokens_per_sec_per_gpu"]), gpus=gpus)
        if r["workload"] == "lora":
            case.reason = "LoRA fine-tuning (frozen base weights) is not a plan"
        elif r["model"] not in _AM_DENSE or r["ep"]:
            case.variants, notes, case.reason = validate_moe.row_plans(r)
            case.notes += ["mixture of experts: the plan of `experiments.validate_moe`"] + notes
        else:
            fsdp, tp, pp, cp = (int(r[k] or 1) for k in ("fsdp", "tp", "pp", "cp"))
            cl = {"preset": "dgx-h100", **_nodes(gpus)}
            if profile:
                cl["profile"] = profile
            par = {"dp": fsdp, "tp": tp, "pp": pp, "cp": cp,
                   "micro_batch": int(r["micro_batch"]),
                   "global_batch": int(r["global_batch"]), "zero": 3,
                   "sequence_parallel": tp > 1, "recompute": "none"}
            case.notes += ["recompute not stated: best of none / op / full",
                           kernel_note("automodel")]
            for rec in TORCH_RECOMPUTE:
                case.variants.append(_plan(
                    {"preset": _AM_DENSE[r["model"]], "seq_len": int(r["seq_len"])}, cl,
                    {**par, "recompute": rec},
                    {"precision": "bf16", "attention": "flash",
                     "attention_kernel": kernel_of("automodel")}))
        out.append(case)
    return out


# ------------------------------------------------------------ Llama 3 Table 4
# Dubey et al. 2024, "The Llama 3 Herd of Models", Table 4: Llama 3 405B, BF16,
# (GPUs, TP, CP, PP, DP, seq_len, batch size per DP, TFLOP/s per GPU, BF16 MFU).
LLAMA3_TABLE4 = [
    (8192, 8, 1, 16, 64, 8192, 32, 430, 0.43),
    (16384, 8, 1, 16, 128, 8192, 16, 400, 0.41),
    (16384, 8, 16, 16, 8, 131072, 16, 380, 0.38),
]


def llama3_cases(profile: str = "") -> list[Case]:
    """Llama 3 405B pre-training layouts (Table 4): 126 layers over 16 stages
    with one block fewer on the first and the last (section 3.3.2, the
    layout's automatic split), micro-batch 1, interleaved 1F1B ("an
    interleaved schedule with V pipeline stages on one pipeline rank"; V
    tried: 2, 4, 8), FSDP sharding optimizer states and gradients (ZeRO 2).

    Section 3.3.2 also states the two choices the plans take from it: no
    activation checkpointing ("we could pre-train Llama 3 on sequences of 8K
    tokens without activation checkpointing"; the cp16 row keeps a GPU at
    s / cp = 8K tokens of activations, so the same is assumed there), and
    all-gather context parallelism (K and V gathered, local queries attend
    to them: `cp_method = "allgather"`). Where the simulator's memory model
    puts the stated plan above 80 GB the row says DOES NOT FIT: the paper ran
    it, so the miss is the memory model's and the row is still predicted."""
    out = []
    for gpus, tp, cp, pp, dp, seq, per_dp, tflops, mfu in LLAMA3_TABLE4:
        case = Case("Llama 3 (Dubey 2024) Table 4", f"405B {gpus} GPUs cp{cp} seq {seq}",
                    "mfu", mfu, gpus=gpus,
                    notes=[f"published {tflops} TFLOP/s per GPU",
                           "interleaving depth: best of the tried ones",
                           "no activation checkpointing (section 3.3.2"
                           + ("; stated for 8K, assumed at s / cp = 8K)" if cp > 1 else ")"),
                           kernel_note("llama3")]
                    + (["all-gather CP (section 3.3.2)"] if cp > 1 else []))
        cl = {"preset": "dgx-h100", **_nodes(gpus)}
        if profile:
            cl["profile"] = profile
        for v in llama3_vpp_choices(126, pp):
            par = {"dp": dp, "tp": tp, "pp": pp, "cp": cp, "vpp": v, "micro_batch": 1,
                   "global_batch": per_dp * dp, "schedule": "interleaved-1f1b", "zero": 2,
                   "sequence_parallel": True, "tp_comm_overlap": True, "recompute": "none"}
            if cp > 1:
                par["cp_method"] = "allgather"
            case.variants.append(_plan({"preset": "llama3-405b", "seq_len": seq}, cl, par,
                                       {"precision": "bf16", "attention": "flash",
                                        "attention_kernel": kernel_of("llama3")}))
        out.append(case)
    return out


def all_cases(data: Path = VALIDATION, profile: str = "") -> list[Case]:
    return (megatron_cases(data, profile=profile) + torchtitan_cases(data, profile)
            + automodel_cases(data, profile) + llama3_cases(profile))
