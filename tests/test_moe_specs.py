"""Issue 18 foundation: MoE / MLA fields, presets against their published
counts, validation one line per problem, and the MoE FLOP and parameter
formulas in closed form."""

from __future__ import annotations

import json

import pytest

import sandbox
from sandbox import counts, experts
from sandbox.errors import PlanError
from sandbox.layout import ep_groups, expert_grad_groups

# Published (total, active) parameters, billions; each figure on its
# publisher's definition of "active" (see counts.active_params).
PUBLISHED = {
    "deepseek-v3": (671.0, 37.0, counts.active_params),  # DeepSeek-V3 report, abstract
    "qwen3-235b-a22b": (235.0, 22.0, counts.active_params),  # Qwen3 report, Table 2
    "qwen3-30b-a3b": (30.5, 3.3, counts.active_params),
    # gpt-oss model card, Table 1: 5.13B active counts the unembedding, not the
    # embedding table (MLP 3.58 + attention 0.96 + unembedding 0.58)
    "gpt-oss-120b": (116.8, 5.1, counts.active_params_excl_embedding),
    "mixtral-8x7b": (46.7, 12.9, counts.active_params),  # Mixtral paper, section 2.1
}


def _model(name: str, **fields) -> sandbox.specs.Model:
    return sandbox.load({"model": {"preset": name, **fields}}).model


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_presets_match_published_total_and_active_parameters(name):
    total, active, count_active = PUBLISHED[name]
    m = _model(name)
    assert abs(counts.param_count(m) / 1e9 - total) / total < 0.03
    assert abs(count_active(m) / 1e9 - active) / active < 0.05


def test_dense_model_is_unchanged_active_equals_total():
    m = _model("llama3-8b")
    assert counts.active_params(m) == counts.param_count(m) == 8030261248
    assert m.kind == "gqa" and not m.moe and m.head_dim == 128


def test_moe_counts_in_closed_form():
    m = _model("tiny-moe")  # h 64, 4 experts of 64, top-2, 1 shared, 1 dense block
    h, f, e = 64, 64, 4
    expert = 3 * h * f
    attn = h * (64 + 2 * 32) + 64 * h
    moe_block = 2 * h + attn + h * e + (e + 1) * expert
    dense_block = 2 * h + attn + 3 * h * 192
    assert counts.layer_params(m, moe=True) == moe_block
    assert counts.param_count(m) == 2 * 256 * h + dense_block + 3 * moe_block + h
    assert counts.param_count(m) - counts.active_params(m) == 3 * (e - 2) * expert
    flops = counts.layer_matmul_flops_per_token(m, moe=True)
    assert flops == 2.0 * (attn + h * e + (2 + 1) * expert)


def test_mla_counts_follow_deepseek_shapes():
    m = _model("deepseek-v3")
    assert m.kind == "mla" and m.q_dim == 128 * 192 and m.v_dim == 128 * 128
    q = 7168 * 1536 + 1536 * 128 * 192
    kv = 7168 * (512 + 64) + 512 * 128 * (128 + 128)
    o = 128 * 128 * 7168
    assert counts.attention_params(m) == q + kv + o + 1536 + 512
    # scores over q.k (192 per head) and p.v (128 per head)
    assert counts.layer_attention_flops_per_token(m) == 2.0 * 4096 * 128 * (192 + 128)


def test_model_flops_use_active_experts():
    m = _model("mixtral-8x7b")
    dense = sandbox.load({"model": {"preset": "mixtral-8x7b", "experts": 0,
                                    "experts_per_token": 0}}).model
    # two experts of the dense FFN's width, plus the router
    extra = 2.0 * 4096 * 14336 * 3 + 2.0 * 4096 * 8
    assert counts.layer_matmul_flops_per_token(m, moe=True) == pytest.approx(
        counts.layer_matmul_flops_per_token(dense) + extra)
    assert counts.model_flops_per_step(m, 1) == pytest.approx(
        3 * 4096 * (counts.forward_flops_per_token(dense) + 32 * extra))


def test_dense_layers_and_moe_layers():
    m = _model("deepseek-v3")
    assert experts.moe_layers(m) == 58
    assert [experts.is_moe_layer(m, i) for i in (0, 2, 3, 60)] == [False, False, True, True]
    assert experts.layer_kinds(m, range(0, 8)) == (3, 5)


