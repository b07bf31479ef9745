"""Pin the shared formulas to published figures."""

import functools

import pytest

import sandbox
from sandbox import counts, memory


def model(name: str):
    return sandbox.load({"model": {"preset": name}}).model


def test_gpt3_175b_has_174_6_billion_parameters():
    assert counts.param_count(model("gpt3-175b")) / 1e9 == pytest.approx(174.6, abs=0.05)


@pytest.mark.parametrize("name,billions", [
    ("gpt2-124m", 0.124), ("gpt2-350m", 0.355), ("gpt3-1.3b", 1.32),
    ("megatron-1t", 1008.0), ("llama3-8b", 8.03), ("llama3-70b", 70.55),
    ("llama3-405b", 405.85)])
def test_preset_parameter_counts_match_published_sizes(name, billions):
    assert counts.param_count(model(name)) / 1e9 == pytest.approx(billions, rel=0.005)


def test_gpt_mini_is_about_ten_million_parameters():
    assert 8e6 < counts.param_count(model("gpt-mini")) < 12e6


@pytest.mark.parametrize("name", ["gpt2-124m", "gpt3-1.3b", "gpt3-175b", "megatron-1t"])
@pytest.mark.parametrize("batch", [1, 512])
def test_per_matmul_flops_equal_narayanan_for_gpt(name, batch):
    m = model(name)
    n = counts.narayanan_flops(batch, m.seq_len, m.layers, m.hidden, m.vocab)
    assert counts.model_flops_per_step(m, batch) == pytest.approx(n, rel=1e-12)
    full = counts.narayanan_flops(batch, m.seq_len, m.layers, m.hidden, m.vocab, True)
    assert counts.hardware_flops_per_step(m, batch, "full") == pytest.approx(full, rel=1e-12)


def test_full_recompute_costs_about_8_flops_per_parameter_per_token():
    # Narayanan et al. 2021, eq. 4: end-to-end time ~ 8 T P / (n X) with recompute.
    m = model("gpt3-175b")
    per_token = counts.hardware_flops_per_step(m, 1, "full") / m.seq_len
    assert per_token / counts.param_count(m) == pytest.approx(8.0, rel=0.03)
    assert counts.model_flops_per_step(m, 1) / m.seq_len / counts.param_count(m) == (
        pytest.approx(6.0, rel=0.03))


def test_gqa_swiglu_flops_count_every_matmul():
    m = model("llama3-8b")
    h, q, kv, f, s, v = m.hidden, m.q_dim, m.kv_dim, m.ffn_hidden, m.seq_len, m.vocab
    per_token = m.layers * (2 * (h * q + 2 * h * kv + q * h + 3 * h * f) + 4 * s * q) + 2 * h * v
    assert counts.model_flops_per_step(m, 3) == 3 * 3 * s * per_token
    assert counts.hardware_flops_per_step(m, 3, "selective") == pytest.approx(
        3 * 3 * s * per_token + 3 * s * m.layers * 4 * s * q)


# Korthikanti et al. 2022, Table 2 / eqs. 1-6: activation bytes per layer.
@pytest.mark.parametrize("name", ["gpt3-175b", "gpt3-1.3b", "megatron-1t"])
@pytest.mark.parametrize("t", [1, 2, 8])
def test_korthikanti_activation_formulas(name, t):
    m = model(name)
    s, b, h, a = m.seq_len, 2, m.hidden, m.heads
    act = functools.partial(memory.activation_bytes_per_layer, attention="eager")
    assert act(m, b, t, False, "none") == pytest.approx(
        s * b * h * (10 + 24 / t + 5 * a * s / (h * t)))
    if t > 1:
        assert act(m, b, t, True, "none") == pytest.approx(s * b * h / t * (34 + 5 * a * s / h))
        assert act(m, b, t, True, "selective") == pytest.approx(s * b * h / t * 34)
        assert act(m, b, t, True, "full") == pytest.approx(2 * s * b * h / t)
    assert act(m, b, t, False, "selective") == pytest.approx(s * b * h * (10 + 24 / t))
    assert act(m, b, t, False, "full") == pytest.approx(2 * s * b * h)
    assert act(m, b, 1, False, "none") == pytest.approx(s * b * h * (34 + 5 * a * s / h))


def test_sequence_parallel_plus_selective_recompute_saves_5x_on_175b():
    # Korthikanti et al. 2022, abstract: "reduces activation memory by 5x".
    m = model("gpt3-175b")
    tp_only = memory.activation_bytes_per_layer(m, 1, 8, False, "none", attention="eager")
    both = memory.activation_bytes_per_layer(m, 1, 8, True, "selective", attention="eager")
    assert tp_only / both > 5


# Megatron-LM docs (distributed optimizer): bytes per parameter.
@pytest.mark.parametrize("precision,plain,zero1",
                         [("bf16", 18, (6, 12)), ("fp16", 20, (4, 16)), ("fp32", 16, (8, 8))])
def test_bytes_per_parameter_match_megatron(precision, plain, zero1):
    w = memory.weight_bytes_per_param(precision)
    g = memory.grad_bytes_per_param(precision)
    o = memory.optimizer_bytes_per_param(precision)
    assert w + g + o == plain
    assert (w + g, o) == zero1  # with ZeRO-1: (w + g) + o / d


