"""Issue 18: the per-GPU memory of MoE / MLA plans in closed form (parameters
and ZeRO shards over ep, a MoE block's activations), and DeepSeek-V3 on
1,024 H100 as NeMo AutoModel runs it."""

from __future__ import annotations

import json

import pytest

import sandbox
from sandbox import counts, memory
from sandbox import memory_moe as mm
from sandbox import recompute as rc
from sandbox.cli import main


def _plan(preset: str = "tiny-moe", nodes: int = 1, **par) -> sandbox.specs.Plan:
    par = {"dp": 8, "global_batch": 8, "zero": 0, "recompute": "none", **par}
    return sandbox.load({"model": {"preset": preset}, "cluster": {"preset": "dgx-h100",
                                                                   "nodes": nodes},
                         "parallel": par, "train": {"precision": "bf16"}})


def test_ep_halves_the_routed_expert_parameter_bytes():
    one, two = _plan(ep=1), _plan(ep=2)
    m = one.model  # tiny-moe: 3 MoE blocks of 4 experts (3 h f each), h = f = 64
    expert = 3 * 64 * 64
    d1, e1 = mm.stage_params_split(one, 0)
    d2, e2 = mm.stage_params_split(two, 0)
    assert e1 == 3 * 4 * expert and e2 == e1 / 2 and d1 == d2
    assert d1 + e1 == counts.param_count(m)  # one GPU holds the whole model at ep 1
    gb = memory.memory_per_gpu(one)["params"] - memory.memory_per_gpu(two)["params"]
    assert gb * 1e9 == pytest.approx(e1 / 2 * 2)  # bf16 weights: half the experts' bytes


def test_tensor_parallel_splits_experts_and_replicates_the_router():
    p = _plan(dp=4, tp=2, global_batch=4)
    m = p.model
    h, e, f = 64, 4, 64
    assert mm.routed_params_per_gpu(m, 2, 1) == e * 3 * h * f / 2
    attn = h * (64 + 2 * 32) + 64 * h
    shared = 3 * h * f
    assert mm.moe_block_dense_params_per_gpu(m, 2) == (attn + shared) / 2 + 2 * h + h * e


