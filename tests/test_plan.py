"""Loading plans: presets, overrides, defaults, replace, TOML round trip."""

import subprocess
import sys

import pytest

import sandbox
from sandbox import presets
from sandbox.errors import PlanError


def test_missing_sections_take_documented_defaults():
    plan = sandbox.load({})
    assert plan.model.name == "gpt-mini"
    assert plan.cluster.name == "localhost"
    assert (plan.parallel.dp, plan.parallel.tp, plan.parallel.pp) == (1, 1, 1)
    assert plan.world_size == 1


def test_preset_plus_override_and_full_spec_without_preset():
    plan = sandbox.load({"model": {"preset": "gpt2-124m", "layers": 6}})
    assert (plan.model.layers, plan.model.hidden, plan.model.name) == (6, 768, "gpt2-124m")
    full = sandbox.load({"model": {"layers": 2, "hidden": 32, "heads": 2, "vocab": 100,
                                   "seq_len": 16}})
    assert full.model.ffn_hidden == 128 and full.model.kv_heads == 2
    assert full.model.name == "custom"


def test_swiglu_default_ffn_follows_llama_rule():
    plan = sandbox.load({"model": {"layers": 2, "hidden": 4096, "heads": 32, "vocab": 100,
                                   "seq_len": 16, "activation": "swiglu"}})
    assert plan.model.ffn_hidden == 11008  # Llama 2 7B's width


def test_dp_derived_from_world_size():
    plan = sandbox.load({"model": {"preset": "gpt3-175b"},
                         "cluster": {"preset": "dgx-a100-80g", "nodes": 128},
                         "parallel": {"tp": 8, "pp": 16, "global_batch": 1536}})
    assert plan.parallel.dp == 8 and plan.parallel.microbatches == 192


def test_localhost_grows_to_the_plan():
    plan = sandbox.load({"model": {"preset": "tiny"}, "cluster": {"preset": "localhost"},
                         "parallel": {"dp": 2, "tp": 2}})
    assert plan.world_size == 4
    if not presets.has_local_gpu():
        assert plan.cluster.gpu.name == "cpu" and plan.train.precision == "fp32"


def test_gpu_table_and_gpu_preset_override():
    plan = sandbox.load({"cluster": {"preset": "dgx-h100", "nodes": 1,
                                     "gpu": {"preset": "h100-sxm", "hbm_gb": 40.0}},
                         "parallel": {"tp": 2}})
    assert plan.cluster.gpu.hbm_gb == 40.0 and plan.cluster.gpu.tflops_bf16 == 989.4


def test_toml_round_trip(tmp_path):
    plan = sandbox.load({"model": {"preset": "llama3-8b"},
                         "cluster": {"preset": "dgx-h100", "nodes": 2},
                         "parallel": {"tp": 4, "pp": 2, "global_batch": 64, "zero": 3},
                         "train": {"lr": 1e-4, "steps": 7}})
    path = tmp_path / "plan.toml"
    path.write_text(plan.to_toml())
    assert sandbox.load(path) == plan
    assert sandbox.load(plan.to_dict()) == plan


def test_replace_rederives_dp_and_validates():
    plan = sandbox.load({"model": {"preset": "gpt3-175b"},
                         "cluster": {"preset": "dgx-a100-80g", "nodes": 128},
                         "parallel": {"tp": 8, "pp": 16, "global_batch": 1536}})
    p2 = plan.replace(pp=8)
    assert (p2.parallel.pp, p2.parallel.dp) == (8, 16)
    assert plan.parallel.pp == 16  # the original is unchanged
    p3 = plan.replace(**{"cluster.gpu.hbm_gb": 40.0}, lr=1e-4, layers=48)
    assert (p3.cluster.gpu.hbm_gb, p3.train.lr, p3.model.layers) == (40.0, 1e-4, 48)
    assert plan.replace(model="gpt3-1.3b", pp=8).model.hidden == 2048
    with pytest.raises(PlanError, match="parallel.tp"):
        plan.replace(tp=7)
    with pytest.raises(PlanError, match="unknown field.*did you mean 'layers'"):
        plan.replace(layer=3)


def test_replace_on_localhost_resizes_the_process_count():
    plan = sandbox.load({"model": {"preset": "tiny"}})
    assert plan.replace(dp=2).world_size == 2
    assert plan.replace(dp=2).replace(tp=2).world_size == 4


def test_load_from_toml_text_and_errors(tmp_path):
    plan = sandbox.load('[model]\npreset = "tiny"\n')
    assert plan.model.name == "tiny"
    with pytest.raises(PlanError, match="no such plan file"):
        sandbox.load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\npreset = 1")
    with pytest.raises(PlanError, match="malformed TOML"):
        sandbox.load(bad)


def test_import_sandbox_is_light():
    code = "import sandbox, sys; print('torch' in sys.modules, 'simpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.split() == ["False", "False"]


def test_every_preset_loads():
    for name in presets.MODELS:
        assert sandbox.load({"model": {"preset": name}}).model.name == name
    for name in presets.CLUSTER_NAMES:
        plan = sandbox.load({"model": {"preset": "tiny"}, "cluster": {"preset": name},
                             "parallel": {"global_batch": 512}})
        assert plan.cluster.name == name


def test_gpu_fields_override_the_cluster_presets_gpu():
    plan = sandbox.load({"model": {"preset": "tiny"},
                         "cluster": {"preset": "dgx-a100-80g", "gpu": {"hbm_gb": 40.0}},
                         "parallel": {"global_batch": 64}})
    assert plan.cluster.gpu.hbm_gb == 40.0 and plan.cluster.gpu.tflops_bf16 == 312.0
