"""train.attention (flash | eager) and train.compile: memory, FLOPs and kernel
costs in closed form, and the runtime's eager core against SDPA."""

import json

import pytest

import sandbox
from sandbox import counts, memory
from sandbox.profile import Profile
from sim import block_kernels, compute, host


def llama8k(**train):
    return sandbox.load({"model": {"preset": "llama3-8b"},
                         "cluster": {"preset": "dgx-h100", "nodes": 1},
                         "parallel": {"dp": 8, "micro_batch": 1, "global_batch": 64,
                                      "recompute": "none"},
                         "train": train})


def test_llama3_8b_8k_flash_memory_is_the_per_tensor_sum():
    """Llama 3 8B, 8K tokens, micro-batch 1, no recompute: per token and layer
    (bf16) two RMSNorm inputs + rstd, the QKV and MLP inputs, Q, K, V (GQA:
    1024 wide), O, the fp32 logsumexp of 32 heads and SwiGLU's gate, up,
    silu(gate), product; eager keeps the 5 a s^2 b scores on top (454 GB)."""
    h, kv, f, heads, s, layers = 4096, 1024, 14336, 32, 8192, 32
    per_token = (2 * (2 * h + 4) + 2 * 2 * h + 2 * (h + kv + kv + h) + 4 * heads
                 + 4 * 2 * f)
    assert per_token == 168072
    flash = memory.memory_per_gpu(llama8k())
    assert flash["activations"] == pytest.approx(layers * s * per_token / 1e9, rel=1e-12)
    eager = memory.memory_per_gpu(llama8k(attention="eager"))
    # (flash plans also count the fp32 cross-entropy working set: 12 bytes per logit)
    assert eager["total"] > 450 and flash["total"] < eager["total"] / 3.5
    for k in ("params", "grads", "optimizer"):
        assert flash[k] == eager[k]
    # selective recompute under flash frees only the logsumexp; full keeps the inputs
    sel = memory.memory_per_gpu(llama8k().replace(recompute="selective"))
    assert flash["activations"] - sel["activations"] == pytest.approx(
        layers * s * 4 * heads / 1e9, rel=1e-9)
    full = memory.memory_per_gpu(llama8k().replace(recompute="full"))
    assert full["activations"] == pytest.approx(layers * s * 2 * h / 1e9, rel=1e-12)


def test_eager_gpt_block_is_korthikanti_and_flash_drops_scores_and_masks():
    plan = sandbox.load({"model": {"preset": "gpt3-1.3b"},
                         "cluster": {"preset": "dgx-a100-80g", "nodes": 1},
                         "parallel": {"recompute": "none"},
                         "train": {"attention": "eager", "precision": "bf16"}})
    m, b = plan.model, plan.parallel.micro_batch
    s, h, a = m.seq_len, m.hidden, m.heads
    eager = memory.memory_per_gpu(plan)["activations"]
    assert eager == pytest.approx(m.layers * s * b * h * (34 + 5 * a * s / h) / 1e9, rel=1e-12)
    # flash, GPT block (LayerNorm: mean + rstd, GeLU, no dropout): 32 h + 4 a + 16 per token
    flash = memory.activation_bytes_per_layer(m, b, attention="flash")
    assert flash == pytest.approx(s * b * (32 * h + 4 * a + 16), rel=1e-12)


def test_causal_fraction_and_executed_flops():
    assert counts.causal_fraction(8192) == (8192 + 128) / (2 * 8192)
    assert counts.causal_fraction(200) == pytest.approx((128 * 128 + 72 * 200) / 200 ** 2)
    assert counts.causal_fraction(64) == 1.0
    m = llama8k().model
    square = 8192 * counts.layer_attention_flops_per_token(m)
    assert square == 4 * 8192 * 8192 * 4096
    fwd = counts.attention_flops_executed(m, 8192)
    assert fwd == pytest.approx(counts.causal_fraction(8192) * square, rel=1e-12)
    assert counts.attention_flops_executed(m, 8192, backward=True) == pytest.approx(2.5 * fwd)
    # MFU keeps the square: model FLOPs do not depend on the attention kind
    assert sandbox.info(llama8k()).to_dict()["flops_per_step"] == sandbox.info(
        llama8k(attention="eager")).to_dict()["flops_per_step"]


