"""Named models, GPUs and clusters. Every figure is a public spec; the source
is in the comment beside it. Values are plain dicts of spec fields so that a
plan file can name a preset and override single fields.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache

# --------------------------------------------------------------------- models
_GPT = {"activation": "gelu", "norm": "layernorm", "position": "learned",
        "bias": True, "tied_embeddings": True}
_LLAMA3 = {"activation": "swiglu", "norm": "rmsnorm", "position": "rope",
           "bias": False, "tied_embeddings": False, "rope_theta": 500000.0,
           "norm_eps": 1e-5, "vocab": 128256, "seq_len": 8192}
_LLAMA2 = {**_LLAMA3, "rope_theta": 10000.0, "vocab": 32000, "seq_len": 4096}

MODELS: dict[str, dict] = {
    # Test-sized models with the byte-level vocabulary of the builtin corpus.
    "tiny": {**_GPT, "layers": 4, "hidden": 64, "heads": 4, "vocab": 256, "seq_len": 64},
    "gpt-mini": {**_GPT, "layers": 6, "hidden": 384, "heads": 6, "vocab": 256,
                 "seq_len": 256},  # ~10.8M parameters, trains on CPU in minutes
    "tiny-llama": {**_LLAMA3, "layers": 4, "hidden": 64, "heads": 4, "kv_heads": 2,
                   "ffn_hidden": 192, "vocab": 256, "seq_len": 64, "rope_theta": 10000.0},
    # GPT-2: Radford et al. 2019, Table 2, and the released configs (n_ctx 1024, V 50257).
    "gpt2-124m": {**_GPT, "layers": 12, "hidden": 768, "heads": 12, "vocab": 50257,
                  "seq_len": 1024},
    "gpt2-350m": {**_GPT, "layers": 24, "hidden": 1024, "heads": 16, "vocab": 50257,
                  "seq_len": 1024},
    # GPT-3: Brown et al. 2020, Table 2.1 (1.3B with 16 heads of 128 as in
    # Megatron-LM's examples); V = 51,200 padded vocabulary, Narayanan et al. 2021.
    "gpt3-1.3b": {**_GPT, "layers": 24, "hidden": 2048, "heads": 16, "vocab": 51200,
                  "seq_len": 2048},
    "gpt3-175b": {**_GPT, "layers": 96, "hidden": 12288, "heads": 96, "vocab": 51200,
                  "seq_len": 2048},
    # Narayanan et al. 2021 (SC21), Table 1, 1008B row.
    "megatron-1t": {**_GPT, "layers": 128, "hidden": 25600, "heads": 160,
                    "vocab": 51200, "seq_len": 2048},
    # Llama 3: Dubey et al. 2024 ("The Llama 3 Herd of Models"), Table 3, and
    # the released params.json (ffn 14336 / 28672 / 53248, 8 KV heads, V 128256).
    "llama3-8b": {**_LLAMA3, "layers": 32, "hidden": 4096, "heads": 32, "kv_heads": 8,
                  "ffn_hidden": 14336},
    "llama3-70b": {**_LLAMA3, "layers": 80, "hidden": 8192, "heads": 64, "kv_heads": 8,
                   "ffn_hidden": 28672},
    "llama3-405b": {**_LLAMA3, "layers": 126, "hidden": 16384, "heads": 128,
                    "kv_heads": 8, "ffn_hidden": 53248},
    # Llama 2: Touvron et al. 2023 ("Llama 2: Open Foundation and Fine-Tuned Chat
    # Models"), Table 1 (context 4k, GQA only for 70B) and the released params.json
    # (dim, n_layers, n_heads, n_kv_heads 8 for 70B, norm_eps 1e-5, vocab 32000;
    # FFN 11008 / 13824 / 28672 from the released checkpoints' w1 shapes).
    "llama2-7b": {**_LLAMA2, "layers": 32, "hidden": 4096, "heads": 32, "ffn_hidden": 11008},
    "llama2-13b": {**_LLAMA2, "layers": 40, "hidden": 5120, "heads": 40,
                   "ffn_hidden": 13824},
    "llama2-70b": {**_LLAMA2, "layers": 80, "hidden": 8192, "heads": 64, "kv_heads": 8,
                   "ffn_hidden": 28672},
    # ---- mixtures of experts (`sandbox.experts`). seq_len is the pretraining
    # length where the source gives one (4K for DeepSeek-V3, Qwen3's first
    # stages, gpt-oss's initial_context_length), else 4096. MoE presets route
    # dropless (capacity_factor 0) as their published training does.
    # Test-sized MoE: one dense block, then 4 routed experts (top-2) and a shared one.
    "tiny-moe": {**_LLAMA3, "layers": 4, "hidden": 64, "heads": 4, "kv_heads": 2,
                 "ffn_hidden": 192, "vocab": 256, "seq_len": 64, "rope_theta": 10000.0,
                 "experts": 4, "experts_per_token": 2, "expert_ffn_hidden": 64,
                 "shared_experts": 1, "dense_layers": 1},
    # Test-sized multi-head latent attention (dense FFN), DeepSeek-V3's shape in small.
    "tiny-mla": {**_LLAMA3, "layers": 4, "hidden": 64, "heads": 4, "ffn_hidden": 192,
                 "vocab": 256, "seq_len": 64, "rope_theta": 10000.0, "attention_kind": "mla",
                 "head_dim": 16, "q_lora_rank": 32, "kv_lora_rank": 32,
                 "qk_rope_head_dim": 8, "v_head_dim": 16},
    # Mixtral 8x7B: Jiang et al. 2024 ("Mixtral of Experts"), Table 1 (dim 4096, 32
    # layers, head_dim 128, hidden_dim 14336, 32 heads, 8 kv heads, vocab 32000, 8
    # experts, top-2); rope_theta 1e6 and router_aux_loss_coef 0.02 from the released
    # config.json; 46.7B total / 12.9B active (section 2.1).
    "mixtral-8x7b": {**_LLAMA3, "layers": 32, "hidden": 4096, "heads": 32, "kv_heads": 8,
                     "ffn_hidden": 14336, "vocab": 32000, "seq_len": 4096,
                     "rope_theta": 1e6, "experts": 8, "experts_per_token": 2,
                     "router_aux_loss": 0.02},
    # Qwen3 MoE: Qwen Team 2025 ("Qwen3 Technical Report"), Table 2, and the
    # released config.json of Qwen/Qwen3-30B-A3B and Qwen/Qwen3-235B-A22B
    # (head_dim 128, 128 experts, 8 per token, moe_intermediate_size 768 / 1536, no
    # shared expert, every layer MoE, vocab 151936, rope_theta 1e6, rms_norm_eps
    # 1e-6, untied, router_aux_loss_coef 0.001). Per-head q/k RMSNorms (2 x 128
    # weights per block) are not modelled. 30.5B / 3.3B and 235B / 22B.
    "qwen3-30b-a3b": {**_LLAMA3, "layers": 48, "hidden": 2048, "heads": 32, "kv_heads": 4,
                      "head_dim": 128, "ffn_hidden": 6144, "vocab": 151936,
                      "seq_len": 4096, "rope_theta": 1e6, "norm_eps": 1e-6,
                      "experts": 128, "experts_per_token": 8, "expert_ffn_hidden": 768,
                      "router_aux_loss": 0.001},
    "qwen3-235b-a22b": {**_LLAMA3, "layers": 94, "hidden": 4096, "heads": 64,
                        "kv_heads": 4, "head_dim": 128, "ffn_hidden": 12288,
                        "vocab": 151936, "seq_len": 4096, "rope_theta": 1e6,
                        "norm_eps": 1e-6, "experts": 128, "experts_per_token": 8,
                        "expert_ffn_hidden": 1536, "router_aux_loss": 0.001},
    # DeepSeek-V3: DeepSeek-AI 2024 ("DeepSeek-V3 Technical Report"), section 4.2
    # and the released config.json: 61 layers, hidden 7168, 128 heads, MLA with
    # q_lora_rank 1536, kv_lora_rank 512, qk_nope_head_dim 128, qk_rope_head_dim 64,
    # v_head_dim 128; the first 3 layers dense (intermediate 18432), then 256 routed
    # experts (8 per token) and 1 shared expert of 2048; vocab 129280, untied;
    # 671B total / 37B active (the multi-token-prediction module is not part of it).
    # Pretrained at 4K tokens. Its auxiliary-loss-free balancing keeps a 1e-4
    # sequence-wise balance loss.
    "deepseek-v3": {**_LLAMA3, "layers": 61, "hidden": 7168, "heads": 128,
                    "ffn_hidden": 18432, "vocab": 129280, "seq_len": 4096,
                    "rope_theta": 10000.0, "norm_eps": 1e-6, "attention_kind": "mla",
                    "head_dim": 128, "q_lora_rank": 1536, "kv_lora_rank": 512,
                    "qk_rope_head_dim": 64, "v_head_dim": 128, "experts": 256,
                    "experts_per_token": 8, "expert_ffn_hidden": 2048,
                    "shared_experts": 1, "dense_layers": 3, "router_aux_loss": 0.0001},
    # Kimi K2: Kimi Team 2025 ("Kimi K2: Open Agentic Intelligence"), Table 2, and
    # the released config.json: DeepSeek-V3's architecture with 64 heads, 384
    # experts (8 per token), 1 shared, 1 dense layer, vocab 163840, rope_theta 50000;
    # 1.04T total / 32.6B active.
    "kimi-k2": {**_LLAMA3, "layers": 61, "hidden": 7168, "heads": 64, "ffn_hidden": 18432,
                "vocab": 163840, "seq_len": 4096, "rope_theta": 50000.0, "norm_eps": 1e-6,
                "attention_kind": "mla", "head_dim": 128, "q_lora_rank": 1536,
                "kv_lora_rank": 512, "qk_rope_head_dim": 64, "v_head_dim": 128,
                "experts": 384, "experts_per_token": 8, "expert_ffn_hidden": 2048,
                "shared_experts": 1, "dense_layers": 1},
    # gpt-oss: OpenAI 2025 ("gpt-oss-120b & gpt-oss-20b Model Card"), Table 1, and
    # the released config.json: hidden 2880, 64 query heads of 64, 8 kv heads,
    # experts of width 2880 (SwiGLU), 4 per token, biases in attention, experts and
    # router, vocab 201088 (o200k_harmony), untied, rope_theta 150000,
    # initial_context_length 4096; 36 layers / 128 experts (116.8B total, 5.1B
    # active) and 24 / 32 (20.9B, 3.6B). Not modelled: the banded (128-token)
    # sliding-window attention of every other layer (attention FLOPs are counted
    # dense), the per-head attention sinks (64 weights per block).
    "gpt-oss-120b": {**_LLAMA3, "layers": 36, "hidden": 2880, "heads": 64, "kv_heads": 8,
                     "head_dim": 64, "ffn_hidden": 2880, "vocab": 201088, "seq_len": 4096,
                     "rope_theta": 150000.0, "bias": True, "experts": 128,
                     "experts_per_token": 4, "expert_ffn_hidden": 2880},
    "gpt-oss-20b": {**_LLAMA3, "layers": 24, "hidden": 2880, "heads": 64, "kv_heads": 8,
                    "head_dim": 64, "ffn_hidden": 2880, "vocab": 201088, "seq_len": 4096,
                    "rope_theta": 150000.0, "bias": True, "experts": 32,
                    "experts_per_token": 4, "expert_ffn_hidden": 2880},
}

# ----------------------------------------------------------------------- GPUs
GPUS: dict[str, dict] = {
    # NVIDIA A100 datasheet (2021), SXM4 80GB: FP32 19.5, TF32 156, FP16/BF16 312
    # dense TFLOP/s; 80 GiB HBM2e = 85.9e9 bytes at 2,039 GB/s.
    "a100-80g": {"tflops_fp32": 19.5, "tflops_tf32": 156.0, "tflops_fp16": 312.0,
                 "tflops_bf16": 312.0, "tflops_fp8": 0.0, "hbm_gb": 85.9,
                 "hbm_gb_per_s": 2039.0},
    # Same datasheet, SXM4 40GB: 40 GiB HBM2 at 1,555 GB/s.
    "a100-40g": {"tflops_fp32": 19.5, "tflops_tf32": 156.0, "tflops_fp16": 312.0,
                 "tflops_bf16": 312.0, "tflops_fp8": 0.0, "hbm_gb": 42.9,
                 "hbm_gb_per_s": 1555.0},
    # NVIDIA H100 datasheet (2023), SXM5: FP32 67, TF32 494.7, BF16/FP16 989.4,
    # FP8 1,978.9 dense TFLOP/s; 80 GiB HBM3 at 3.35 TB/s; max TDP 700 W.
    "h100-sxm": {"tflops_fp32": 67.0, "tflops_tf32": 494.7, "tflops_fp16": 989.4,
                 "tflops_bf16": 989.4, "tflops_fp8": 1978.9, "hbm_gb": 85.9,
                 "hbm_gb_per_s": 3350.0, "tdp_w": 700.0},
    # The H100 SXM of Meta's Grand Teton hosts in torchtitan's 2024-12 benchmarks
    # (benchmarks/llama3_h100_202412_torchtitan.md: "H100 SXM HBM2e 96GB, 500W power
    # limit"). Compute peaks and TDP as the H100 SXM datasheet (same GH100 SXM5
    # board), run under a 500 W cap (`power_limit_w`, see GPU.sustained_fraction).
    # Memory: 96 GiB = six 16 GiB HBM2e stacks; NVIDIA publishes no datasheet for
    # this part, so the bandwidth is derived, not quoted: the six 1024-bit stacks
    # of the full GH100 (NVIDIA H100 whitepaper: 12 512-bit memory controllers)
    # at the HBM2e pin rate of the H100 PCIe (datasheet: 2.0 TB/s over 5120 bits),
    # 2.0 TB/s * 6144 / 5120 = 2.4 TB/s.
    "h100-sxm-96g": {"tflops_fp32": 67.0, "tflops_tf32": 494.7, "tflops_fp16": 989.4,
                     "tflops_bf16": 989.4, "tflops_fp8": 1978.9, "hbm_gb": 103.1,
                     "hbm_gb_per_s": 2400.0, "tdp_w": 700.0, "power_limit_w": 500.0},
    # NVIDIA H200 datasheet (2024), SXM: compute as H100 SXM; 141 GB HBM3e at
    # 4.8 TB/s; max TDP up to 700 W (configurable).
    "h200-sxm": {"tflops_fp32": 67.0, "tflops_tf32": 494.7, "tflops_fp16": 989.4,
                 "tflops_bf16": 989.4, "tflops_fp8": 1978.9, "hbm_gb": 141.0,
                 "hbm_gb_per_s": 4800.0, "tdp_w": 700.0},
    # NVIDIA HGX B200 / DGX B200 datasheets (2024-25), per GPU of the 8: FP32
    # 600 / 8 = 75, TF32 2.2 PF, FP16/BF16 4.5 PF, FP8 9 PF with sparsity, halved
    # for dense (1,100 / 2,250 / 4,500); 1,440 GB HBM3e at 64 TB/s per 8 GPUs =
    # 180 GB at 8 TB/s each; 1,000 W per GPU (the clocks the peaks assume).
    "b200": {"tflops_fp32": 75.0, "tflops_tf32": 1100.0, "tflops_fp16": 2250.0,
             "tflops_bf16": 2250.0, "tflops_fp8": 4500.0, "hbm_gb": 180.0,
             "hbm_gb_per_s": 8000.0, "tdp_w": 1000.0},
    # One Blackwell GPU of a GB200 superchip: NVIDIA GB200 NVL72 datasheet, per
    # rack of 72 GPUs FP32 5,760 TF, TF32 180 PF, FP16/BF16 360 PF, FP8 720 PF
    # with sparsity -> dense per GPU 80 / 1,250 / 2,500 / 5,000 TFLOP/s; up to
    # 13.4 TB HBM3e at 576 TB/s -> 186 GB at 8 TB/s per GPU; these peaks are
    # quoted for the GPU configured at 1,200 W.
    "gb200": {"tflops_fp32": 80.0, "tflops_tf32": 1250.0, "tflops_fp16": 2500.0,
              "tflops_bf16": 2500.0, "tflops_fp8": 5000.0, "hbm_gb": 186.0,
              "hbm_gb_per_s": 8000.0, "tdp_w": 1200.0},
}

# Llama 3 (Dubey et al. 2024, Table 5): 419 unexpected interruptions in 54 days
# on 16,384 H100s (2,048 nodes). GPU faults (58.7%, 246 events) give a per-GPU
# MTBF of 16384*1296 h / 246 = 86,300 h; network switch/cable and NIC faults
# (42 events over 16,384 links) 505,600 h per link; the remaining host-side
# interruptions (131 events over 2,048 nodes) 20,300 h per node.
_LLAMA3_FAILURES = {"gpu_mtbf_h": 86300.0, "node_mtbf_h": 20300.0,
                    "link_mtbf_h": 505600.0, "switch_mtbf_h": 0.0}

# ------------------------------------------------------------------- clusters
# A100 + Megatron-LM efficiency constants fitted by experiments/calibrate_vtrain_a100.py
# (GEMM efficiency curve, host dispatch per kernel, NCCL efficiency; sandbox/profile.py).
A100_PROFILE = "sandbox/profiles/a100-megatron.toml"
# H100 / H200 efficiency constants fitted by experiments/calibrate_h100.py to
# Megatron-Core's H100 weak scaling and torchtitan's H100 / H200 benchmarks
# (GEMM curves bf16 and fp8, flash attention, NCCL, host dispatch per kernel).
H100_PROFILE = "sandbox/profiles/h100.toml"

CLUSTERS: dict[str, dict] = {
    # Selene-like DGX A100 SuperPOD (NVIDIA DGX A100 user guide; Narayanan et al.
    # 2021): 8 x A100 80GB, NVLink 3 / NVSwitch 600 GB/s bidirectional = 300 GB/s
    # per direction per GPU, 8 x ConnectX-6 HDR 200 Gb/s compute NICs, fat tree.
    # Latencies: NVSwitch hop ~1 us, HDR switch ~0.13 us per hop plus NIC ~1 us
    # (Mellanox Quantum / ConnectX-6 product briefs), 3 hops in a fat tree.
    "dgx-a100-80g": {"gpu": "a100-80g", "nodes": 4, "gpus_per_node": 8,
                     "intra_node_link": "nvlink3", "intra_node_gb_per_s": 300.0,
                     "intra_node_latency_us": 1.0, "topology": "fat-tree",
                     "nics_per_node": 8, "nic_gbit_per_s": 200.0,
                     "inter_node_latency_us": 2.5, **_LLAMA3_FAILURES,
                     # DGX A100: 2 x 200 Gb/s storage NICs = 50 GB/s per node.
                     "storage_gb_per_s": 50.0, "restart_s": 600.0,
                     # Lambda on-demand list price, 8x A100 80GB SXM (2024).
                     "usd_per_gpu_hour": 1.79, "profile": A100_PROFILE},
    # DGX H100 (NVIDIA DGX H100 user guide): NVLink 4 900 GB/s bidirectional =
    # 450 GB/s per direction per GPU, 8 x ConnectX-7 NDR 400 Gb/s, fat tree;
    # failure rates from Llama 3 (above), which trained on such nodes.
    "dgx-h100": {"gpu": "h100-sxm", "nodes": 4, "gpus_per_node": 8,
                 "intra_node_link": "nvlink4", "intra_node_gb_per_s": 450.0,
                 "intra_node_latency_us": 1.0, "topology": "fat-tree",
                 "nics_per_node": 8, "nic_gbit_per_s": 400.0,
                 "inter_node_latency_us": 2.5, **_LLAMA3_FAILURES,
                 # DGX H100: 2 x 400 Gb/s storage ports = 100 GB/s per node;
                 # the filesystem behind them as Llama 3's (Tectonic: 2 TB/s
                 # sustained, 7 TB/s peak; Dubey et al. 2024, section 3.3.1).
                 "storage_gb_per_s": 100.0, "storage_total_gb_per_s": 2000.0,
                 "restart_s": 600.0,
                 # Lambda on-demand list price, 8x H100 SXM (2024).
                 "usd_per_gpu_hour": 2.99, "profile": H100_PROFILE},
    # DGX H200 (NVIDIA DGX H200 datasheet / user guide): 8 x H200 SXM, NVLink 4
    # 900 GB/s bidirectional = 450 GB/s per direction per GPU, 8 x ConnectX-7
    # 400 Gb/s compute NICs (one per GPU), 2 x 400 Gb/s storage ports = 100 GB/s.
    # Also torchtitan's H200 rows (8 x H200 per host, 400 Gb/s CX-7 RDMA per GPU).
    # No published H200 failure rates: Llama 3's H100 rates (same host class) assumed.
    "dgx-h200": {"gpu": "h200-sxm", "nodes": 4, "gpus_per_node": 8,
                 "intra_node_link": "nvlink4", "intra_node_gb_per_s": 450.0,
                 "intra_node_latency_us": 1.0, "topology": "fat-tree",
                 "nics_per_node": 8, "nic_gbit_per_s": 400.0,
                 "inter_node_latency_us": 2.5, **_LLAMA3_FAILURES,
                 "storage_gb_per_s": 100.0, "restart_s": 600.0, "profile": H100_PROFILE},
    # DGX B200 (NVIDIA DGX B200 datasheet / user guide): 8 x B200, NVLink 5 with
    # 14.4 TB/s aggregate = 1.8 TB/s bidirectional = 900 GB/s per direction per
    # GPU, 8 x single-port ConnectX-7 400 Gb/s compute NICs, 2 x dual-port
    # BlueField-3 (400 Gb/s) for storage = 100 GB/s. Failure rates assumed as H100.
    "dgx-b200": {"gpu": "b200", "nodes": 4, "gpus_per_node": 8,
                 "intra_node_link": "nvlink5", "intra_node_gb_per_s": 900.0,
                 "intra_node_latency_us": 1.0, "topology": "fat-tree",
                 "nics_per_node": 8, "nic_gbit_per_s": 400.0,
                 "inter_node_latency_us": 2.5, **_LLAMA3_FAILURES,
                 "storage_gb_per_s": 100.0, "restart_s": 600.0},
    # GB200 NVL72 (NVIDIA GB200 NVL72 datasheet): one rack = one 72-GPU NVLink 5
    # domain (130 TB/s = 1.8 TB/s bidirectional, 900 GB/s per direction per GPU,
    # one NVSwitch hop), modelled as a "node" of 72 GPUs; 18 compute trays with
    # 4 x ConnectX-7 400 Gb/s each (one NIC per GPU) to the scale-out fabric and
    # one BlueField-3 (2 x 200 Gb/s) each for storage: 18 x 50 = 900 GB/s per
    # rack. `nodes` counts racks. Failure rates assumed as H100 (none published).
    "gb200-nvl72": {"gpu": "gb200", "nodes": 1, "gpus_per_node": 72,
                    "intra_node_link": "nvlink5", "intra_node_gb_per_s": 900.0,
                    "intra_node_latency_us": 1.0, "topology": "fat-tree",
                    "nics_per_node": 72, "nic_gbit_per_s": 400.0,
                    "inter_node_latency_us": 2.5, **_LLAMA3_FAILURES,
                    "storage_gb_per_s": 900.0, "restart_s": 600.0},
    # torchtitan's H100 hosts (benchmarks/llama3_h100_202412_torchtitan.md):
    # Meta Grand Teton, 8 x h100-sxm-96g at a 500 W cap, NVLink 4 (450 GB/s per
    # direction per GPU, as DGX H100), 400 Gb/s RDMA per GPU; Llama 3 trained on
    # Grand Teton hosts (Dubey et al. 2024, 3.3.1), hence its failure rates.
    "grand-teton-h100": {"gpu": "h100-sxm-96g", "nodes": 4, "gpus_per_node": 8,
                         "intra_node_link": "nvlink4", "intra_node_gb_per_s": 450.0,
                         "intra_node_latency_us": 1.0, "topology": "fat-tree",
                         "nics_per_node": 8, "nic_gbit_per_s": 400.0,
                         "inter_node_latency_us": 2.5, **_LLAMA3_FAILURES,
                         "restart_s": 600.0, "profile": H100_PROFILE},
    # The vTrain validation cluster (shared/validation/README.md): A100s, 8 per
    # node, 150 GB/s intra-node, 800 Gb/s per node inter-node (4 x 200 Gb/s HDR).
    # The README does not state the A100 memory size; 80 GB assumed.
    "vtrain-a100": {"gpu": "a100-80g", "nodes": 8, "gpus_per_node": 8,
                    "intra_node_link": "nvlink3", "intra_node_gb_per_s": 150.0,
                    "intra_node_latency_us": 1.0, "topology": "fat-tree",
                    "nics_per_node": 4, "nic_gbit_per_s": 200.0,
                    "inter_node_latency_us": 2.5, **_LLAMA3_FAILURES,
                    "storage_gb_per_s": 50.0, "restart_s": 600.0,
                    "usd_per_gpu_hour": 1.79, "profile": A100_PROFILE},
}
# `localhost` is built from this machine when asked for: see localhost_cluster().
CLUSTER_NAMES = (*CLUSTERS, "localhost")


def _cpu_gpu_spec(processes: int) -> dict:
    """One CPU process as a 'GPU': its share of the cores and of the memory.

    Peak FLOP/s = cores x clock x FLOPs/cycle (SIMD width x 2 FMA units x 2),
    read from /proc/cpuinfo; memory bandwidth is a nominal DDR4 figure until
    `sandbox calibrate` measures it.
    """
    cores = os.cpu_count() or 1
    mhz, flags = 2500.0, ""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        m = re.search(r"cpu MHz\s*:\s*([\d.]+)", text)
        mhz = float(m.group(1)) if m else mhz
        m = re.search(r"^flags\s*:(.*)$", text, re.M)
        flags = m.group(1) if m else ""
    except OSError:
        pass
    lanes = 16 if " avx512f" in flags else 8 if " avx2" in flags else 4
    fp32_tflops = max(1, cores // max(1, processes)) * mhz * 1e6 * lanes * 2 * 2 / 1e12
    mem_gb = 16.0
    try:
        with open("/proc/meminfo") as f:
            m = re.search(r"MemTotal:\s*(\d+) kB", f.read())
        mem_gb = int(m.group(1)) * 1024 / 1e9 if m else mem_gb
    except OSError:
        pass
    return {"name": "cpu", "tflops_fp32": round(fp32_tflops, 4), "tflops_tf32": 0.0,
            "tflops_fp16": round(fp32_tflops, 4), "tflops_bf16": round(fp32_tflops, 4),
            "tflops_fp8": 0.0, "hbm_gb": round(mem_gb / max(1, processes), 2),
            "hbm_gb_per_s": 20.0}


@lru_cache(maxsize=1)
def _local_gpus() -> tuple[str, ...]:
    """Names of this machine's NVIDIA GPUs (empty without nvidia-smi)."""
    import shutil
    import subprocess

    if not shutil.which("nvidia-smi"):
        return ()
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(line.strip() for line in out.splitlines() if line.strip())


