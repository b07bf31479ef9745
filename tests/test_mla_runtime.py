"""Multi-head latent attention in the runtime (issue 18): the module against the
equations written out per head, and every parallel layout of `tiny-mla`
against one process (gloo on CPU, fp32, seed 0, a few steps), within 1e-4
relative as in tests/test_parallel_agreement.py. Under tp 2 every parameter's
gradient of one step is also compared with one process's (losses alone barely
see a missing reduction of the small shared RoPE key's gradient).

Run with `-s` to print the table of max relative differences.
"""

from __future__ import annotations

import math
import time
import traceback
from contextlib import contextmanager

import pytest
import torch
from helpers.parallel import batch, plan_of, single_process, train
from torch.distributed.tensor import DTensor

import sandbox
from runtime.model import apply_rope, build_model, rope_cos_sin
from runtime.parallel.mesh import build_mesh
from runtime.parallel.parallelize import parallelize
from runtime.spawn import Worker, spawn

TOL = 1e-4
STEPS = 6
MLA = {"model": "tiny-mla"}
CASES_2 = {  # recompute "selective" (the plan default) unless stated
    "tp2, no recompute": dict(tp=2, sequence_parallel=False, recompute="none"),
    "tp2 + sp": dict(tp=2, sequence_parallel=True),
    "tp2 + sp, full-rank q": dict(tp=2, model_fields={"q_lora_rank": 0}),
    "tp2 + sp, eager attention": dict(tp=2, train={"attention": "eager"}),
    "dp2 ZeRO-1": dict(dp=2, zero=1),
    "dp2 ZeRO-3": dict(dp=2, zero=3),
    "pp2 1f1b": dict(pp=2, schedule="1f1b"),
}


def _reference_attention(att, x: torch.Tensor) -> torch.Tensor:
    """MLA written out head by head from DeepSeek-V2's equations (9)-(19)."""
    b, s, _ = x.shape
    nope, rope, dv = att.nope, att.rope_dim, att.v_dim
    n = att.wkv_b.out_features // (nope + dv)
    cq = att.q_norm(x @ att.wq_a.weight.T) if att.q_rank else x
    wq = (att.wq_b if att.q_rank else att.wq).weight
    ckv_kr = x @ att.wkv_a.weight.T
    ckv, kr = att.kv_norm(ckv_kr[..., :att.kv_rank]), ckv_kr[..., att.kv_rank:]
    cos, sin = rope_cos_sin(s, rope, att.rope_theta)
    kr = apply_rope(kr[:, None], cos, sin)[:, 0]  # (b, s, rope), shared by the heads
    wkv = att.wkv_b.weight.view(n, nope + dv, att.kv_rank)
    wo = att.wo.weight.view(-1, n, dv)
    out = torch.zeros(b, s, wo.shape[0])
    future = torch.ones(s, s, dtype=torch.bool).triu(1)
    for i in range(n):
        qi = cq @ wq[i * (nope + rope):(i + 1) * (nope + rope)].T
        q_r = apply_rope(qi[:, None, :, nope:], cos, sin)[:, 0]
        qi = torch.cat([qi[..., :nope], q_r], -1)
        ki = torch.cat([ckv @ wkv[i, :nope].T, kr], -1)
        vi = ckv @ wkv[i, nope:].T
        scores = (qi @ ki.transpose(1, 2) / math.sqrt(nope + rope)).masked_fill(future, -1e30)
        out += (scores.softmax(-1) @ vi) @ wo[:, i].T
    return out


@pytest.mark.parametrize("q_lora_rank", [32, 0])
def test_latent_attention_follows_the_equations(q_lora_rank):
    spec = sandbox.load({"model": {"preset": "tiny-mla", "q_lora_rank": q_lora_rank}}).model
    att = build_model(spec, seed=1).layers["0"].attention
    with torch.no_grad():  # larger weights than the init so that RoPE and softmax matter
        for p in att.parameters():
            if p.dim() == 2:
                p.mul_(10.0)
    x = torch.randn(2, 24, spec.hidden, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, want = att(x), _reference_attention(att, x)
    assert want.abs().max() > 1e-2
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4), (got - want).abs().max()


