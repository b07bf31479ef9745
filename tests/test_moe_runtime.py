"""The runtime's mixture of experts (issue 18): the MoE block against a
per-token reference, and expert parallelism composed with dp, tp and pp
training the single-process model (gloo on CPU).

`tiny-moe` (4 experts, top-2, 1 shared expert, first block dense), fp32,
seed 0, dropless unless stated, 8 steps of constant-LR AdamW with clipping,
global batch 8 of micro_batch 2: per-step losses, global gradient norms
(AdamW is nearly blind to a gradient's scale, the norm is not), the logged
load-balancing loss and a final evaluation loss within 1e-4 (relative) of
one process. Run with `-s` for the table of differences.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers.parallel import plan_of, single_process, spawn_plans, train

import sandbox
from runtime.layers.moe import MoE, sequence_balance_loss
from runtime.model import build_model
from sandbox import counts

TOL = 1e-4
STEPS = 8
MOE = dict(model="tiny-moe", steps=STEPS)
CASES_2 = {
    "ep2 (DDP)": dict(MOE, dp=2, ep=2, zero=0),
    "ep2 ZeRO-3": dict(MOE, dp=2, ep=2, zero=3),
    "ep2 capacity 1.0": dict(MOE, dp=2, ep=2, model_fields={"capacity_factor": 1.0}),
    "tp2 + sp (expert TP, ep 1)": dict(MOE, tp=2),
}
CASES_4 = {
    "dp2 x ep2 (DDP)": dict(MOE, dp=4, ep=2, zero=0),
    "ep2 x tp2 (sp, ZeRO-1)": dict(MOE, dp=2, ep=2, tp=2),
    "pp2 x ep2 (1f1b, ZeRO-1)": dict(MOE, pp=2, dp=2, ep=2),
}

_refs: dict = {}


def _spec(**fields) -> sandbox.specs.Model:
    return sandbox.load({"model": {"preset": "tiny-moe", **fields}}).model


def reference(overrides: dict) -> dict:
    o = dict(overrides)
    steps = o.pop("steps")
    plan = single_process(plan_of(**o)).replace(zero=0)  # zero means nothing on one process
    if plan not in _refs:
        _refs[plan] = train(plan, steps=steps)
    return _refs[plan]


def max_rel(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) / abs(y) for x, y in zip(a, b, strict=True))


def check(name: str, overrides: dict, run: dict) -> None:
    assert "error" not in run, f"{name} failed:\n{run['error']}"
    ref = reference(overrides)
    diffs = {k: max_rel(run[k], ref[k]) for k in ("loss", "grad_norm", "aux_loss")}
    diffs["eval"] = abs(run["eval"] - ref["eval"]) / ref["eval"]
    print(f"\n| {name:28s} | " + " | ".join(f"{k} {v:.1e}" for k, v in diffs.items())
          + f" | {run['wall_s']:.1f} s |")
    assert ref["loss"][-1] < ref["loss"][0] - 0.3, "the reference run must learn something"
    assert all(a > 0 for a in ref["aux_loss"]), ref["aux_loss"]
    for k, v in diffs.items():
        assert v < TOL, f"{name}: {k} {run[k]} vs single process {ref[k]}"


@pytest.fixture(scope="module")
def runs_2() -> dict:
    return spawn_plans(2, CASES_2)


@pytest.fixture(scope="module")
def runs_4() -> dict:
    return spawn_plans(4, CASES_4)


@pytest.mark.parametrize("name", list(CASES_2))
def test_two_processes_match_one(runs_2: dict, name: str) -> None:
    check(name, CASES_2[name], runs_2[name])


@pytest.mark.parametrize("name", list(CASES_4))
def test_four_processes_match_one(runs_4: dict, name: str) -> None:
    check(name, CASES_4[name], runs_4[name])


# ------------------------------------------------------------ one process
def _naive(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """Each token through its top-k experts one by one (no capacity)."""
    e = moe.experts
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        probs = torch.softmax(moe.router(x[t]), -1)
        top, idx = probs.topk(moe.top_k)
        for g, i in zip(top / top.sum(), idx.tolist(), strict=True):
            if e.gated:
                h = torch.nn.functional.silu(x[t] @ e.w1[i]) * (x[t] @ e.w3[i])
                out[t] += g * (h @ e.w2[i])
            else:
                h = torch.nn.functional.gelu(x[t] @ e.fc1[i] + e.fc1_bias[i], approximate="tanh")
                out[t] += g * (h @ e.fc2[i] + e.fc2_bias[i])
        for ffn in moe.shared:
            out[t] += ffn(x[t])
    return out


@pytest.mark.parametrize("fields", [{}, {"activation": "gelu", "bias": True,
                                         "norm": "layernorm", "position": "learned"}])
def test_moe_block_equals_per_token_reference(fields):
    spec = _spec(**fields)
    model = build_model(spec, seed=0)
    assert sum(p.numel() for p in model.parameters()) == counts.param_count(spec)
    moe = model.layers["1"].feed_forward
    assert isinstance(moe, MoE) and not isinstance(model.layers["0"].feed_forward, MoE)
    x = torch.randn(2, 8, spec.hidden)
    with torch.no_grad():
        fast = moe(x)
        slow = _naive(moe, x.reshape(-1, spec.hidden)).view_as(x)
    assert torch.allclose(fast, slow, atol=1e-5), (fast - slow).abs().max()


def test_capacity_drops_pairs_beyond_it_in_token_order():
    spec = _spec(capacity_factor=1.0, shared_experts=0)
    moe = build_model(spec, seed=0).layers["1"].feed_forward
    # a seeded input whose first 12 tokens repeat one vector: they route to the
    # same two experts, 12 pairs each > the capacity of 8, so some are dropped
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, spec.hidden, generator=g)
    x[:, :12] = x[:, :1]
    cap = moe.capacity(16)
    assert cap == 8  # ceil(1.0 * 16 tokens * top-2 / 4 experts)
    with torch.no_grad():
        idx = torch.softmax(moe.router(x[0]), -1).topk(2).indices
        dropless = build_model(_spec(shared_experts=0), seed=0).layers["1"].feed_forward(x)[0]
        dropped = moe(x)[0]
    kept = torch.zeros(16, 2, dtype=torch.bool)
    for e in range(4):  # the first `cap` pairs of each expert in token order
        where = (idx == e).nonzero().tolist()
        for t, j in where[:cap]:
            kept[t, j] = True
    assert (~kept).any(), "this input should overflow some expert"
    full = kept.all(1)
    assert torch.allclose(dropped[full], dropless[full], atol=1e-6)
    assert not torch.allclose(dropped[~full], dropless[~full], atol=1e-6)


def test_sequence_balance_loss_is_one_when_balanced_and_grows_with_skew():
    b, s, e, k = 2, 8, 4, 2
    uniform = torch.full((b, s, e), 1 / e)
    spread = torch.arange(s * k).remainder(e).view(1, s, k).expand(b, s, k)
    assert sequence_balance_loss(uniform, spread, e).item() == pytest.approx(1.0)
    skewed = torch.tensor([0.7, 0.1, 0.1, 0.1]).expand(b, s, e)
    onto0 = torch.tensor([0, 1]).expand(b, s, k)
    assert sequence_balance_loss(skewed, onto0, e).item() > 1.5


def test_aux_loss_gradient_reaches_the_router_and_is_logged():
    spec = _spec()
    model = build_model(spec, seed=0)
    x = torch.randint(0, spec.vocab, (2, 16))
    model(x)  # no backward: the aux value is recorded, nothing else happens
    moe = model.layers["1"].feed_forward
    assert len(moe.aux_values) == 1 and moe.aux_values[0] > 0
    for scale in (0.0, 1.0):
        model.zero_grad()
        for m in model.modules():
            if isinstance(m, MoE):
                m.aux_grad_scale = scale
        model(x).sum().mul(0).backward()  # only the aux loss has a gradient
        g = moe.router.weight.grad
        assert (g.abs().sum() > 0) == (scale > 0)


# ------------------------------------------------------------ checkpoints
def test_ep2_resume_matches_a_straight_run(tmp_path):
    from runtime import checkpoint as ckpt
    from runtime.launch import run

    plan = sandbox.load({
        "model": {"preset": "tiny-moe"}, "cluster": {"preset": "localhost"},
        "parallel": {"dp": 2, "ep": 2, "global_batch": 8, "micro_batch": 2},
        "train": {"lr": 1e-3, "lr_schedule": "constant", "steps": 8, "checkpoint_every": 4,
                  "seed": 1}})
    straight = run(plan, tmp_path / "straight", progress=False)
    half = tmp_path / "half"  # as if killed after the step-4 checkpoint: resume 5..8
    shutil.copytree(straight.out, half)
    shutil.rmtree(ckpt.step_dir(half, 8))
    assert ckpt.latest_complete(half).name == "step_00000004"
    run(plan, half, resume=True, progress=False)
    rows = [json.loads(line) for line in (half / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(line) for line in
           (straight.out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 9))
    for a, b in zip(rows, ref, strict=True):
        assert abs(a["loss"] - b["loss"]) / b["loss"] < 1e-5, (a, b)
        assert "aux_loss" in a and abs(a["aux_loss"] - b["aux_loss"]) < 1e-6
    # the expert shards were saved as the full [experts, ...] tensors
    state = ckpt.load_full_model_state(ckpt.latest_complete(half))
    model = build_model(plan.model, seed=5)
    model.load_state_dict(state, strict=True)
    assert state["layers.1.feed_forward.experts.w1"].shape == (4, 64, 64)


@pytest.mark.parametrize("fields", [{}, {"capacity_factor": 1.0},
                                    {"activation": "gelu", "bias": True, "norm": "layernorm"}])
def test_dense_routing_for_export_equals_sparse_routing(fields):
    model = build_model(_spec(**fields), seed=0)
    x = torch.randint(0, 256, (2, 32))
    with torch.no_grad():
        sparse = model(x)
        for m in model.modules():
            if isinstance(m, MoE):
                m.dense_routing = True
        dense = model(x)
    assert torch.allclose(sparse, dense, atol=1e-5), (sparse - dense).abs().max()


def test_export_of_a_moe_run_matches_pytorch(tmp_path):
    from helpers.export_fixtures import train_run

    from runtime.export.pipeline import export
    from sandbox.errors import SandboxError

    train_run(tmp_path / "run", "tiny-moe", steps=2)
    rep = export(tmp_path / "run", tmp_path / "moe.onnx", quantize="none", eval_batches=1,
                 calib_batches=1, latency_repeats=2, decode_tokens=4, decode_prompts=1)
    assert rep.max_abs_diff <= 1e-4 and rep.top1_agreement == 1.0
    assert rep.decode_check["cache_matches_torch"]
    with pytest.raises(SandboxError, match="--prune"):
        export(tmp_path / "run", tmp_path / "pruned.onnx", prune=0.25)
