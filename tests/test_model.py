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
