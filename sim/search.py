"""Strategy search: rank the feasible parallel plans for a model, a cluster and
a GPU budget by simulated step time or cost per token.

Pipeline: enumerate (`sim.search_space.candidates`) -> drop what cannot run or
fit, keeping the reason (`screen`) -> order by an analytic lower bound on the
step time -> simulate with the discrete-event simulator, in parallel over
cores, best bound first, until no remaining candidate can enter the top
`top` (its bound is above the top-th simulated time) or `max_simulations` is
reached -> rank, mark the Pareto fronts.

The result is a pandas DataFrame, one row per simulated plan, sorted by the
objective; its `attrs` hold the counts (`considered`, `rejected`,
`screened_out`, `not_simulated`, `simulated`, `rejected_by_reason`), the
`rejected` DataFrame (every candidate that was not simulated, with the stage
and the reason) and the base plan, so that `why(result, tp=.., pp=..)` can
say why a plan is missing and `plan_of(result, row)` rebuilds a row's plan.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any

from sandbox.specs import Plan
from sim.search_space import (
    SEARCHED,
    Screened,
    base_plan,
    candidates,
    check_fix,
    reason_kind,
    screen,
    with_parallel,
)

OBJECTIVES = ("time", "cost")
CONTRACT = ("params", "flops_per_step", "step_time_s", "tokens_per_s", "tflops_per_gpu",
            "hw_tflops_per_gpu", "mfu", "hfu", "memory_gb_per_gpu", "fits", "breakdown_s",
            "events", "sim_wall_s")


def _simulate_dict(simulator: Callable | None, plan: Plan) -> dict:
    """Simulate one plan -> the `simulate` contract as a dict (runs in a worker)."""
    if simulator is None:
        from sim import simulate as simulator
    result = simulator(plan)
    return result.to_dict() if hasattr(result, "to_dict") else dict(result)


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested dicts -> one level with dotted keys (`breakdown_s.compute`)."""
    out: dict = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def unflatten(d: dict) -> dict:
    out: dict = {}
    for k, v in d.items():
        parts = k.split(".")
        target = out
        for p in parts[:-1]:
            target = target.setdefault(p, {})
        target[parts[-1]] = v
    return out


def pareto_front(x: list[float], y: list[float]) -> list[bool]:
    """True where no other point is <= in both coordinates and < in one (minimise both)."""
    pts = list(zip(x, y, strict=True))
    return [not any(a <= px and b <= py and (a < px or b < py) for a, b in pts)
            for px, py in pts]


def usd_per_million_tokens(step_time_s: float, plan: Plan) -> float:
    """Rental cost of the GPUs for one million trained tokens, US dollars."""
    gpu_s = step_time_s * plan.world_size
    return gpu_s / 3600.0 * plan.cluster.usd_per_gpu_hour / plan.tokens_per_step * 1e6


def parallel_fields(plan: Plan) -> dict:
    return {k: getattr(plan.parallel, k) for k in SEARCHED}


def _row(plan: Plan, sim: dict) -> dict:
    row = {**parallel_fields(plan), "gpus": plan.world_size,
           "microbatches": plan.parallel.microbatches}
    mem = sim.get("memory_gb_per_gpu")
    row.update(flatten({k: sim[k] for k in CONTRACT if k in sim}))
    row["memory_gb"] = mem["total"] if isinstance(mem, dict) else mem
    row["usd_per_million_tokens"] = usd_per_million_tokens(sim["step_time_s"], plan)
    return row


def _resolve_workers(workers: int | None, jobs: int) -> int:
    n = workers if workers is not None else (os.cpu_count() or 1)
    return max(1, min(n, jobs))


def _simulate_all(todo: list[Screened], top: int, objective_of: Callable, workers: int,
                  max_simulations: int, simulator: Callable | None, progress: bool
                  ) -> tuple[list[tuple[Screened, dict]], int, int]:
    """Simulate `todo` (sorted by bound) until the bound prunes the rest.

    Returns (results, index where simulation stopped, how many were pruned by
    the bound rather than by the budget).
    """
    from tqdm import tqdm

    done: list[tuple[Screened, dict]] = []
    best: list[float] = []  # objective values simulated so far, sorted
    bar = tqdm(total=min(len(todo), max_simulations), desc="simulating", unit="plan",
               file=sys.stderr, disable=not progress, leave=False)

    def kth() -> float:
        return best[top - 1] if len(best) >= top else float("inf")

    def record(item: Screened, sim: dict) -> None:
        done.append((item, sim))
        if sim.get("fits", True):
            best.append(objective_of(item.plan, sim["step_time_s"]))
            best.sort()
        bar.update(1)

    i, pruned = 0, 0
    stop = min(len(todo), max_simulations)
    if workers == 1:
        while i < stop and objective_of(todo[i].plan, todo[i].lower_bound_s) < kth():
            record(todo[i], _simulate_dict(simulator, todo[i].plan))
            i += 1
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            running: dict = {}
            while True:
                while (i < stop and len(running) < 2 * workers
                       and objective_of(todo[i].plan, todo[i].lower_bound_s) < kth()):
                    running[pool.submit(_simulate_dict, simulator, todo[i].plan)] = todo[i]
                    i += 1
                if not running:
                    break
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for f in finished:
                    record(running.pop(f), f.result())
    bar.close()
    if i < len(todo) and objective_of(todo[i].plan, todo[i].lower_bound_s) >= kth():
        pruned = len(todo) - i
    return done, i, pruned


