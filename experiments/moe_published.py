"""Published MoE training throughput on H100 that is not in ../shared/.

Each row: the plan its source states (assumptions where it is silent, in the
row's notes), the measured figure and the citation. Predicted by
`experiments.validate_moe` as its second table; nothing is fitted to them.
"""

from __future__ import annotations

from typing import Any

# Published MoE training on H100 that is not in ../shared/ (never fitted): each
# row's plan from its source, the measured figure and its citation.
MEGATRON_MOE = ("NVIDIA/Megatron-LM megatron/core/transformer/moe/README.md (commit "
                "022bcb5a): intro 'With MCore v0.9, we've achieved ... 468 TFLOPS for "
                "Mixtral 8X7B bf16 training'; 'Reference Best Parallel Mapping' table row "
                "Mixtral 8x7B(Dropless), 32K vocab, All-to-All, BF16, 64 GPUs, seq 4096, TP 1, "
                "EP 8, PP 4, VP 8, MBS 1, GBS 256; server 8xH100 80GB, NVLink 4, 8x400 Gbit/s IB")
EXTERNAL = [{
    "model": "Mixtral 8x7B (Megatron-Core v0.9)", "gpus": 64, "source": MEGATRON_MOE,
    "measured_tflops_per_gpu": 468.0,
    "notes": ["the README ties 468 TFLOP/s to v0.9 and the mapping table to v0.8: the same "
              "mapping assumed",
              "example script's flags: distributed optimizer (zero 1), --overlap-grad-reduce, "
              "--overlap-param-gather, grouped GEMM, permute fusion; no recompute flag",
              "learned router with aux loss after warm-up: uniform routing, router_skew 0"],
    "plan": {"model": {"preset": "mixtral-8x7b", "seq_len": 4096},
             "cluster": {"preset": "dgx-h100", "nodes": 8},
             "parallel": {"dp": 16, "tp": 1, "pp": 4, "vpp": 8, "schedule": "interleaved-1f1b",
                          "ep": 8, "micro_batch": 1, "global_batch": 256, "zero": 1,
                          "overlap_param_gather": True, "recompute": "none",
                          "ep_dispatch": "all-to-all"},
             "train": {"precision": "bf16", "attention": "flash"}}}]


def predict_external(e: dict) -> dict[str, Any]:
    """One published row not in shared/: its plan simulated, TFLOP/s error
    (and tokens/s where the source gives it)."""
    import sandbox
    from sim import simulate

    plan = sandbox.load(e["plan"])
    res = simulate(plan, timeline=False)
    row = {k: v for k, v in e.items() if k != "plan"}
    row.update(plan=e["plan"]["parallel"], predicted_tflops_per_gpu=res.tflops_per_gpu,
               predicted_tokens_per_s_per_gpu=res.tokens_per_s / plan.world_size,
               predicted_step_time_s=res.step_time_s, breakdown_s=res.breakdown_s,
               error_tflops=res.tflops_per_gpu / e["measured_tflops_per_gpu"] - 1)
    if "measured_tokens_per_s_per_gpu" in e:
        row["error_tokens"] = (row["predicted_tokens_per_s_per_gpu"]
                               / e["measured_tokens_per_s_per_gpu"] - 1)
    return row