_refs: dict = {}


@contextmanager
def one_thread():
    """Single-process references on one intra-op thread, as the spawned ranks
    run (tiny models: several threads only contend, badly on a loaded machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _overrides(case: dict) -> dict:
    return {**MLA, **case}


def reference(case: dict) -> dict:
    """One process's run of the case's model and training (the settings one
    process ignores reset, so that the cases share references)."""
    plan = single_process(plan_of(**_overrides(case))).replace(
        zero=1, recompute="selective", sequence_parallel=True)
    if plan not in _refs:
        with one_thread():
            _refs[plan] = train(plan, steps=STEPS)
    return _refs[plan]


def full_grads(plan, mesh) -> dict[str, torch.Tensor]:
    """Every parameter's gradient (whole, unsharded) after one step's backward."""
    par = parallelize(plan, mesh, torch.device("cpu"))
    x, y = batch(0, plan)
    par.step(x, y)
    return {n: (p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad).clone()
            for n, p in par.parts[0].named_parameters()}


def _worker(w: Worker, cases: dict, grad_cases: dict) -> dict:
    results = {}
    for name, overrides in {**cases, **grad_cases}.items():
        t0 = time.perf_counter()
        try:
            plan = plan_of(**overrides)
            mesh = build_mesh(plan, "cpu")
            results[name] = ({"grads": full_grads(plan, mesh)} if name in grad_cases
                             else train(plan, mesh, STEPS))
        except Exception:  # reported to the test, which fails on it
            results[name] = {"error": traceback.format_exc()}
        results[name]["wall_s"] = time.perf_counter() - t0
    return results


GRAD_CASES = {"grads tp2": dict(tp=2, sequence_parallel=False), "grads tp2 + sp": dict(tp=2)}


@pytest.fixture(scope="module")
def runs_2() -> dict:
    cases = {k: _overrides(v) for k, v in CASES_2.items()}
    grads = {k: _overrides(v) for k, v in GRAD_CASES.items()}
    return spawn(_worker, 2, cases, grads, timeout_s=600)[0]


@pytest.mark.parametrize("name", list(GRAD_CASES))
def test_mla_tensor_parallel_gradients_match_one_process(runs_2: dict, name: str) -> None:
    run = runs_2[name]
    assert "error" not in run, f"{name} failed:\n{run['error']}"
    with one_thread():
        ref = full_grads(single_process(plan_of(**_overrides(GRAD_CASES[name]))), None)
    assert run["grads"].keys() == ref.keys()
    worst = max((run["grads"][n] - g).abs().max().item() / g.abs().max().item()
                for n, g in ref.items())
    print(f"\n| {name:38s} | max gradient difference / max |gradient| {worst:.2e} |")
    assert worst < TOL


def max_rel(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) / abs(y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("name", list(CASES_2))
def test_mla_layouts_match_one_process(runs_2: dict, name: str) -> None:
    run = runs_2[name]
    assert "error" not in run, f"{name} failed:\n{run['error']}"
    ref = reference(CASES_2[name])
    loss, norm = max_rel(run["loss"], ref["loss"]), max_rel(run["grad_norm"], ref["grad_norm"])
    ev = abs(run["eval"] - ref["eval"]) / ref["eval"]
    print(f"\n| {name:38s} | loss {loss:.2e} | grad norm {norm:.2e} | eval {ev:.2e} "
          f"| {run['wall_s']:.1f} s |")
    assert ref["loss"][-1] < ref["loss"][0] - 0.3, "the reference run must learn something"
    assert loss < TOL, f"{name}: losses {run['loss']} vs single process {ref['loss']}"
    assert norm < TOL, f"{name}: grad norms {run['grad_norm']} vs {ref['grad_norm']}"
    assert ev < TOL, f"{name}: eval loss {run['eval']} vs {ref['eval']}"
