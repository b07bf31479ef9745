"""What the training loop does, small enough to run many plans in one process group.

`train(plan, mesh)` builds the plan's model with `runtime.parallel.parallelize`, and for
each step takes a fixed global batch (random ids from a seeded generator,
identical for every layout), gives this dp rank its slice, runs `par.step`,
clips, steps AdamW; it returns per-step losses, gradient norms and a final
evaluation loss. `spawn_plans` runs several plans in one spawned gloo group.
"""

from __future__ import annotations

import os
import time
import traceback
import warnings

import torch

import sandbox
from runtime.parallel.mesh import build_mesh
from runtime.parallel.parallelize import parallelize
from runtime.spawn import Worker, spawn
from runtime.step import train_step

STEPS = 12
TOKEN_RANGE = 32  # ids drawn from [0, 32) of the vocabulary: a learnable signal


def plan_of(model: str = "tiny", train: dict | None = None, model_fields: dict | None = None,
            **parallel) -> sandbox.specs.Plan:
    """The test plan with `parallel` overrides (and `train` / `model_fields`
    overrides, dicts of train / model fields)."""
    return sandbox.load({
        "model": {"preset": model, **(model_fields or {})},
        "cluster": {"preset": "localhost"},
        "parallel": {"global_batch": 8, "micro_batch": 2, **parallel},
        "train": {"precision": "fp32", "lr": 1e-3, "lr_schedule": "constant", "seed": 0,
                  "grad_clip": 1.0, "weight_decay": 0.1, **(train or {})},
    })


def single_process(plan: sandbox.specs.Plan) -> sandbox.specs.Plan:
    """The same plan on one process (schedule, vpp, ep, stage_layers and dp_shard
    reset to valid values)."""
    return plan.replace(dp=1, tp=1, pp=1, vpp=1, ep=1, schedule="1f1b", stage_layers=(),
                        dp_shard=0)


def batch(step: int, plan: sandbox.specs.Plan) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 + step)
    ids = torch.randint(0, TOKEN_RANGE, (plan.parallel.global_batch, plan.model.seq_len + 1),
                        generator=gen)
    return ids[:, :-1], ids[:, 1:]


def train(plan: sandbox.specs.Plan, mesh=None, steps: int = STEPS) -> dict:
    par = parallelize(plan, mesh, torch.device("cpu"))
    opt = par.build_optimizer()
    dp_rank = mesh["dp"].get_local_rank() if mesh is not None else 0
    share = plan.parallel.global_batch // plan.parallel.dp
    rows = slice(dp_rank * share, (dp_rank + 1) * share)
    losses, norms, sent, aux = [], [], [], []
    for step in range(steps):
        x, y = batch(step, plan)
        res = train_step(par, opt, x[rows], y[rows], step + 1, plan.train.grad_clip,
                         sync=step + 1 == steps)
        losses.append(res.loss)
        norms.append(res.grad_norm)
        aux.append(res.aux_loss)
        sent.append(par.comm_bytes())
    x, y = batch(steps, plan)
    return {"loss": losses, "grad_norm": norms, "eval": par.evaluate(x[rows], y[rows]),
            "comm_bytes": sent, "aux_loss": aux}


def _worker(w: Worker, cases: dict) -> dict:
    results = {}
    for name, overrides in cases.items():
        t0 = time.perf_counter()
        if os.environ.get("HARNESS_VERBOSE"):
            print(f"[rank {w.rank}] {name}", flush=True)
        try:
            overrides = dict(overrides)
            steps = overrides.pop("steps", STEPS)  # a case may train fewer steps
            plan = plan_of(**overrides)
            results[name] = train(plan, build_mesh(plan, "cpu"), steps)
        except Exception:  # reported to the test, which fails on it
            results[name] = {"error": traceback.format_exc()}
        results[name]["wall_s"] = time.perf_counter() - t0
    return results


def spawn_plans(world: int, cases: dict[str, dict]) -> dict:
    """Run each case (plan_of keyword overrides) on `world` gloo processes.

    A rank killed by a signal (not a Python error: those come back as results)
    is started once more, all cases again: one CI run saw a rank abort inside
    native code ("malloc(): unaligned tcache chunk detected", SIGABRT) and pass
    when run again; a second crash fails the test."""
    from torch.multiprocessing import ProcessExitedException

    try:
        return spawn(_worker, world, cases, timeout_s=1800)[0]
    except ProcessExitedException as e:
        if not e.signal_name:
            raise
        warnings.warn(f"spawn_plans: a rank died of {e.signal_name}; running the cases again",
                      stacklevel=2)
        return spawn(_worker, world, cases, timeout_s=1800)[0]
