"""Issue 17 presets and automatic uneven pipeline stages.

Presets of today's GPUs / clusters / Llama 2 load, validate and carry their
sources; a power cap slows the kernels by the cube law but not the MFU peak;
pp * vpp that does not divide the layers is split as published runs split it
(Llama 3: one layer fewer on the first and the last stage), per chunk.
"""

from __future__ import annotations

import inspect

import pytest

import sandbox
from sandbox import counts, memory, presets
from sandbox.errors import PlanError
from sandbox.layout import chunk_layers, chunk_sizes, rank_chunk_sizes, split_blocks, stage_layers
from sandbox.profile import Profile
from sim import compute, simulate

NEW_GPUS = ("h100-sxm", "h100-sxm-96g", "h200-sxm", "b200", "gb200")
NEW_CLUSTERS = ("dgx-h100", "dgx-h200", "dgx-b200", "gb200-nvl72", "grand-teton-h100")


def _tiny_on(cluster: dict, **parallel) -> sandbox.specs.Plan:
    return sandbox.load({"model": {"preset": "tiny"}, "cluster": cluster,
                         "parallel": {"global_batch": 64, **parallel}})


# ------------------------------------------------------------------ presets
@pytest.mark.parametrize("name", NEW_CLUSTERS)
def test_cluster_presets_load_validate_and_cite_a_source(name):
    plan = sandbox.load({"model": {"preset": "llama3-8b"}, "cluster": {"preset": name},
                         "parallel": {"global_batch": 576}})
    c = plan.cluster
    assert c.name == name and c.gpu.name == presets.CLUSTERS[name]["gpu"]
    assert c.nics_per_node == c.gpus_per_node and c.nic_gbit_per_s == 400.0  # one 400G rail per GPU
    assert c.intra_node_gb_per_s == (900.0 if c.gpu.name in ("b200", "gb200") else 450.0)
    src = inspect.getsource(presets)
    before = src[:src.index(f'    "{name}": {{')].rstrip().splitlines()[-1]
    assert before.lstrip().startswith("#"), f"{name}: no source comment above the preset"


@pytest.mark.parametrize("name", NEW_GPUS)
def test_gpu_presets_have_datasheet_fields_and_sources(name):
    g = presets.GPUS[name]
    assert g["tdp_w"] > 0 and g["tflops_fp8"] == pytest.approx(2 * g["tflops_bf16"], rel=1e-3)
    src = inspect.getsource(presets)
    before = src[:src.index(f'    "{name}": {{')].rstrip().splitlines()[-1]
    assert before.lstrip().startswith("#"), f"{name}: no source comment above the preset"


def test_nvl72_is_one_72_gpu_nvlink_domain_and_two_racks_simulate():
    plan = sandbox.load({"model": {"preset": "llama3-8b"},
                         "cluster": {"preset": "gb200-nvl72", "nodes": 2},
                         "parallel": {"tp": 8, "pp": 2, "dp": 9, "global_batch": 72}})
    assert plan.cluster.gpus_per_node == 72 and plan.world_size == 144
    r = simulate(plan, timeline=False)
    assert r.step_time_s > 0 and 0 < r.mfu < 1 and r.sim_wall_s < 5


@pytest.mark.parametrize("name,billions", [("llama2-7b", 6.74), ("llama2-13b", 13.02),
                                           ("llama2-70b", 68.98)])
def test_llama2_parameter_counts(name, billions):
    m = sandbox.load({"model": {"preset": name}}).model
    assert (m.vocab, m.seq_len, m.rope_theta, m.norm_eps) == (32000, 4096, 10000.0, 1e-5)
    assert counts.param_count(m) / 1e9 == pytest.approx(billions, rel=0.002)


# ---------------------------------------------------------------- power cap
def test_sustained_fraction_is_the_cube_root_of_the_power_ratio():
    capped = sandbox.load({"model": {"preset": "tiny"}, "cluster": {"preset": "grand-teton-h100"},
                           "parallel": {"global_batch": 64}}).cluster.gpu
    assert capped.sustained_fraction() == pytest.approx((500 / 700) ** (1 / 3))
    assert capped.sustained_fraction() == pytest.approx(0.8939, abs=1e-4)
    from dataclasses import replace
    assert replace(capped, power_limit_w=0.0).sustained_fraction() == 1.0  # 0 = the TDP
    assert replace(capped, power_limit_w=900.0).sustained_fraction() == 1.0  # above: no boost
    assert replace(capped, tdp_w=0.0).sustained_fraction() == 1.0  # unknown TDP


