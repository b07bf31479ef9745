"""fp16 dynamic loss scaling (runtime.loss_scale): the rule, exactness of
scaled gradients, overflow detection, and `sandbox run` end to end (the
pipeline's scaled loss, metrics, checkpointed scale, resume)."""

import json
import math
import shutil

import pytest
import torch
from helpers.runs import write_plan

import sandbox
from runtime.loss_scale import DynamicLossScale


def test_rule_backs_off_grows_and_round_trips():
    s = DynamicLossScale(scale=8.0, growth_interval=3, min_scale=2.0)
    assert s.update(True) and s.update(True) and s.scale == 8.0
    assert s.update(True) and s.scale == 16.0 and s.good_steps == 0
    assert not s.update(False) and s.scale == 8.0
    assert s.update(True) and s.scale == 8.0  # the count restarted after the overflow
    for _ in range(5):
        s.update(False)
    assert s.scale == 2.0  # never below min_scale
    t = DynamicLossScale()
    t.load_state_dict(s.state_dict())
    assert t == s


def test_scaled_gradients_are_exact_and_overflow_is_caught():
    from runtime.parallel.parallelize import parallelize

    plan = sandbox.load({"model": {"preset": "tiny"}, "parallel": {"global_batch": 4,
                                                                   "micro_batch": 2},
                         "train": {"precision": "fp16"}})
    par = parallelize(plan, None, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, plan.model.vocab, (4, plan.model.seq_len), generator=g)
    y = torch.randint(0, plan.model.vocab, (4, plan.model.seq_len), generator=g)

    def grads_at(scale: float) -> tuple[float, list[torch.Tensor], float]:
        for p in par.parameters():
            p.grad = None
        par.loss_scale = scale
        loss = par.step(x, y)
        par.unscale_grads()
        grads = [p.grad.clone() for p in par.parameters()]
        return loss, grads, par.clip_grad_norm_(0.0)  # 0: measure, do not clip

    loss1, g1, n1 = grads_at(1.0)
    loss16, g16, n16 = grads_at(2.0**16)
    assert loss16 == loss1 and n16 == n1  # a power-of-two scale is exact
    assert all(torch.equal(a, b) for a, b in zip(g1, g16, strict=True))
    loss_big, _, n_big = grads_at(2.0**140)  # the scaled loss overflows fp32
    assert loss_big == loss1 and not math.isfinite(n_big)
    scaler = DynamicLossScale(scale=2.0**140)
    assert scaler.update(math.isfinite(n_big)) is False and scaler.scale == 2.0**139


def rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_fp16_run_matches_fp32_keeps_the_scale_and_resumes(cli, tmp_path):
    """A pp 2 fp16 run (CPU: fp32 arithmetic, loss scale 2**16 through the
    pipeline's loss) logs the losses of the fp32 run, bit for bit; the scale
    is in the metrics and the checkpoints, and a resume restores it. The
    runs use a relative --out from another directory."""
    for precision in ("fp16", "fp32"):
        write_plan(tmp_path / f"{precision}.toml", pp=2, extra=f'precision = "{precision}"')
        r = cli("run", f"{precision}.toml", "--out", precision, "--steps", "6", cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-2000:]
    r16, r32 = rows(tmp_path / "fp16"), rows(tmp_path / "fp32")
    assert [r["loss"] for r in r16] == [r["loss"] for r in r32]
    assert all(r["loss_scale"] == 2.0**16 and r["skipped"] is False for r in r16)
    assert "loss_scale" not in r32[0]
    summary = json.loads((tmp_path / "fp16" / "summary.json").read_text())
    assert summary["loss_scale"] == 2.0**16 and summary["skipped_steps"] == 0
    meta = json.loads((tmp_path / "fp16" / "checkpoints" / "step_00000003" / "meta.json")
                      .read_text())
    assert meta["loss_scale"]["scale"] == 2.0**16 and meta["loss_scale"]["good_steps"] == 3
    # resume from step 3 with the checkpoint's scale changed: steps 4-6 use it
    meta["loss_scale"]["scale"] = 1024.0
    ckpts = tmp_path / "fp16" / "checkpoints"
    (ckpts / "step_00000003" / "meta.json").write_text(json.dumps(meta))
    shutil.rmtree(ckpts / "step_00000006")
    r = cli("run", "fp16.toml", "--out", "fp16", "--steps", "6", "--resume", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    resumed = rows(tmp_path / "fp16")
    assert [x["step"] for x in resumed] == list(range(1, 7))
    assert [x["loss_scale"] for x in resumed[3:]] == [1024.0] * 3
    assert [x["loss"] for x in resumed] == pytest.approx([x["loss"] for x in r32], abs=1e-6)
