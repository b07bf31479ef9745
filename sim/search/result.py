"""The strategy search's typed result, and what can be asked of it.

`SearchResult` holds the ranked table (one row per simulated plan that fits,
best first, the top `top`), every simulated plan that fits (`all_simulated`),
every candidate that was not ranked with its stage and reason (`rejected`),
the counts, and the base plan, so that `why(result, tp=.., pp=..)` can say
why a plan is missing and `plan_of(result, row)` rebuilds a row's plan.
Times in seconds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from sandbox.errors import SandboxError
from sandbox.planfile import load
from sandbox.specs import Plan
from sandbox.validate import plan_problems
from sim.search.space import SEARCHED, with_parallel


@dataclass(frozen=True)
class SearchCounts:
    """How many candidates went where (they add up to `considered`)."""

    considered: int
    rejected: int  # invalid, too big for memory, or too big once simulated
    screened_out: int  # pruned by the lower bound
    not_simulated: int  # left over when the simulation budget was spent
    simulated: int
    timed_by_a_twin: int  # ranked with the timing of an identical twin (ZeRO 1 / 2)
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    refined: int = 0  # candidates whose bound was tightened from their lowered work


@dataclass(frozen=True)
class SearchResult:
    """A search's ranked plans, its rejections and its counts."""

    table: pd.DataFrame  # the top `top` rows, index "rank" from 1
    all_simulated: pd.DataFrame  # every simulated plan that fits, ranked
    rejected: pd.DataFrame  # SEARCHED fields, "stage", "reason"
    counts: SearchCounts
    base_plan: Plan  # what every candidate starts from (global batch not yet validated)
    objective: str
    top: int
    wall_s: float  # seconds the search took (reported only)


def summary(result: SearchResult) -> str:
    """One paragraph of the search's counts."""
    c = result.counts
    lines = [f"search: {c.considered:,} candidates considered; {c.rejected:,} "
             f"rejected; {c.screened_out:,} screened out by the lower bound; "
             f"{c.not_simulated:,} left unsimulated (budget); {c.simulated:,} simulated "
             f"(+{c.timed_by_a_twin:,} timed by an identical twin; {c.refined:,} bounds "
             f"tightened from the lowered work) in {result.wall_s:.1f} s"]
    lines += [f"  rejected {n:,}: {why}" for why, n in c.rejected_by_reason.items()]
    return "\n".join(lines)


def plan_of(result: SearchResult, row: Any) -> Plan:
    """The plan of one result row (a rank of `result.table`, or a row Series/dict), validated."""
    if isinstance(row, int):
        row = result.table.loc[row]
    return load(with_parallel(result.base_plan, **{k: py(row[k]) for k in SEARCHED}))


def py(v: Any) -> Any:
    """A numpy scalar as the Python value (anything else unchanged)."""
    return v.item() if hasattr(v, "item") else v


def why(result: SearchResult, **fields: Any) -> pd.DataFrame:
    """Rows (ranked or rejected) matching `fields`, with where they went and why.

    Returns a DataFrame with the parallel fields, `stage` ("ranked",
    "invalid", "memory", "screened", "budget", "sim-memory") and `reason`. A plan the search
    never enumerated is checked by the validator on the spot.
    """
    bad = [k for k in fields if k not in SEARCHED]
    if bad:
        raise SandboxError(f"why: unknown field '{bad[0]}'; fields: {', '.join(SEARCHED)}")
    frames = []
    table = result.table
    if len(table):
        ranked = table.reset_index()
        mask = pd.Series(True, index=ranked.index)
        for k, v in fields.items():
            mask &= ranked[k] == v
        hit = ranked[mask]
        frames.append(pd.DataFrame({**{k: hit[k] for k in SEARCHED}, "stage": "ranked",
                                    "reason": [f"rank {r}" for r in hit["rank"]]}))
    rej = result.rejected
    mask = pd.Series(True, index=rej.index)
    for k, v in fields.items():
        mask &= rej[k] == v
    frames.append(rej[mask])
    out = pd.concat([f for f in frames if len(f)], ignore_index=True) if any(
        len(f) for f in frames) else pd.DataFrame(columns=[*SEARCHED, "stage", "reason"])
    if len(out) == 0:
        base = result.base_plan
        tp, pp = fields.get("tp", 1), fields.get("pp", 1)
        if "dp" not in fields and base.world_size % (tp * pp) == 0:
            fields = {**fields, "dp": base.world_size // (tp * pp)}
        plan = with_parallel(base, **fields)
        par = plan.parallel
        problems = plan_problems(plan)
        reason = ("not enumerated: " + (problems[0] if problems else
                                        "outside the search space (see sim.search.space)"))
        out = pd.DataFrame([{**{k: getattr(par, k) for k in SEARCHED}, "stage": "invalid"
                             if problems else "not enumerated", "reason": reason}])
    return out


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
    """Dotted keys -> nested dicts (the inverse of `flatten`)."""
    out: dict = {}
    for k, v in d.items():
        parts = k.split(".")
        target = out
        for p in parts[:-1]:
            target = target.setdefault(p, {})
        target[parts[-1]] = v
    return out


def to_records(table: pd.DataFrame) -> list[dict]:
    """The rows of a result table as JSON-ready dicts: parallel fields, contract
    fields nested again."""
    if len(table) == 0:
        return []
    records = json.loads(table.reset_index().to_json(orient="records"))
    return [unflatten(r) for r in records]