def test_routing_formulas():
    m = _model("tiny-moe", capacity_factor=1.25)
    assert experts.routed_tokens(m, 100) == 200
    assert experts.expert_capacity(m, 100) == pytest.approx(1.25 * 200 / 4)
    assert experts.dispatch_elements(m, 100, 2) == pytest.approx(200 * 0.5 * 64)
    assert experts.dispatch_elements(m, 100, 1) == 0.0
    assert experts.expert_capacity(_model("tiny-moe"), 100) == float("inf")


def _plan(model: dict, **parallel):
    return sandbox.load({"model": model, "cluster": {"preset": "localhost", "gpus_per_node": 8},
                         "parallel": {"global_batch": 16, **parallel}})


def test_ep_groups_are_consecutive_replicas_and_edp_groups_stride_them():
    plan = _plan({"preset": "tiny-moe"}, dp=4, tp=2, ep=2)
    assert ep_groups(plan, 0) == [(0, 2), (4, 6), (1, 3), (5, 7)]
    assert expert_grad_groups(plan, 0) == [(0, 4), (2, 6), (1, 5), (3, 7)]


@pytest.mark.parametrize("model,parallel,words", [
    ({"preset": "tiny-moe"}, {"dp": 8, "ep": 3}, ["parallel.ep", "does not divide model.experts"]),
    ({"preset": "tiny-moe", "experts": 8}, {"dp": 2, "tp": 2, "pp": 2, "ep": 4},
     ["parallel.ep", "does not divide dp = 2"]),
    ({"preset": "tiny"}, {"dp": 8, "ep": 2}, ["parallel.ep", "mixture-of-experts"]),
    ({"preset": "tiny-moe", "experts_per_token": 5}, {"dp": 8},
     ["model.experts_per_token", "1..experts = 4"]),
    ({"preset": "tiny-moe", "dense_layers": 4}, {"dp": 8}, ["model.dense_layers"]),
    ({"preset": "tiny-moe", "capacity_factor": 0.5}, {"dp": 8}, ["model.capacity_factor"]),
    ({"preset": "tiny", "shared_experts": 1}, {"dp": 8}, ["model.shared_experts", "experts > 0"]),
    ({"preset": "tiny-moe", "expert_ffn_hidden": 66}, {"dp": 2, "tp": 4},
     ["parallel.tp", "expert_ffn_hidden"]),
    ({"preset": "tiny-mla", "position": "learned"}, {"dp": 8}, ["model.position", "MLA"]),
    ({"preset": "tiny-mla", "kv_lora_rank": 0}, {"dp": 8}, ["model.kv_lora_rank"]),
    ({"preset": "tiny-mla", "bias": True}, {"dp": 8}, ["model.bias", "MLA"]),
    ({"preset": "tiny-llama", "kv_lora_rank": 8}, {"dp": 8}, ["model.kv_lora_rank", "mla"]),
    ({"preset": "tiny-llama", "attention_kind": "mha"}, {"dp": 8},
     ["model.attention_kind", "kv_heads"]),
    ({"preset": "tiny", "attention_kind": "flash"}, {"dp": 8}, ["model.attention_kind"]),
])
def test_bad_moe_fields_are_one_line_each(model, parallel, words):
    with pytest.raises(PlanError) as e:
        _plan(model, **parallel)
    lines = [p for p in e.value.problems if all(w in p for w in words)]
    assert len(lines) == 1, e.value.problems


def test_head_dim_may_differ_from_hidden_over_heads():
    m = _model("qwen3-30b-a3b")
    assert m.head_dim == 128 and m.q_dim == 4096 and m.hidden == 2048


def test_info_json_reports_active_params(cli, tmp_path):
    plan = tmp_path / "moe.toml"
    plan.write_text('[model]\npreset = "qwen3-30b-a3b"\n[cluster]\npreset = "dgx-h100"\nnodes = 1\n'
                    '[parallel]\ndp = 8\nep = 8\nglobal_batch = 64\n')
    r = cli("info", str(plan), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["active_params"] == counts.active_params(_model("qwen3-30b-a3b"))
    assert out["params"] > 9 * out["active_params"]


def test_plan_with_moe_fields_round_trips_through_toml():
    plan = _plan({"preset": "deepseek-v3", "layers": 5, "hidden": 256, "heads": 4,
                  "q_lora_rank": 64, "kv_lora_rank": 32, "experts": 8,
                  "expert_ffn_hidden": 64}, dp=8, ep=4)
    again = sandbox.load(plan.to_toml())
    assert again == plan
