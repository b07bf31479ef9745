"""Strategy search: rank the feasible parallel plans for a model, a cluster and
a GPU budget by simulated step time or cost per token.

Pipeline: enumerate (`sim.search.space.candidates`) -> drop what cannot run
or fit, keeping the reason (`screen`) -> order by an analytic lower bound on
the step time -> simulate with the discrete-event simulator, in parallel over
cores, best bound first (`sim.search.best_first`: a candidate's bound is
tightened from its lowered work, `sim.search.refine`, before it is
simulated), until no remaining candidate can enter the top `top` (its bound
is above the top-th distinct simulated time), or `max_simulations` plans
are simulated when a budget is given (by default none: every candidate is
simulated unless its bound proves it cannot enter the top) -> rank, fold
plans of identical cost into one row (`same_cost` counts them), mark the
Pareto fronts.

Deterministic: the candidates simulated and the ranking are the same
whatever the number of workers (they run ahead speculatively; results are
taken in the order one process would ask for them), and the budget is a
count of simulations, never a time. `run_search` returns a
`sim.search.result.SearchResult`; `search` its table (the DESIGN.md
contract: a pandas DataFrame, one row per simulated plan, sorted by the
objective). Times in seconds.
"""

from __future__ import annotations

import itertools
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import pandas as pd

import sim
from sandbox.bounds import bound_problems
from sandbox.errors import SandboxError
from sandbox.specs import Plan
from sim.budget import check_search_budget, search_workers
from sim.search.best_first import SAME_COST_DIGITS, best_first, cost_key
from sim.search.executors import check_executor
from sim.search.result import SearchCounts, SearchResult, flatten, summary
from sim.search.space import (
    SEARCHED,
    Screened,
    base_plan,
    candidates,
    check_fix,
    group_reasons,
    screen,
)

OBJECTIVES = ("time", "cost")
MAX_WORKERS = 64  # simulation processes at most (each holds a simulator: 100 MB and more)
SCREEN_S = 0.00025  # seconds to validate and bound one candidate (6,480 in 1.6 s)
MAX_CANDIDATES = 50_000  # candidates screened at most (the default space holds about 7,000)
EXHAUSTIVE_FLOOR = 128  # simulations an unbudgeted search is assumed to need, for the limit
__all__ = ["SAME_COST_DIGITS", "cost_key", "pareto_front", "run_search", "search",
           "usd_per_million_tokens"]
CONTRACT = ("params", "flops_per_step", "step_time_s", "tokens_per_s", "tflops_per_gpu",
            "hw_tflops_per_gpu", "mfu", "hfu", "memory_gb_per_gpu", "fits", "breakdown_s",
            "events", "sim_wall_s")


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
    """The searched parallel fields of a plan, by name."""
    return {k: getattr(plan.parallel, k) for k in SEARCHED}


def _row(plan: Plan, result: dict) -> dict:
    row = {**parallel_fields(plan), "gpus": plan.world_size,
           "microbatches": plan.parallel.microbatches}
    mem = result.get("memory_gb_per_gpu")
    row.update(flatten({k: result[k] for k in CONTRACT if k in result}))
    row["memory_gb"] = mem["total"] if isinstance(mem, dict) else mem
    row["usd_per_million_tokens"] = usd_per_million_tokens(result["step_time_s"], plan)
    return row


def _resolve_workers(workers: int | None, jobs: int, gpus: int) -> int:
    """Processes to simulate with: `workers` (default: cores), no more than the
    jobs, nor than fit together in `sim.budget.search_workers`'s memory."""
    n = workers if workers is not None else (os.cpu_count() or 1)
    return max(1, min(search_workers(gpus, n), jobs))


