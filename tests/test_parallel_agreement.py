"""Every parallel layout trains the same model as one process (gloo on CPU).

The `tiny` preset (and `tiny-llama` under tp 2), fp32, seed 0, 12 steps of
constant-LR AdamW with clipping at 1.0, global batch 8 of micro_batch 2: the
per-step losses, the global gradient norms (before clipping) and a final
evaluation loss of each layout must be within 1e-4 (relative) of the single-
process run of the same plan. All 2-process plans share one spawned process
group, all 4-process plans another (process start-up is the slow part).

Run with `-s` to print the table of max relative differences.
"""

from __future__ import annotations

import pytest
from helpers.parallel import plan_of, single_process, spawn_plans, train

TOL = 1e-4  # fp32 layouts agree to ~1e-7 on CPU; 1e-4 would catch a dropped layer

CASES_2 = {
    "dp2 (ZeRO-0, DDP)": dict(dp=2, zero=0),
    "dp2 ZeRO-1": dict(dp=2, zero=1),
    "dp2 ZeRO-2": dict(dp=2, zero=2),
    "dp2 ZeRO-3": dict(dp=2, zero=3),
    "dp2 ZeRO-3 full recompute": dict(dp=2, zero=3, recompute="full"),
    "dp2 ZeRO-3 no reshard": dict(dp=2, zero=3, reshard_after_forward=False),
    "tp2": dict(tp=2, sequence_parallel=False),
    "tp2 + sp": dict(tp=2, sequence_parallel=True),
    "pp2 gpipe": dict(pp=2, schedule="gpipe"),
    "pp2 1f1b": dict(pp=2, schedule="1f1b"),
    "pp2 interleaved-1f1b vpp2": dict(pp=2, vpp=2, schedule="interleaved-1f1b"),
    "pp2 zero-bubble": dict(pp=2, schedule="zero-bubble"),
    "tiny-llama tp2 + sp": dict(model="tiny-llama", tp=2),
    # automatic uneven chunks (issue 17): 5 layers on pp2 x vpp2 -> chunks [1, 1, 2, 1]
    "pp2 vpp2 5 layers auto split": dict(model_fields={"layers": 5}, pp=2, vpp=2,
                                         schedule="interleaved-1f1b"),
}
CASES_4 = {
    "dp2 x tp2 (ZeRO-1, sp)": dict(dp=2, tp=2),
    "pp2 x tp2 (1f1b, sp)": dict(pp=2, tp=2),
    "pp2 x dp2 (1f1b, ZeRO-3)": dict(pp=2, dp=2, zero=3),
    "dp4 HSDP dp_shard 2 (ZeRO-3)": dict(dp=4, zero=3, dp_shard=2),
    "dp2 x tp2 ZeRO-0 (replicate)": dict(dp=2, tp=2, zero=0),
    "pp2 x dp2 ZeRO-0 (replicate)": dict(pp=2, dp=2, zero=0),
    "pp4 1f1b (tied over 4 stages)": dict(pp=4, schedule="1f1b"),
    # uneven stages (issue 15): all six blocks run, none dropped
    "pp4 6 layers stage_layers [1,1,2,2]": dict(model_fields={"layers": 6}, pp=4,
                                                stage_layers=[1, 1, 2, 2]),
    # automatic uneven stages (issue 17): 6 layers on pp4 -> [1, 2, 2, 1]
    "pp4 6 layers auto split": dict(model_fields={"layers": 6}, pp=4),
}

_refs: dict = {}


def reference(overrides: dict) -> dict:
    plan = single_process(plan_of(**overrides))
    if plan not in _refs:
        _refs[plan] = train(plan)
    return _refs[plan]


@pytest.fixture(scope="module")
def runs_2() -> dict:
    return spawn_plans(2, CASES_2)


@pytest.fixture(scope="module")
def runs_4() -> dict:
    return spawn_plans(4, CASES_4)


def max_rel(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) / abs(y) for x, y in zip(a, b, strict=True))


def check(name: str, overrides: dict, run: dict) -> None:
    assert "error" not in run, f"{name} failed:\n{run['error']}"
    ref = reference(overrides)
    loss, norm = max_rel(run["loss"], ref["loss"]), max_rel(run["grad_norm"], ref["grad_norm"])
    ev = abs(run["eval"] - ref["eval"]) / ref["eval"]
    print(f"\n| {name:30s} | loss {loss:.2e} | grad norm {norm:.2e} | eval {ev:.2e} "
          f"| {run['wall_s']:.1f} s |")
    assert ref["loss"][-1] < ref["loss"][0] - 0.5, "the reference run must learn something"
    assert loss < TOL, f"{name}: losses {run['loss']} vs single process {ref['loss']}"
    assert norm < TOL, f"{name}: grad norms {run['grad_norm']} vs {ref['grad_norm']}"
    assert ev < TOL, f"{name}: eval loss {run['eval']} vs {ref['eval']}"


@pytest.mark.parametrize("name", list(CASES_2))
def test_two_processes_match_one(runs_2: dict, name: str) -> None:
    check(name, CASES_2[name], runs_2[name])


@pytest.mark.parametrize("name", list(CASES_4))
def test_four_processes_match_one(runs_4: dict, name: str) -> None:
    check(name, CASES_4[name], runs_4[name])