def _match_gpu(name: str) -> str:
    n = name.lower()
    if "gb200" in n:
        return "gb200"
    if "b200" in n:
        return "b200"
    if "h200" in n:
        return "h200-sxm"
    if "h100" in n:
        return "h100-sxm"
    if "a100" in n:
        return "a100-80g" if "80" in n else "a100-40g"
    return "a100-80g"


def localhost_cluster(processes: int | None = None) -> dict:
    """This machine: its GPUs, or `processes` CPU processes talking over gloo.

    Without GPUs the cluster is one node of `processes` CPU 'devices' joined by
    shared memory (gloo over loopback); the link figures are nominal until
    `sandbox calibrate` measures them.
    """
    gpus = _local_gpus()
    if gpus:
        gpu = _match_gpu(gpus[0])
        nvlink = 900.0 if gpu in ("b200", "gb200") else 450.0  # NVLink 5 / 4 per direction
        return {"gpu": gpu, "nodes": 1,
                "gpus_per_node": processes or len(gpus),
                "intra_node_link": "nvlink", "intra_node_gb_per_s": nvlink,
                "intra_node_latency_us": 1.0, "topology": "fat-tree",
                "nics_per_node": 1, "nic_gbit_per_s": 100.0,
                "inter_node_latency_us": 5.0, "storage_gb_per_s": 2.0,
                "restart_s": 30.0}
    n = processes or 1
    return {"gpu": _cpu_gpu_spec(n), "nodes": 1, "gpus_per_node": n,
            "intra_node_link": "loopback", "intra_node_gb_per_s": 2.0,
            "intra_node_latency_us": 50.0, "topology": "fat-tree",
            "nics_per_node": 1, "nic_gbit_per_s": 10.0,
            "inter_node_latency_us": 100.0, "storage_gb_per_s": 1.0,
            "restart_s": 10.0}


def has_local_gpu() -> bool:
    return bool(_local_gpus())
