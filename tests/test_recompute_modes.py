"""Recompute "op" (torchtitan's per-op SAC) and "layer" (every 2nd block): the
runtime's numerics and re-run matmuls, and the closed forms of memory and cost."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import sandbox
from runtime.model import build_model
from runtime.parallel.recompute import MATMULS, apply_recompute
from sandbox import counts, memory
from sandbox import recompute as rc
from sandbox.errors import PlanError


class _CountMatmuls(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += func in MATMULS
        return func(*args, **(kwargs or {}))


def _grads(mode: str, preset: str = "tiny-llama") -> tuple[torch.Tensor, list, int]:
    spec = sandbox.load({"model": {"preset": preset}, "cluster": {"preset": "localhost"},
                         "parallel": {"global_batch": 2, "micro_batch": 2}}).model
    model = build_model(spec, seed=0)
    apply_recompute(model, mode)
    ids = torch.randint(0, spec.vocab, (2, spec.seq_len + 1), generator=torch.Generator()
                        .manual_seed(0))
    logits = model(ids[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
    with _CountMatmuls() as mm:
        loss.backward()
    return loss.detach(), [p.grad for p in model.parameters()], mm.n


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny"])
def test_op_and_layer_match_no_recompute_and_rerun_the_expected_matmuls(preset: str) -> None:
    base_loss, base, base_mm = _grads("none", preset)
    spec = sandbox.load({"model": {"preset": preset}, "cluster": {"preset": "localhost"},
                         "parallel": {"global_batch": 2}}).model
    linears = len(rc.block_linears(spec))
    full_mm = _grads("full", preset)[2]
    # every linear's forward again but the last: the non-reentrant checkpoint stops
    # once backward has what it needs (`early_stop`), and the MLP's output only
    # feeds the residual add
    assert full_mm - base_mm == spec.layers * (linears - 1)
    for mode, extra in (("op", spec.layers * len(rc.op_recomputed_linears(spec))),
                        ("layer", rc.layer_checkpointed(spec.layers) * (linears - 1))):
        loss, grads, mm = _grads(mode, preset)
        assert mm - base_mm == extra, mode
        assert loss.item() == pytest.approx(base_loss.item(), rel=1e-6)
        for g, g0 in zip(grads, base, strict=True):
            torch.testing.assert_close(g, g0, rtol=1e-6, atol=1e-7)


def test_op_policy_keeps_odd_matmuls_of_a_llama_block() -> None:
    spec = sandbox.load({"model": {"preset": "llama3-8b"}, "cluster": {"preset": "localhost"},
                         "parallel": {"global_batch": 8}}).model
    assert rc.op_saved_linears(spec) == ("wq", "wv", "w1", "w2")
    assert [x[0] for x in rc.op_recomputed_linears(spec)] == ["wk", "wo", "w3"]
    # Float8Linear's torch.mm on Float8Tensor reaches the SAC mode as aten.mm: kept alike
    assert rc.op_saved_linears(spec, "fp8") == rc.op_saved_linears(spec)


def _plan(rec: str, **par) -> sandbox.specs.Plan:
    return sandbox.load({"model": {"preset": "llama3-8b", "seq_len": 8192},
                         "cluster": {"preset": "dgx-h100", "nodes": 1},
                         "parallel": {"dp": 8, "micro_batch": 1, "global_batch": 8, "zero": 3,
                                      "recompute": rec, **par},
                         "train": {"attention": "flash", "precision": "bf16"}})


def test_op_stored_bytes_closed_form() -> None:
    m = _plan("op").model
    s, h, q, kv, f, a = 8192, 4096, 4096, 1024, 14336, 32
    # input, wq, wv, w1, w2 outputs, flash O and fp32 logsumexp (bf16, no TP)
    want = s * (2 * (h + q + kv + f + h + q) + 4 * a)
    assert rc.op_saved_bytes_per_layer(m, 1) == want
    # TP 8 with SP: input / 8, column outputs / 8, w2's partial sums full, two RS outputs
    t = 8
    want_tp = s * (2 * (h / t + q / t + kv / t + f / t + h + q / t + 2 * h / t) + 4 * a / t)
    assert rc.op_saved_bytes_per_layer(m, 1, t, True) == pytest.approx(want_tp)


def test_layer_mixes_full_and_plain_blocks_and_costs_half_a_forward() -> None:
    none, full, layer = (memory.stored_bytes_per_layer(_plan(r), 0)
                         for r in ("none", "full", "layer"))
    assert layer == pytest.approx((none + full) / 2)  # 32 blocks: 16 checkpointed
    m = _plan("none").model
    block = counts.layer_matmul_flops_per_token(m) + counts.layer_attention_flops_per_token(m)
    assert counts.recompute_flops_per_token(m, "layer") == 16 * block
    assert counts.recompute_flops_per_token(m, "op") == 32 * 2 * (1024 * 4096 + 4096 * 4096
                                                                    + 14336 * 4096)


def test_recompute_working_set_is_one_rematerialised_block() -> None:
    none = memory.flash_activation_bytes_per_layer(_plan("none").model, 1)
    s, h, q, kv, f, a = 8192, 4096, 4096, 1024, 14336, 32
    assert memory.recompute_working_bytes(_plan("full")) == none - s * h * 2
    assert memory.recompute_working_bytes(_plan("layer")) == none - s * h * 2
    kept = s * (2 * (h + q + kv + f) + 4 * a)  # input, O, lse, V, gate
    assert memory.recompute_working_bytes(_plan("op")) == none - kept
    assert memory.recompute_working_bytes(_plan("none")) == 0
    assert memory.recompute_working_bytes(_plan("selective")) == 0


def test_loss_logits_and_fsdp_unit_gradient() -> None:
    p = _plan("full")
    logits = 8192 * 128256
    assert memory.loss_bytes(p, 0) == 12 * logits  # fp32 log-softmax out, its grad, grad in
    block = memory.layer_params_per_gpu(p.model, 1)
    assert memory.fsdp_reduce_bytes(p) == block * (2 + 4)  # bf16 unsharded + fp32 RS input
    assert memory.fsdp_reduce_bytes(p.replace(zero=1)) == 0
    work = memory.backward_working_bytes(p, 0)
    assert work == max(12 * logits, memory.recompute_working_bytes(p) + block * 6)
    assert memory.memory_per_gpu(p)["other"] == pytest.approx(work / 1e9)
    eager = sandbox.load({**_dict("full"), "train": {"attention": "eager"}})
    assert memory.loss_bytes(eager, 0) == 4 * logits  # Megatron's fused fp32 cross-entropy


def _dict(rec: str) -> dict:
    return {"model": {"preset": "llama3-8b", "seq_len": 8192},
            "cluster": {"preset": "dgx-h100", "nodes": 1},
            "parallel": {"dp": 8, "micro_batch": 1, "global_batch": 8, "recompute": rec}}


def test_op_needs_flash_attention() -> None:
    with pytest.raises(PlanError, match="parallel.recompute"):
        sandbox.load({**_dict("op"), "train": {"attention": "eager"}})


def test_sim_prices_op_between_none_and_full() -> None:
    from sim import simulate

    t = {r: simulate(_plan(r), timeline=False).step_time_s for r in ("none", "op", "full")}
    assert t["none"] < t["op"] < t["full"]
