"""What the training loop does, small enough to run many plans in one process group.

`train(plan, mesh)` builds the plan's model with `runtime.parallelize`, and for
each step takes a fixed global batch (random ids from a seeded generator,
identical for every layout), gives this dp rank its slice, runs `par.step`,
clips, steps AdamW; it returns per-step losses, gradient norms and a final
evaluation loss. `spawn_plans` runs several plans in one spawned gloo group.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import sandbox

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
    """The same plan on one process (schedule, vpp and stage_layers reset to valid values)."""
    return plan.replace(dp=1, tp=1, pp=1, vpp=1, schedule="1f1b", stage_layers=())


def batch(step: int, plan: sandbox.specs.Plan) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 + step)
    ids = torch.randint(0, TOKEN_RANGE, (plan.parallel.global_batch, plan.model.seq_len + 1),
                        generator=gen)
    return ids[:, :-1], ids[:, 1:]


def train(plan: sandbox.specs.Plan, mesh=None, steps: int = STEPS) -> dict:
    from runtime.parallelize import parallelize

    par = parallelize(plan, mesh, torch.device("cpu"))
    opt = par.build_optimizer()
    dp_rank = mesh["dp"].get_local_rank() if mesh is not None else 0
    share = plan.parallel.global_batch // plan.parallel.dp
    rows = slice(dp_rank * share, (dp_rank + 1) * share)
    losses, norms, sent = [], [], []
    for step in range(steps):
        x, y = batch(step, plan)
        losses.append(par.step(x[rows], y[rows]))
        norms.append(par.clip_grad_norm_(plan.train.grad_clip))
        opt.step()
        par.after_optimizer_step(step + 1, sync=step + 1 == steps)
        opt.zero_grad()
        sent.append(par.comm_bytes())
    x, y = batch(steps, plan)
    return {"loss": losses, "grad_norm": norms, "eval": par.evaluate(x[rows], y[rows]),
            "comm_bytes": sent}


def _worker(rank: int, world: int, rdv: str, cases: dict, out: str) -> None:
    from runtime.mesh import build_mesh

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rdv}", rank=rank, world_size=world)
    results = {}
    for name, overrides in cases.items():
        t0 = time.perf_counter()
        if os.environ.get("HARNESS_VERBOSE"):
            print(f"[rank {rank}] {name}", flush=True)
        try:
            plan = plan_of(**overrides)
            results[name] = train(plan, build_mesh(plan, "cpu"))
        except Exception:  # reported to the test, which fails on it
            results[name] = {"error": traceback.format_exc()}
        results[name]["wall_s"] = time.perf_counter() - t0
    if rank == 0:
        Path(out).write_text(json.dumps(results))
    dist.destroy_process_group()


def spawn_plans(world: int, cases: dict[str, dict]) -> dict:
    """Run each case (plan_of keyword overrides) on `world` gloo processes."""
    with tempfile.TemporaryDirectory() as tmp:
        rdv, out = os.path.join(tmp, "rdv"), os.path.join(tmp, "out.json")
        mp.start_processes(_worker, args=(world, rdv, cases, out), nprocs=world,
                           start_method="spawn")
        return json.loads(Path(out).read_text())