def test_power_cap_slows_the_kernels_but_not_the_mfu_peak():
    cap = _tiny_on({"preset": "grand-teton-h100", "nodes": 1})
    full = cap.replace(**{"cluster.gpu.power_limit_w": 0.0})
    prof = Profile()
    frac = cap.cluster.gpu.sustained_fraction()
    assert compute.device_of(cap, prof).peak_flops == pytest.approx(
        frac * compute.device_of(full, prof).peak_flops)
    # (default profile: the tiny model would be host-bound under the fitted H100 one)
    a, b = simulate(cap, timeline=False, profile=prof), simulate(full, timeline=False,
                                                                  profile=prof)
    assert a.step_time_s > b.step_time_s
    # MFU against the datasheet peak in both: mfu * step time = FLOPs / (GPUs * peak)
    assert a.mfu * a.step_time_s == pytest.approx(b.mfu * b.step_time_s, rel=1e-12)


def test_negative_power_fields_are_refused_by_name():
    for field in ("tdp_w", "power_limit_w"):
        with pytest.raises(PlanError, match=f"cluster.gpu.{field}"):
            _tiny_on({"preset": "grand-teton-h100", "nodes": 1, "gpu": {field: -1.0}})


# ------------------------------------------------------ uneven pipeline split
@pytest.mark.parametrize("layers,chunks,expected", [
    (126, 8, [15] + [16] * 6 + [15]),
    (126, 16, [7] + [8] * 14 + [7]),
    (24, 4, [6, 6, 6, 6]),
    (9, 4, [2, 2, 3, 2]),  # deficit 3: first, last, second
    (5, 4, [1, 1, 2, 1]),
])
def test_split_blocks_takes_the_deficit_from_the_ends_alternately(layers, chunks, expected):
    assert split_blocks(layers, chunks) == expected


def test_interleaved_chunks_are_uneven_per_chunk():
    plan = sandbox.load({"model": {"preset": "llama3-405b"},
                         "cluster": {"preset": "dgx-h100", "nodes": 16},
                         "parallel": {"tp": 8, "pp": 8, "vpp": 2, "dp": 2, "global_batch": 16,
                                      "schedule": "interleaved-1f1b"}})
    assert chunk_sizes(plan) == [7] + [8] * 14 + [7]
    assert stage_layers(plan) == [15] + [16] * 6 + [15]  # chunks r and r + 8
    assert rank_chunk_sizes(plan)[0] == [7, 8] and rank_chunk_sizes(plan)[7] == [8, 7]
    assert chunk_layers(plan)[-1] == range(119, 126)
    # the first pipeline rank's peak: min(m v, 2 (p - 1) + (v - 1) p + 1) = 16 chunk
    # forwards in Megatron's order (chunk (k // p) % v): 8 of chunk 0 (7 blocks), 8 of chunk 8
    assert memory.layers_in_flight(plan, 0) == 8 * 7 + 8 * 8


def test_sim_costs_follow_the_chunk_sizes():
    """5 layers on pp 2 x vpp 2: chunks [1, 1, 2, 1]; rank 0's second chunk
    (virtual stage 2, 2 blocks) costs twice rank 1's first (1 block)."""
    from sim.costs import stage_costs
    from sim.network.topology import build

    plan = sandbox.load({"model": {"preset": "tiny", "layers": 5},
                         "cluster": {"preset": "dgx-h100", "nodes": 1, "gpus_per_node": 2},
                         "parallel": {"pp": 2, "vpp": 2, "schedule": "interleaved-1f1b",
                                      "global_batch": 8}})
    prof = Profile()
    dev = compute.device_of(plan, prof)
    cost, _ = stage_costs(plan, build(plan.cluster), prof, [dev] * 2, [1.0] * 2,
                          stage_layers(plan))
    assert stage_layers(plan) == [3, 2]
    assert cost[(0, 1, "F")].compute_s == pytest.approx(2 * cost[(1, 0, "F")].compute_s)


def test_llama3_405b_on_16_stages_simulates_without_stage_layers():
    plan = sandbox.load({"model": {"preset": "llama3-405b"},
                         "cluster": {"preset": "dgx-h100", "nodes": 16},
                         "parallel": {"tp": 8, "pp": 16, "dp": 1, "global_batch": 16}})
    assert stage_layers(plan) == [7] + [8] * 14 + [7]
    r = simulate(plan, timeline=False)
    assert r.step_time_s > 0 and r.flops_per_step == counts.model_flops_per_step(plan.model, 16)


def test_more_chunks_than_layers_is_refused():
    with pytest.raises(PlanError, match="parallel.pp"):
        sandbox.load({"model": {"preset": "tiny", "layers": 3},
                      "cluster": {"preset": "localhost"},
                      "parallel": {"pp": 2, "vpp": 3, "schedule": "interleaved-1f1b",
                                   "global_batch": 8}})
