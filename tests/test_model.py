"""The runtime's GPT has exactly the parameters sandbox's formula counts."""

import pytest
import torch

import sandbox
from runtime.model import build_model
from sandbox import counts, presets


@pytest.mark.parametrize("name", list(presets.MODELS))
def test_param_count_equals_formula(name):
    spec = sandbox.load({"model": {"preset": name}}).model
    small = counts.param_count(spec) < 50e6
    model = build_model(spec, seed=0, device="cpu" if small else "meta")
    assert sum(p.numel() for p in model.parameters()) == counts.param_count(spec)


@pytest.mark.parametrize("name", ["tiny", "tiny-llama", "tiny-moe"])
def test_same_seed_same_weights_and_causal(name):
    spec = sandbox.load({"model": {"preset": name}}).model
    a, b = build_model(spec, seed=3), build_model(spec, seed=3)
    for (na, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(pa, pb), na
    x = torch.randint(0, spec.vocab, (2, 16))
    y = x.clone()
    y[:, 10:] = (y[:, 10:] + 1) % spec.vocab  # change only the future
    with torch.no_grad():
        assert torch.allclose(a(x)[:, :10], a(y)[:, :10], atol=1e-6)
        assert not torch.allclose(a(x)[:, 10:], a(y)[:, 10:], atol=1e-6)


# MLA (issue 18): tiny-mla, full-rank queries, and DeepSeek-V3's attention shapes
# (its ranks and head widths) in a small dense model
MLA_SPECS = {
    "tiny-mla": {"preset": "tiny-mla"},
    "tiny-mla full-rank q": {"preset": "tiny-mla", "q_lora_rank": 0},
    "deepseek-v3-shaped": {"preset": "deepseek-v3", "layers": 1, "hidden": 256, "heads": 4,
                           "ffn_hidden": 128, "vocab": 256, "seq_len": 32, "experts": 0,
                           "experts_per_token": 0, "shared_experts": 0, "dense_layers": 0},
}


@pytest.mark.parametrize("name", list(MLA_SPECS))
def test_mla_param_count_equals_formula(name):
    spec = sandbox.load({"model": MLA_SPECS[name]}).model
    assert spec.kind == "mla"
    model = build_model(spec, seed=0)
    assert sum(p.numel() for p in model.parameters()) == counts.param_count(spec)
    att = model.layers["0"].attention
    linears = [m for m in att.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == counts.mla_projections(spec)
    assert sum(p.numel() for p in att.parameters()) == counts.attention_params(spec)