def _timing_groups(feasible: list[Screened], simulator: Callable | None
                   ) -> tuple[list[Screened], dict[int, list[Screened]]]:
    """Candidates the default simulator times identically (`sim.same_timing`:
    ZeRO 1 and 2) are simulated once; each keeps its own memory. Returns the
    representatives, in order, and id(representative) -> its group."""
    if simulator is not None:
        return feasible, {id(f): [f] for f in feasible}
    from sim import same_timing

    first: dict = {}
    members: dict[int, list[Screened]] = {}
    reps = []
    for f in feasible:
        key = same_timing(f.plan)
        rep = first.setdefault(key, f)
        if rep is f:
            reps.append(f)
            members[id(f)] = []
        members[id(rep)].append(f)
    return reps, members


def _with_memory(plan: Plan, sim: dict) -> dict:
    """A twin's simulation result with the plan's own memory and fit."""
    from sim import memory_fields

    mem, fits = memory_fields(plan)
    return {**sim, "memory_gb_per_gpu": mem, "fits": fits}


def search(model: Any, cluster: Any, gpus: int, global_batch: int, top: int = 10,
           objective: str = "time", max_memory_gb: float | None = None,
           fix: dict | None = None, seq_len: int | None = None, workers: int | None = None,
           progress: bool = True, max_simulations: int = 128,
           simulator: Callable | None = None, **plan_overrides: Any):
    """Rank feasible plans -> pandas.DataFrame (see the module docstring).

    model, cluster: preset names or section dicts; gpus: world size;
    global_batch: sequences per step; top: rows returned; objective: "time"
    (step time, s) or "cost" (USD per million tokens at the cluster's
    usd_per_gpu_hour); max_memory_gb: cap on memory per GPU, GB; fix:
    {field: value or list of values} over dp, tp, pp, vpp, micro_batch, zero,
    recompute, sequence_parallel, schedule; seq_len: overrides the model's;
    workers: simulation processes (default: all cores); max_simulations:
    simulation budget; simulator: `plan -> result with .to_dict()` (default
    `sim.simulate`; must be picklable for workers > 1); plan_overrides: other
    plan fields (precision="fp8", nic_gbit_per_s=100.0, ...).
    """
    import pandas as pd

    from sandbox.errors import SandboxError

    if objective not in OBJECTIVES:
        raise SandboxError(f"objective: unknown value '{objective}'; choose time or cost")
    if not isinstance(top, int) or top <= 0:
        raise SandboxError(f"top: must be a positive integer, got {top!r}")
    if max_memory_gb is not None and max_memory_gb <= 0:
        raise SandboxError(f"max_memory_gb: must be positive, got {max_memory_gb}")
    start = time.perf_counter()
    fix = check_fix(fix)
    for key in [k for k in plan_overrides if k in SEARCHED]:
        fix[key] = plan_overrides.pop(key)
    base = base_plan(model, cluster, gpus, global_batch, seq_len, **plan_overrides)
    settings = list(candidates(base, fix))
    feasible, rejected = screen(base, settings, max_memory_gb)

    def objective_of(plan: Plan, step_s: float) -> float:
        return step_s if objective == "time" else usd_per_million_tokens(step_s, plan)

    feasible.sort(key=lambda s: (objective_of(s.plan, s.lower_bound_s), s.memory_gb))
    reps, members = _timing_groups(feasible, simulator)
    done, stopped, pruned = _simulate_all(
        reps, top, objective_of, _resolve_workers(workers, len(reps)),
        max_simulations, simulator, progress)
    simulated = len(done)
    done = [(m, sim if m is item else _with_memory(m.plan, sim))
            for item, sim in done for m in members[id(item)]]
    for item in [m for rep in reps[stopped:] for m in members[id(rep)]]:
        stage = "screened" if pruned else "budget"
        why = (f"screened: lower bound {item.lower_bound_s:.3g} s cannot beat the top {top}"
               if pruned else f"not simulated: simulation budget ({max_simulations}) spent")
        rejected.append((item.plan.parallel, stage, why))
    rows = []
    for item, sim in done:
        if not sim.get("fits", True):
            mem = sim.get("memory_gb_per_gpu")
            total = mem["total"] if isinstance(mem, dict) else mem
            rejected.append((item.plan.parallel, "sim-memory",
                             f"memory: the simulator finds {total:.1f} GB per GPU, > "
                             f"{base.cluster.gpu.hbm_gb:.1f} GB"))
            continue
        rows.append(_row(item.plan, sim))
    table = pd.DataFrame(rows)
    if len(table):
        key = "step_time_s" if objective == "time" else "usd_per_million_tokens"
        table["pareto_time_memory"] = pareto_front(table["step_time_s"], table["memory_gb"])
        table["pareto_time_cost"] = pareto_front(table["step_time_s"],
                                                 table["usd_per_million_tokens"])
        table = table.sort_values([key, "memory_gb"], kind="stable").reset_index(drop=True)
        table.index = table.index + 1
        table.index.name = "rank"
    everything = table.copy()
    table = table.head(top)
    rej = pd.DataFrame([{**{k: getattr(p, k) for k in SEARCHED}, "stage": stage,
                         "reason": reason} for p, stage, reason in rejected],
                       columns=[*SEARCHED, "stage", "reason"])
    by_reason = Counter(reason_kind(r) for _, s, r in rejected
                        if s in ("invalid", "memory", "sim-memory"))
    table.attrs.update({
        "considered": len(settings),
        "rejected": rej,
        "rejected_count": int(rej["stage"].isin(["invalid", "memory", "sim-memory"]).sum()),
        "rejected_by_reason": dict(by_reason.most_common()),
        "screened_out": int((rej["stage"] == "screened").sum()),
        "not_simulated": int((rej["stage"] == "budget").sum()),
        "simulated": simulated,
        "timed_by_a_twin": len(done) - simulated,
        "all_simulated": everything,  # every simulated plan that fits, ranked
        "objective": objective, "top": top, "wall_s": time.perf_counter() - start,
        "base_plan": base,  # a Plan (its global batch not yet validated)
    })
    if progress:
        print(summary(table), file=sys.stderr)
    return table