def test_zero1_optimizer_bytes_of_experts_shard_over_dp_over_ep():
    for ep in (1, 2, 4):
        p = _plan(ep=ep, zero=1)
        dense, routed = mm.stage_params_split(p, 0)
        assert mm.expert_shard_size(p) == 8 // ep
        want = (dense * 12 / 8 + routed * 12 / (8 // ep)) / 1e9  # fp32 master + 2 moments
        assert memory.memory_per_gpu(p)["optimizer"] == pytest.approx(want)
    # with ZeRO-3 the weights too, and context parallelism widens both groups
    p = _plan(ep=2, zero=3, dp=4, cp=2, global_batch=4)
    assert mm.expert_shard_size(p) == 4 and p.parallel.shard_size == 8


def _moe_block_bytes(s, b, h, kv, q, heads, e, k, f, shared, w=2, cf=0.0, tp=1, sp=False):
    """The documented tensors of a flash MoE block (no recompute), summed by hand."""
    t = s * b
    rows = k * (cf if cf else 1)
    outside = t * (2 * (h * w + 4) + 2 * h * w)  # norms in and rstd, QKV / FFN inputs
    outside += t * (4 * e + 12 * k + 2 * rows * h * w)  # probs, top-k, dispatch, combine
    inside = t * w * (2 * q + 2 * kv) + 4 * t * heads  # Q K V O, lse
    inside += t * 4 * f * w * (rows + shared)  # SwiGLU intermediates, routed and shared
    return (outside / tp if sp else outside) + inside / tp


@pytest.mark.parametrize("preset,tp", [("tiny-moe", 1), ("tiny-moe", 2), ("mixtral-8x7b", 1),
                                       ("mixtral-8x7b", 8)])
def test_moe_block_activation_bytes_closed_form(preset, tp):
    m = sandbox.load({"model": {"preset": preset}}).model
    got = memory.flash_activation_bytes_per_layer(m, 2, tp, True, "none", "bf16", moe=True)
    want = _moe_block_bytes(m.seq_len, 2, m.hidden, m.kv_dim, m.q_dim, m.heads, m.experts,
                            m.experts_per_token, m.expert_ffn_hidden, m.shared_experts,
                            tp=tp, sp=tp > 1)
    assert got == pytest.approx(want)
    # capacity factor 1.25 pads the routed buffers to 1.25 k copies per token
    mc = sandbox.load({"model": {"preset": preset, "capacity_factor": 1.25}}).model
    got_c = memory.flash_activation_bytes_per_layer(mc, 2, tp, True, "none", "bf16", moe=True)
    want_c = _moe_block_bytes(m.seq_len, 2, m.hidden, m.kv_dim, m.q_dim, m.heads, m.experts,
                              m.experts_per_token, m.expert_ffn_hidden, m.shared_experts,
                              cf=1.25, tp=tp, sp=tp > 1)
    assert got_c == pytest.approx(want_c) and got_c > got
    # full recompute keeps the block input, as a dense block
    full = memory.flash_activation_bytes_per_layer(m, 2, tp, True, "full", "bf16", moe=True)
    assert full == 2 * m.seq_len * 2 * m.hidden / tp


def test_op_policy_counts_grouped_expert_mms_in_the_alternation():
    m = sandbox.load({"model": {"preset": "mixtral-8x7b"}}).model
    names = [x[0] for x in rc.block_mms(m, moe=True)]
    assert names == ["wq", "wk", "wv", "wo", "experts.w1", "experts.w3", "experts.w2"]
    assert rc.op_saved_mms(m, moe=True) == ("wq", "wv", "experts.w1", "experts.w2")
    s, h, f, k = 4096, 4096, 14336, 2
    got = memory.flash_activation_bytes_per_layer(m, 1, 1, False, "op", "bf16", moe=True, ep=2)
    x, lin = s * h * 2, s * 2 * (4096 + 1024 + k * f + k * h)  # wq, wv, w1, w2 (partial sums)
    sdpa, topk, a2a = s * (2 * 4096 + 4 * 32), s * k * 12, 2 * s * k * h * 2
    assert got == pytest.approx(x + lin + sdpa + topk + a2a)


def test_mla_activations_follow_the_projection_shapes():
    m = sandbox.load({"model": {"preset": "deepseek-v3"}}).model
    s, w, heads = 4096, 2, 128
    got = memory.flash_activation_bytes_per_layer(m, 1, 1, False, "none", "bf16")
    q_lat = 2 * 1536 * w + 4
    kv_lat = (512 + 64) * w + 4 + 512 * w
    up = heads * (192 + 192 + (128 + 128) + 128) * w + 4 * heads  # q, k, wkv_b out, O, lse
    outside = 2 * (7168 * w + 4) + 2 * 7168 * w
    mlp = 4 * 18432 * w
    assert got == pytest.approx(s * (outside + q_lat + kv_lat + up + mlp))
    # MLA's down-projections stay whole on every tensor-parallel rank
    rep = 7168 * (1536 + 512 + 64) + 1536 + 512
    assert memory.layer_params_per_gpu(m, 8) == pytest.approx(
        (counts.layer_params(m) - 2 * 7168 - rep) / 8 + 2 * 7168 + rep)


def _deepseek_1024() -> dict:
    """NeMo AutoModel's DeepSeek V3 row (h100_automodel.csv): 1,024 H100, pp 4
    (vp 8), ep 64, FSDP over the 256 data-parallel ranks, micro-batch 1,
    global batch 8,192 of 4,096 tokens; full activation checkpointing."""
    return {"model": {"preset": "deepseek-v3", "seq_len": 4096},
            "cluster": {"preset": "dgx-h100", "nodes": 128},
            "parallel": {"dp": 256, "pp": 4, "vpp": 8, "ep": 64, "micro_batch": 1,
                         "global_batch": 8192, "schedule": "interleaved-1f1b", "zero": 3,
                         "recompute": "full"},
            "train": {"precision": "bf16"}}


def test_deepseek_v3_on_1024_h100_fits_in_80_gb(tmp_path, capsys):
    path = tmp_path / "ds.toml"
    path.write_text("".join(f"[{sec}]\n" + "".join(f"{k} = {json.dumps(v)}\n"
                                                     for k, v in body.items())
                            for sec, body in _deepseek_1024().items()))
    assert main(["info", str(path), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    mem = facts["memory_gb_per_gpu"]
    assert facts["fits"] and mem["total"] < 80
    # what the model predicts: ~63 GB (experts' states over 4 expert-data-parallel
    # ranks, the dense ones over 256; FSDP2 under pipelining keeps a stage's
    # parameters gathered and its fp32 gradients unsharded through the step)
    assert 55 < mem["total"] < 70
    plan = sandbox.load(_deepseek_1024())
    dense, routed = mm.stage_params_split(plan, 1)
    # stage 1 runs chunks 1, 5, ..., 29 of 32 (61 blocks: [1, 1, 2 x 29, 1]): block 1
    # (dense, the first 3 are) and 14 MoE blocks of 256 / 64 = 4 experts each
    assert mm.stage_kinds(plan, 1) == (1, 14)
    assert routed == pytest.approx(14 * 4 * 3 * 7168 * 2048)
    # without recompute it would not fit (the published run checkpoints)
    none = sandbox.load({**_deepseek_1024(), "parallel": {**_deepseek_1024()["parallel"],
                                                          "recompute": "none"}})
    assert not memory.fits(none)


# ------------------------------------------------ issue 17: torchtitan's peak memory
def _titan(prec: str, rec: str, tp: int = 1) -> sandbox.specs.Plan:
    return sandbox.load({"model": {"preset": "llama3-8b", "seq_len": 8192},
                         "cluster": {"preset": "grand-teton-h100", "nodes": 1},
                         "parallel": {"dp": 8 // tp, "tp": tp, "micro_batch": 2,
                                      "global_batch": 16 // tp, "zero": 3, "recompute": rec,
                                      "sequence_parallel": tp > 1},
                         "train": {"precision": prec, "compile": True}})


def test_fp8_op_sac_keeps_the_bf16_matmul_outputs():
    bf16, fp8 = _titan("bf16", "op"), _titan("fp8", "op")
    assert memory.memory_per_gpu(fp8)["activations"] == memory.memory_per_gpu(bf16)[
        "activations"]
    assert [x[0] for x in rc.op_recomputed_linears(fp8.model, "fp8")] == ["wk", "wo", "w3"]


def test_loss_parallel_holds_four_fp32_logit_tensors():
    one, tp2 = _titan("bf16", "full"), _titan("bf16", "full", tp=2)
    logits = 2 * 8192 * 128256
    assert memory.loss_bytes(one, 0) == 12 * logits
    assert memory.loss_bytes(tp2, 0) == 16 * logits / 2