def test_flash_kernel_priced_on_executed_flops():
    """A flat attention curve (1 TFLOP/s), no launch cost, HBM never binding:
    the fused kernel takes causal-fraction x square / rate forward, 2.5x that
    backward, and selective recompute re-runs that forward."""
    plan = llama8k()
    prof = Profile(attention=((1e3, 1e12), (1e18, 1e12)), kernel_overhead_s=0.0,
                   memory_bytes_per_s=1e18)
    d = compute.device_of(plan, prof)
    fwd, bwd = compute.flash_times(plan, d)
    m = plan.model
    square = 2 * 2 * 8192 * 8192 * m.head_dim * m.heads
    assert fwd == pytest.approx(counts.causal_fraction(8192) * square / 1e12, rel=1e-12)
    assert bwd == pytest.approx(2.5 * fwd, rel=1e-12)
    assert compute.layer_times(plan, d).attn_core == fwd
    eager = compute.layer_times(plan.replace(attention="eager"), d)
    # eager: two GEMMs over the full square (softmax's bytes free here)
    assert eager.attn_core == pytest.approx(fwd / counts.causal_fraction(8192), rel=1e-6)


def test_compile_fuses_elementwise_chains():
    """torch.compile: RoPE (3 kernels per tensor -> 1), residual add + norm
    (2 -> 1), silu * up (2 -> 1); the bytes saved are exactly the
    intermediates no longer written and read back."""
    plain, comp = llama8k(), llama8k(compile=True)
    ke, kc = block_kernels.elementwise_kernels(plain), block_kernels.elementwise_kernels(comp)
    assert (len(ke), len(kc)) == (12, 6)
    m, tokens, w = plain.model, 8192, 2
    saved = (16 * tokens * (m.q_dim + m.kv_dim)  # fp32 round trip of RoPE
             + w * tokens * m.hidden  # residual stream read again by the norm
             + 2 * w * tokens * m.ffn_hidden)  # silu(gate) written and read
    assert sum(ke) - sum(kc) == pytest.approx(saved, rel=1e-12)
    d = compute.device_of(plain, Profile())
    assert compute.layer_times(comp, d).fwd < compute.layer_times(plain, d).fwd
    he, hc = host.host_ops(plain), host.host_ops(comp)
    assert (he.block_fwd - hc.block_fwd, he.block_bwd_input - hc.block_bwd_input) == (6, 6)
    assert host.host_ops(plain.replace(attention="eager")).block_fwd == 10  # Megatron's kernels


def test_attention_field_validated_and_info_json_shows_flash(capsys, tmp_path):
    from sandbox import cli
    from sandbox.errors import SandboxError

    with pytest.raises(SandboxError, match=r"train.attention.*did you mean 'flash'"):
        sandbox.load({"model": {"preset": "tiny"}, "train": {"attention": "flsh"}})
    plan = tmp_path / "p.toml"
    plan.write_text('[model]\npreset = "llama3-8b"\n[cluster]\npreset = "dgx-h100"\nnodes = 1\n'
                    '[parallel]\ndp = 8\nglobal_batch = 64\nrecompute = "none"\n')
    assert cli.main(["info", str(plan), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["memory_gb_per_gpu"]["activations"] == pytest.approx(
        memory.memory_per_gpu(llama8k())["activations"])


def test_calibrated_attention_curve_gives_the_measured_time_back():
    """The CPU calibration's attention point (causal SDPA fwd+bwd) makes the
    simulator's flash kernel take exactly the measured seconds."""
    from types import SimpleNamespace as NS

    from runtime.calibrate.profile import compute_section
    from sandbox.profile import profile_from_dict

    plan = sandbox.load({"model": {"preset": "tiny"}, "parallel": {"micro_batch": 2}})
    m = plan.model
    t = 0.0125
    att = NS(kind="attention", pass_="fwd+bwd", name="sdpa", bytes=0.0,
             shape=(2, m.heads, m.seq_len, m.head_dim), time=NS(median=t))
    add = NS(kind="memory", pass_="fwd", name="add", bytes=1e6, shape=(1,), time=NS(median=1e-4))
    sec = compute_section(NS(kernels=[att, add], peak_flops=1e11), "cpu", (1, 1, 1))
    prof = profile_from_dict({"compute": sec}, "test").replace(memory_bytes_per_s=1e18,
                                                                kernel_overhead_s=0.0)
    fwd, bwd = compute.flash_times(plan, compute.device_of(plan, prof))
    assert fwd + bwd == pytest.approx(t, rel=1e-9)


def test_runtime_eager_attention_matches_sdpa():
    """The explicit matmul-mask-softmax-matmul core equals SDPA (fp32, GQA, RoPE)
    in output and gradients."""
    import torch

    from runtime.model import Attention

    spec = sandbox.load({"model": {"preset": "tiny", "kv_heads": 2, "position": "rope"}}).model
    torch.manual_seed(0)
    attn = Attention(spec)
    x = torch.randn(2, 16, spec.hidden, requires_grad=True)
    outs = []
    for eager in (False, True):
        attn.eager = eager
        attn.zero_grad()
        x.grad = None
        y = attn(x)
        y.square().sum().backward()
        outs.append((y.detach(), x.grad.clone(), attn.wq.weight.grad.clone()))
    for a, b in zip(*outs, strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)