def summary(result) -> str:
    """One paragraph of the search's counts (from `result.attrs`)."""
    a = result.attrs
    lines = [f"search: {a['considered']:,} candidates considered; {a['rejected_count']:,} "
             f"rejected; {a['screened_out']:,} screened out by the lower bound; "
             f"{a['not_simulated']:,} left unsimulated (budget); {a['simulated']:,} simulated "
             f"(+{a.get('timed_by_a_twin', 0):,} timed by an identical twin) "
             f"in {a['wall_s']:.1f} s"]
    lines += [f"  rejected {n:,}: {why}" for why, n in a["rejected_by_reason"].items()]
    return "\n".join(lines)


def plan_of(result, row: Any) -> Plan:
    """The plan of one result row (a rank, or a row Series/dict), validated."""
    from sandbox.planfile import load

    if isinstance(row, int):
        row = result.loc[row]
    return load(with_parallel(result.attrs["base_plan"], **{k: _py(row[k]) for k in SEARCHED}))


def _py(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def why(result, **fields: Any):
    """Rows (ranked or rejected) matching `fields`, with where they went and why.

    Returns a DataFrame with the parallel fields, `stage` ("ranked",
    "invalid", "memory", "screened", "budget", "sim-memory") and `reason`. A plan the search
    never enumerated is checked by the validator on the spot.
    """
    import pandas as pd

    from sandbox.validate import plan_problems

    bad = [k for k in fields if k not in SEARCHED]
    if bad:
        from sandbox.errors import SandboxError

        raise SandboxError(f"why: unknown field '{bad[0]}'; fields: {', '.join(SEARCHED)}")
    frames = []
    if len(result):
        ranked = result.reset_index()
        mask = pd.Series(True, index=ranked.index)
        for k, v in fields.items():
            mask &= ranked[k] == v
        hit = ranked[mask]
        frames.append(pd.DataFrame({**{k: hit[k] for k in SEARCHED}, "stage": "ranked",
                                    "reason": [f"rank {r}" for r in hit["rank"]]}))
    rej = result.attrs["rejected"]
    mask = pd.Series(True, index=rej.index)
    for k, v in fields.items():
        mask &= rej[k] == v
    frames.append(rej[mask])
    out = pd.concat([f for f in frames if len(f)], ignore_index=True) if any(
        len(f) for f in frames) else pd.DataFrame(columns=[*SEARCHED, "stage", "reason"])
    if len(out) == 0:
        base = result.attrs["base_plan"]
        tp, pp = fields.get("tp", 1), fields.get("pp", 1)
        if "dp" not in fields and base.world_size % (tp * pp) == 0:
            fields = {**fields, "dp": base.world_size // (tp * pp)}
        plan = with_parallel(base, **fields)
        par = plan.parallel
        problems = plan_problems(plan)
        reason = ("not enumerated: " + (problems[0] if problems else
                                        "outside the search space (see sim.search_space)"))
        out = pd.DataFrame([{**{k: getattr(par, k) for k in SEARCHED}, "stage": "invalid"
                             if problems else "not enumerated", "reason": reason}])
    return out


def to_records(result) -> list[dict]:
    """The rows as JSON-ready dicts: parallel fields, contract fields nested again."""
    if len(result) == 0:
        return []
    records = json.loads(result.reset_index().to_json(orient="records"))
    return [unflatten(r) for r in records]
