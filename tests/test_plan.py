"""Loading plans: presets, overrides, defaults, replace, TOML round trip (of
plans and of calibration profiles, with any string)."""

import dataclasses
import subprocess
import sys
import tomllib

import pytest

import sandbox
from sandbox import presets
from sandbox.errors import PlanError
from sandbox.profile import (
    BlockPoint,
    CollectivePoint,
    Profile,
    dump_profile,
    load_profile,
    profile_from_dict,
)

# strings a hand-written TOML writer gets wrong: newlines, quotes, backslashes,
# control characters, unicode, and text that looks like TOML itself
HARD_STRINGS = ['two\nlines', 'say "hi"', "it's", "C:\\path\\to\\file", "tab\there",
                "bell\x07 del\x7f", "ünïcødé ☃ 日本", 'x = 1\n[model]\nname = "y" # no', ""]


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


def test_plan_with_any_string_round_trips():
    """Every free-text string field of a plan holds each hard string and loads back equal."""
    plan = sandbox.load({"model": {"preset": "tiny"}})
    for s in HARD_STRINGS:
        p = dataclasses.replace(
            plan, model=dataclasses.replace(plan.model, name=s),
            cluster=dataclasses.replace(plan.cluster, name=s, intra_node_link=s, profile=s,
                                        gpu=dataclasses.replace(plan.cluster.gpu, name=s)),
            train=dataclasses.replace(plan.train, data=s))
        assert sandbox.load(p.to_toml()) == p, repr(s)


def _as_lists(d):
    if isinstance(d, dict):
        return {k: _as_lists(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_as_lists(v) for v in d]
    return d


def test_to_toml_writes_every_string_field_verbatim():
    """Every string field, and every list of strings, as TOML that parses back to
    the same values (validation aside: most of these fields take fixed words)."""
    def hard(obj, s):
        changes = {f.name: s if f.type == "str" else (s, "x") for f in dataclasses.fields(obj)
                   if f.type in ("str", "tuple[str, ...]")}
        return dataclasses.replace(obj, **changes)

    plan = sandbox.load({"model": {"preset": "tiny"}})
    for s in HARD_STRINGS:
        cluster = dataclasses.replace(hard(plan.cluster, s), gpu=hard(plan.cluster.gpu, s))
        p = dataclasses.replace(plan, model=hard(plan.model, s), cluster=cluster,
                                parallel=hard(plan.parallel, s), train=hard(plan.train, s))
        assert p.model.activation == s and p.cluster.slow_links == (s, "x")
        assert tomllib.loads(p.to_toml()) == _as_lists(p.to_dict()), repr(s)


def test_to_toml_is_a_table_per_section_in_field_order():
    plan = sandbox.load({"model": {"preset": "tiny"}})
    text = plan.to_toml()
    headers = [line for line in text.splitlines() if line.startswith("[")]
    assert headers == ["[model]", "[cluster]", "[cluster.gpu]", "[parallel]", "[train]"]
    model_keys = [line.split(" = ")[0] for line in text.split("\n\n")[0].splitlines()[1:]]
    assert model_keys == [f.name for f in dataclasses.fields(plan.model)]


def test_profile_with_any_string_and_every_table_round_trips(tmp_path):
    for s in HARD_STRINGS:
        prof = Profile(name=s, source=s, device=s, peak_flops=1e12, memory_bytes_per_s=2e11,
                       matmul=((1e6, 1e10), (1e9, 5e11)), attention=((1e6, 2e9),),
                       gemm_tile=(1, 1, 1), attention_fused=True,
                       block=(BlockPoint(2, True, 4, 256, 384, 6, 1536, 0.0125, 1e-3),),
                       collective=(CollectivePoint(s, 2, 1.5e-5, 3e9, s),
                                   CollectivePoint("all_gather", 4, 2e-5, 1e9)))
        text = dump_profile(prof, tmp_path / "p.toml")
        assert profile_from_dict(tomllib.loads(text)) == prof, repr(s)
        assert load_profile(tmp_path / "p.toml") == prof
    assert text.startswith("# Simulator calibration profile")
    assert "[compute]" in text and "name = " in text.split("[compute]")[0]


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
        # 576 sequences: divisible by every preset's world size (32, 64, 72 GPUs)
        plan = sandbox.load({"model": {"preset": "tiny"}, "cluster": {"preset": name},
                             "parallel": {"global_batch": 576}})
        assert plan.cluster.name == name


def test_gpu_fields_override_the_cluster_presets_gpu():
    plan = sandbox.load({"model": {"preset": "tiny"},
                         "cluster": {"preset": "dgx-a100-80g", "gpu": {"hbm_gb": 40.0}},
                         "parallel": {"global_batch": 64}})
    assert plan.cluster.gpu.hbm_gb == 40.0 and plan.cluster.gpu.tflops_bf16 == 312.0
