"""One test per validation rule: the message names the field."""

import pytest

import sandbox
from sandbox.errors import PlanError

BASE = {"model": {"preset": "gpt3-1.3b"}, "cluster": {"preset": "dgx-a100-80g", "nodes": 1},
        "parallel": {"global_batch": 64}}


def problems(**sections):
    data = {k: dict(v) for k, v in BASE.items()}
    for section, fields in sections.items():
        data.setdefault(section, {}).update(fields)
    with pytest.raises(PlanError) as e:
        sandbox.load(data)
    return e.value.problems


def one(field, **sections):
    found = problems(**sections)
    assert len(found) == 1, found
    assert found[0].startswith(field), found
    return found[0]


def test_world_size():
    msg = one("parallel", parallel={"dp": 2, "tp": 2, "pp": 1})
    assert "world size 8" in msg and "dp*tp*pp" in msg


def test_heads_divisible_by_tp():
    assert "model.heads" in one("parallel.tp", parallel={"tp": 3, "dp": 1},
                                cluster={"gpus_per_node": 3})


def test_kv_heads_divisible_by_tp():
    sandbox.load({**BASE, "model": {"preset": "llama3-8b"}, "parallel": {"tp": 8}})
    msg = one("parallel.tp", model={"preset": "llama3-8b", "kv_heads": 4}, parallel={"tp": 8})
    assert "model.kv_heads = 4" in msg


def test_every_chunk_needs_a_block():
    """pp*vpp need not divide the layers (the layout cuts them unevenly), but
    more chunks than layers leave a chunk empty."""
    sandbox.load({**BASE, "parallel": {"pp": 8, "vpp": 2, "schedule": "interleaved-1f1b"}})
    msg = one("parallel.pp", parallel={"pp": 8, "vpp": 4, "schedule": "interleaved-1f1b"})
    assert "model.layers = 24" in msg


def test_global_batch_divisible_by_dp_times_micro_batch():
    msg = one("parallel.global_batch", parallel={"global_batch": 60, "micro_batch": 4})
    assert "dp*micro_batch" in msg


def test_vpp_needs_interleaved_schedule():
    one("parallel.vpp", parallel={"pp": 2, "vpp": 2})


def test_interleaved_needs_microbatches_divisible_by_pp():
    one("parallel.schedule", parallel={"pp": 4, "vpp": 2, "schedule": "interleaved-1f1b",
                                       "global_batch": 6, "dp": 2})


def test_interleaved_needs_vpp():
    one("parallel.schedule", parallel={"pp": 2, "schedule": "interleaved-1f1b"})


@pytest.mark.parametrize("section,field", [
    ("model", "layers"), ("model", "hidden"), ("model", "heads"), ("model", "vocab"),
    ("model", "seq_len"), ("cluster", "nodes"), ("cluster", "gpus_per_node"),
    ("parallel", "tp"), ("parallel", "pp"), ("parallel", "micro_batch"),
    ("parallel", "global_batch"), ("parallel", "vpp"), ("train", "steps"), ("train", "lr")])
@pytest.mark.parametrize("value", [0, -4])
def test_non_positive_sizes(section, field, value):
    found = problems(**{section: {field: value}})
    assert any(p.startswith(f"{section}.{field}: must be positive") for p in found), found


def test_negative_rates():
    one("cluster.gpu_mtbf_h", cluster={"gpu_mtbf_h": -1.0})


def test_wrong_types():
    assert "expected an integer" in one("parallel.tp", parallel={"tp": "two"})
    assert "expected a number" in one("train.lr", train={"lr": "fast"})
    assert "expected true or false" in one("parallel.sequence_parallel",
                                           parallel={"sequence_parallel": "yes"})
    assert "expected an integer" in one("model.layers", model={"layers": 2.5})


@pytest.mark.parametrize("section,field,value,suggestion", [
    ("parallel", "schedule", "1fb1", "1f1b"), ("parallel", "recompute", "selectve", "selective"),
    ("train", "precision", "bf61", "bf16"), ("parallel", "dp_mode", "allreduc", "allreduce"),
    ("model", "activation", "gelu2", "gelu"), ("cluster", "topology", "fattree", "fat-tree"),
    ("train", "lr_schedule", "cosin", "cosine")])
def test_unknown_choices_suggest(section, field, value, suggestion):
    msg = one(f"{section}.{field}", **{section: {field: value}})
    assert f"did you mean '{suggestion}'" in msg


def test_zero_stage_range():
    one("parallel.zero", parallel={"zero": 4})


def test_grad_compression_syntax():
    one("parallel.grad_compression", parallel={"grad_compression": "topk:2"})
    sandbox.load({**BASE, "parallel": {"global_batch": 64, "grad_compression": "powersgd:4"}})


def test_zero_needs_allreduce():
    one("parallel.zero", parallel={"zero": 1, "dp_mode": "parameter-server"})


def test_fp8_needs_hardware_support():
    one("train.precision", train={"precision": "fp8"})
    sandbox.load({**BASE, "cluster": {"preset": "dgx-h100", "nodes": 1},
                  "train": {"precision": "fp8"}})


def test_fp8_fields_and_hsdp_shard_groups():
    h100 = {"preset": "dgx-h100", "nodes": 1}
    assert "did you mean 'rowwise'" in one("train.fp8_recipe", cluster=h100,
                                            train={"precision": "fp8", "fp8_recipe": "rowise"})
    one("train.fp8_all_gather", train={"fp8_all_gather": True})
    one("train.fp8_all_gather", cluster=h100,
        train={"precision": "fp8", "fp8_recipe": "rowwise", "fp8_all_gather": True})
    one("parallel.dp_shard", cluster=h100, parallel={"dp": 8, "zero": 3, "dp_shard": 3})
    one("parallel.dp_shard", cluster=h100, parallel={"dp": 8, "zero": 3, "dp_shard": 1})
    one("parallel.dp_shard", cluster=h100, parallel={"dp": 8, "zero": 0, "dp_shard": 4})
    one("parallel.dp_shard", cluster=h100, parallel={"dp": 8, "zero": 3, "dp_shard": -2})
    sandbox.load({**BASE, "cluster": h100, "parallel": {"dp": 8, "global_batch": 64, "zero": 3,
                                                        "dp_shard": 4},
                  "train": {"precision": "fp8", "fp8_all_gather": True}})


def test_hidden_divisible_by_heads():
    one("model.hidden", model={"hidden": 2050})


def test_unknown_keys_and_presets_suggest():
    assert "did you mean 'layers'" in one("model.layer", model={"layer": 3})
    assert "did you mean 'gpt3-175b'" in one("model.preset", model={"preset": "gpt3-157b"})
    assert "did you mean 'dgx-h100'" in one("cluster.preset", cluster={"preset": "dgx-h10"})
    assert "did you mean 'parallel'" in one("paralel", paralel={"tp": 2})
    assert "did you mean 'h100-sxm'" in one("cluster.gpu.preset", cluster={"gpu": "h100-smx"})


def test_missing_fields_without_preset():
    found = problems(model={"preset": None, "layers": 2})
    assert any(p.startswith("model.hidden: missing") for p in found)


def test_every_problem_reported_once_per_line():
    found = problems(parallel={"tp": 0, "schedule": "nope"}, train={"steps": 0})
    assert len(found) == 3 and all("\n" not in p for p in found)