def _plan(**parallel):
    return sandbox.load({"model": {"preset": "gpt3-1.3b"},
                         "cluster": {"preset": "dgx-a100-80g", "nodes": 1},
                         "parallel": {"global_batch": 64, **parallel}})


def test_zero_stages_divide_the_right_terms():
    base = memory.memory_per_gpu(_plan(dp=8, zero=0))
    z1 = memory.memory_per_gpu(_plan(dp=8, zero=1))
    z2 = memory.memory_per_gpu(_plan(dp=8, zero=2))
    z3 = memory.memory_per_gpu(_plan(dp=8, zero=3))
    assert z1["optimizer"] == pytest.approx(base["optimizer"] / 8)
    assert (z1["params"], z1["grads"]) == (base["params"], base["grads"])
    assert z2["grads"] == pytest.approx(base["grads"] / 8)
    assert z2["params"] == base["params"]
    # ZeRO-3: the shard, plus two gathered FSDP units (computing, prefetched);
    # the largest unit of gpt3-1.3b's one stage is the root (embedding, final norm)
    m = model("gpt3-1.3b")
    root = counts.param_count(m) - m.layers * memory.layer_params_per_gpu(m, 1)
    assert root > memory.layer_params_per_gpu(m, 1)
    # FSDP2's shard is the fp32 master (4 bytes), the gathered units 16-bit
    assert z3["params"] == pytest.approx(2 * base["params"] / 8 + 2 * root * 2 / 1e9)
    assert z3["activations"] == base["activations"]
    # ZeRO 1 total = (2 + 4 + 12/d) bytes per parameter.
    n = counts.param_count(model("gpt3-1.3b"))
    weights = z1["params"] + z1["grads"] + z1["optimizer"]
    assert weights * 1e9 == pytest.approx(n * (6 + 12 / 8), rel=1e-9)


def test_microbatches_in_flight_by_schedule():
    common = {"model": {"preset": "gpt3-1.3b"}, "cluster": {"preset": "dgx-a100-80g", "nodes": 1}}
    def acts(**p):
        plan = sandbox.load({**common, "parallel": {"global_batch": 32, **p}})
        return memory.memory_per_gpu(plan, stage=0)["activations"]
    one = acts(pp=4, dp=2, schedule="1f1b", global_batch=2)  # a single microbatch
    assert acts(pp=4, dp=2, schedule="gpipe") == pytest.approx(16 * one)  # m = 16
    assert acts(pp=4, dp=2, schedule="1f1b") == pytest.approx(4 * one)  # p in flight
    assert acts(pp=4, dp=2, schedule="zero-bubble") == pytest.approx(4 * one)
    # Interleaved: p (1 + (p-1)/(p v)) microbatches' worth (Narayanan et al. 2021).
    assert acts(pp=4, dp=2, vpp=2, schedule="interleaved-1f1b") == pytest.approx(
        4 * (1 + 3 / 8) * one)
    last = sandbox.load({**common, "parallel": {"global_batch": 32, "pp": 4, "dp": 2}})
    assert memory.memory_per_gpu(last, stage=3)["activations"] == pytest.approx(one)


def test_info_contract_fields():
    f = sandbox.info(_plan(tp=2, dp=4)).to_dict()
    for key in ("params", "flops_per_step", "hw_flops_per_step", "world_size", "fits"):
        assert key in f
    assert set(f["memory_gb_per_gpu"]) >= {"params", "grads", "optimizer", "activations",
                                          "total"}
    mem = f["memory_gb_per_gpu"]
    assert mem["total"] == pytest.approx(sum(v for k, v in mem.items() if k != "total"))
    assert f["fits"] is True and f["world_size"] == 8


def test_175b_does_not_fit_on_one_node_without_sharding():
    plan = sandbox.load({"model": {"preset": "gpt3-175b"},
                         "cluster": {"preset": "dgx-a100-80g", "nodes": 1},
                         "parallel": {"tp": 8, "global_batch": 8, "zero": 0}})
    assert sandbox.info(plan)["fits"] is False


def test_uneven_stages_hold_their_own_layers():
    """`parallel.stage_layers` = [16, 8] on a 24-layer model: stage 0 holds 4
    more blocks' parameters and activations than the even split, stage 1 4
    fewer; the most loaded GPU is stage 0's."""
    def plan(**extra):
        return sandbox.load({"model": {"preset": "gpt3-1.3b"},
                             "cluster": {"preset": "dgx-a100-80g", "nodes": 1},
                             "parallel": {"pp": 2, "tp": 4, "global_batch": 16, "micro_batch": 1,
                                          **extra}})

    even, uneven = plan(), plan(stage_layers=[16, 8])
    m = even.model
    block = memory.layer_params_per_gpu(m, 4) * memory.weight_bytes_per_param("bf16") / memory.GB
    for stage, extra_blocks in ((0, 4), (1, -4)):
        a, b = memory.memory_per_gpu(even, stage), memory.memory_per_gpu(uneven, stage)
        assert b["params"] - a["params"] == pytest.approx(extra_blocks * block)
        assert b["activations"] / a["activations"] == pytest.approx((12 + extra_blocks) / 12)
    assert memory.memory_per_gpu(uneven)["stage"] == 0
