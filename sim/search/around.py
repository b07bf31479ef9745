"""A search around a plan file (`sandbox search PLAN`): the `run_search`
arguments a plan implies, and where the plan itself ranks.

`search_options(plan)` takes the model, the cluster (its size becomes the
number of GPUs), the global batch, every `[train]` field (precision,
attention kernel, ...) and the `[parallel]` fields the search does not vary
and that do not depend on the layout (dp_mode, tp_overlap, ep_dispatch, ...);
the searched fields (`SEARCHED`) are what the search varies. `locate` finds
the plan among the simulated plans, or simulates it, and `describe` says
"your plan: 15.9 s, rank 7 of 18". Times in seconds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from sandbox.specs import Parallel, Plan, Train
from sim.search.result import SearchResult, why
from sim.search.run import parallel_fields, usd_per_million_tokens
from sim.search.space import SEARCHED

# parallel fields tied to one layout (dp, pp, ...): a search around the plan drops them
LAYOUT_BOUND = ("global_batch", "dp_shard", "stage_layers", "replica_microbatches",
                "replica_seq_len")


def dropped_fields(plan: Plan) -> list[str]:
    """The plan's layout-bound parallel fields that differ from the defaults
    (the search cannot keep them: each candidate has its own layout)."""
    default = Parallel()
    return [f"parallel.{k}" for k in LAYOUT_BOUND[1:]
            if getattr(plan.parallel, k) != getattr(default, k)]


def search_options(plan: Plan, gpus: int | None = None) -> dict[str, Any]:
    """Keyword arguments of `run_search` for a search around `plan`: model,
    cluster (section dicts), gpus, global_batch, and the `train` and `parallel`
    sections (plan overrides, the fields that differ from the defaults; parallel
    without the searched and layout-bound fields)."""
    d = plan.to_dict()
    default = dataclasses.asdict(Parallel())
    keep = {k: v for k, v in d["parallel"].items()
            if k not in SEARCHED and k not in LAYOUT_BOUND and v != default[k]}
    train_default = dataclasses.asdict(Train())
    train = {k: v for k, v in d["train"].items() if v != train_default[k]}
    if plan.cluster.gpu.name == "cpu" and train.get("precision") == "fp32":
        del train["precision"]  # CPU's default, not a choice: another --cluster keeps its own
    cluster: Any = d["cluster"]
    if cluster["name"] == "localhost" and gpus not in (None, plan.world_size):
        cluster = "localhost"  # the processes' share of the machine changes with their number
    options = {"model": d["model"], "cluster": cluster, "gpus": gpus or plan.world_size,
               "global_batch": plan.parallel.global_batch}
    if train:
        options["train"] = train
    if keep:
        options["parallel"] = keep
    return options


@dataclass(frozen=True)
class PlanRank:
    """Where a plan stands among a search's simulated plans."""

    step_time_s: float
    rank: int  # 1-based, by the search's objective (then memory), among `total`
    total: int  # simulated plans that fit (with the plan, if the search left it out)
    searched: bool  # True: the search simulated it; False: simulated here
    fits: bool
    memory_gb: float
    reason: str = ""  # where the search left it, when it did


def _objective(result: SearchResult) -> str:
    return "step_time_s" if result.objective == "time" else "usd_per_million_tokens"


def search_key(plan: Plan, base: Plan) -> dict[str, Any]:
    """The plan's searched fields as the search names that setting: with tp = 1
    sequence parallelism off, with cp = 1 the base's cp_method (neither has
    an effect there; `sim.search.space.candidates`)."""
    fields = parallel_fields(plan)
    if fields["tp"] == 1:
        fields["sequence_parallel"] = False
    if fields["cp"] == 1:
        fields["cp_method"] = base.parallel.cp_method
    return fields


def locate(result: SearchResult, plan: Plan, simulate: Callable | None = None,
           exact: bool = True) -> PlanRank:
    """The plan's rank: its row among `result.all_simulated` when the search
    simulated it (and `exact`: its candidate is the plan itself), else one
    simulation of the plan (`simulate`, default `sim.simulate`) ranked
    against the simulated plans."""
    table, key = result.all_simulated, _objective(result)
    fields = search_key(plan, result.base_plan)
    if exact and len(table):
        mask = (table[list(SEARCHED)] == pd.Series(fields)).all(axis=1)
        if mask.any():
            row = table[mask].iloc[0]
            return PlanRank(float(row["step_time_s"]), int(table.index[mask.to_numpy()][0]),
                            len(table), True, True, float(row["memory_gb"]))
    if simulate is None:
        from sim import simulate
    d = simulate(plan).to_dict()
    step = float(d["step_time_s"])
    value = step if key == "step_time_s" else usd_per_million_tokens(step, plan)
    better = int((table[key] < value).sum()) if len(table) else 0
    where = why(result, **fields) if exact else None
    reason = "" if where is None or not len(where) else str(where.iloc[0]["reason"])
    mem = d["memory_gb_per_gpu"]
    return PlanRank(step, better + 1, len(table) + 1, False, bool(d.get("fits", True)),
                    float(mem["total"] if isinstance(mem, dict) else mem), reason)


def describe(r: PlanRank) -> str:
    """"your plan: 15.9 s, rank 7 of 18" (or what the search made of it)."""
    head = f"your plan: {r.step_time_s:.4g} s, {r.memory_gb:.3g} GB per GPU"
    if not r.fits:
        return f"{head}: does not fit in GPU memory"
    if r.searched:
        return f"{head}, rank {r.rank} of {r.total} simulated plans that fit"
    why_out = f"; the search left it out ({r.reason})" if r.reason else ""
    return (f"{head}, would rank {r.rank} of {r.total} (with the {r.total - 1} plans the "
            f"search simulated){why_out}")