def _timing_groups(feasible: list[Screened], simulator: Callable | None
                   ) -> tuple[list[Screened], dict[int, list[Screened]]]:
    """Candidates the default simulator times identically (`sim.same_timing`:
    ZeRO 1 and 2) are simulated once; each keeps its own memory. Returns the
    representatives, in order, and id(representative) -> its group."""
    if simulator is not None:
        return feasible, {id(f): [f] for f in feasible}
    first: dict = {}
    members: dict[int, list[Screened]] = {}
    reps = []
    for f in feasible:
        key = sim.same_timing(f.plan)
        rep = first.setdefault(key, f)
        if rep is f:
            reps.append(f)
            members[id(f)] = []
        members[id(rep)].append(f)
    return reps, members


def _with_memory(plan: Plan, result: dict) -> dict:
    """A twin's simulation result with the plan's own memory and fit."""
    mem, fits = sim.memory_fields(plan)
    return {**result, "memory_gb_per_gpu": mem, "fits": fits}


def run_search(model: Any, cluster: Any, gpus: int, global_batch: int, top: int = 10,
               objective: str = "time", max_memory_gb: float | None = None,
               fix: dict | None = None, seq_len: int | None = None,
               workers: int | None = None, progress: bool = True,
               max_simulations: int | None = None,
               simulator: Callable | None = None, executor: str = "local",
               ray_address: str | None = None, **plan_overrides: Any) -> SearchResult:
    """Rank feasible plans -> `SearchResult` (see the module docstring).

    model, cluster: preset names or section dicts; gpus: world size;
    global_batch: sequences per step; top: rows in the table; objective: "time"
    (step time, s) or "cost" (USD per million tokens at the cluster's
    usd_per_gpu_hour); max_memory_gb: cap on memory per GPU, GB; fix:
    {field: value or list of values} over dp, tp, pp, vpp, micro_batch, zero,
    recompute, sequence_parallel, schedule; seq_len: overrides the model's;
    workers: simulation processes (default: all cores); max_simulations:
    simulation budget (a count; default None, no budget: exhaustive up to
    the sound bound); simulator: `plan -> result with .to_dict()`
    (default `sim.simulate`; must be picklable for workers > 1); executor:
    "local" processes or "ray" tasks (`sim.search.executors`; ray_address: a
    cluster to join, default a local Ray instance); progress: a
    progress bar and the `summary` on stderr; plan_overrides: other plan
    fields (precision="fp8", nic_gbit_per_s=100.0, ...).
    """
    if objective not in OBJECTIVES:
        raise SandboxError(f"objective: unknown value '{objective}'; choose time or cost")
    if not isinstance(top, int) or top <= 0:
        raise SandboxError(f"top: must be a positive integer, got {top!r}")
    if max_memory_gb is not None and not (math.isfinite(max_memory_gb) and max_memory_gb > 0):
        raise SandboxError(f"max_memory_gb: must be a positive number of GB, got {max_memory_gb}")
    if workers is not None and not (isinstance(workers, int) and 0 < workers <= MAX_WORKERS):
        raise SandboxError(f"workers: must be from 1 to {MAX_WORKERS} processes, got {workers!r}")
    if max_simulations is not None and (not isinstance(max_simulations, int)
                                        or isinstance(max_simulations, bool)
                                        or max_simulations <= 0):
        raise SandboxError(f"max_simulations: must be a positive integer, got {max_simulations!r}")
    if seq_len is not None and not (isinstance(seq_len, int) and seq_len > 0):
        raise SandboxError(f"seq_len: must be a positive integer, got {seq_len!r}")
    check_executor(executor, ray_address)
    start = time.perf_counter()
    fix = check_fix(fix)
    for key in [k for k in plan_overrides if k in SEARCHED]:
        fix[key] = plan_overrides.pop(key)
    base = base_plan(model, cluster, gpus, global_batch, seq_len, **plan_overrides)
    problems = bound_problems(base)  # a global batch of 10**12 or a NaN: before any work
    if problems:
        raise SandboxError(problems[0])
    # no budget: at least EXHAUSTIVE_FLOOR simulations are likely, refused up front past
    # the GPUs x simulations limit (65,536 GPUs: use --max-simulations)
    check_search_budget(base.world_size, max_simulations or EXHAUSTIVE_FLOOR)
    settings = list(itertools.islice(candidates(base, fix), MAX_CANDIDATES + 1))
    if len(settings) > MAX_CANDIDATES:
        raise SandboxError(f"fix: more than {MAX_CANDIDATES:,} candidate plans to screen "
                           f"(about {MAX_CANDIDATES * SCREEN_S:.0f} s and more); fix fewer "
                           f"values")
    feasible, rejected = screen(base, settings, max_memory_gb)

    def objective_of(plan: Plan, step_s: float) -> float:
        return step_s if objective == "time" else usd_per_million_tokens(step_s, plan)

    feasible.sort(key=lambda s: (objective_of(s.plan, s.lower_bound_s), s.memory_gb))
    reps, members = _timing_groups(feasible, simulator)
    out = best_first(reps, top, objective_of,
                     _resolve_workers(workers, len(reps), base.world_size), max_simulations,
                     simulator, progress, executor, ray_address)
    simulated = len(out.done)
    done = [(m, res if m is item else _with_memory(m.plan, res))
            for item, res in out.done for m in members[id(item)]]
    for rep, bound, stage in out.left:
        why = (f"screened: lower bound {bound:.3g} s cannot beat the top {top}"
               if stage == "screened" else
               f"not simulated: simulation budget ({max_simulations}) spent")
        rejected += [(m.plan.parallel, stage, why) for m in members[id(rep)]]
    rows = []
    for item, res in done:
        if not res.get("fits", True):
            mem = res.get("memory_gb_per_gpu")
            total = mem["total"] if isinstance(mem, dict) else mem
            rejected.append((item.plan.parallel, "sim-memory",
                             f"memory: the simulator finds {total:.1f} GB per GPU, > "
                             f"{base.cluster.gpu.hbm_gb:.1f} GB less its "
                             f"{base.cluster.memory_reserve:.0%} reserve"))
            continue
        rows.append(_row(item.plan, res))
    table = pd.DataFrame(rows)
    ranked = table
    if len(table):
        key = "step_time_s" if objective == "time" else "usd_per_million_tokens"
        table["pareto_time_memory"] = pareto_front(table["step_time_s"], table["memory_gb"])
        table["pareto_time_cost"] = pareto_front(table["step_time_s"],
                                                 table["usd_per_million_tokens"])
        table = table.sort_values([key, "memory_gb"], kind="stable").reset_index(drop=True)
        costs = table[key].map(cost_key)
        table["same_cost"] = costs.map(costs.value_counts())
        table.index = table.index + 1
        table.index.name = "rank"
        ranked = table[~costs.duplicated().to_numpy()].reset_index(drop=True)  # least memory
        ranked.index = ranked.index + 1
        ranked.index.name = "rank"
    rej = pd.DataFrame([{**{k: getattr(p, k) for k in SEARCHED}, "stage": stage,
                         "reason": reason} for p, stage, reason in rejected],
                       columns=[*SEARCHED, "stage", "reason"])
    by_reason = group_reasons([r for _, s, r in rejected
                               if s in ("invalid", "memory", "sim-memory")])
    counts = SearchCounts(
        considered=len(settings),
        rejected=int(rej["stage"].isin(["invalid", "memory", "sim-memory"]).sum()),
        screened_out=int((rej["stage"] == "screened").sum()),
        not_simulated=int((rej["stage"] == "budget").sum()),
        simulated=simulated, timed_by_a_twin=len(done) - simulated,
        rejected_by_reason=by_reason, refined=out.refined)
    result = SearchResult(table=ranked.head(top), all_simulated=table, rejected=rej,
                          counts=counts, base_plan=base, objective=objective, top=top,
                          wall_s=time.perf_counter() - start)
    if progress:
        print(summary(result), file=sys.stderr)
    return result


def search(**options: Any) -> pd.DataFrame:
    """`run_search(**options).table`: the ranked plans as a pandas DataFrame."""
    return run_search(**options).table
