"""Best-first simulation of screened candidates, up to a sound bound.

Every candidate has an analytic lower bound on its step time
(`sim.search.space.step_time_lower_bound`, cheap, evaluated for all); with
the default simulator it also gets a tight one from its lowered work
(`sim.search.refine.refined_bound`: the critical path of its ops, its
data-parallel tail and the busiest link; a few milliseconds), computed only
when it is needed. The loop is A*-like: always take the candidate with the
least known bound; a candidate known only by its analytic bound is refined
and put back, a refined one is simulated. It stops when the least bound
cannot enter the top `top` distinct simulated objectives, or when
`max_simulations` plans are simulated. So the best plans are simulated
first and the top-th objective falls early; a candidate is left out only
when a sound bound shows it cannot enter the top.

Deterministic whatever the number of workers: the sequence of decisions is
that of one process; workers only compute ahead (refinements in bound order,
simulations of the best refined candidates) and a speculative result is
used, or dropped, when the loop gets to it. Objectives are linear in the
step time (seconds, or USD per million tokens).
"""

from __future__ import annotations

import heapq
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

import sim
from sandbox.specs import Plan
from sim.search.executors import pool
from sim.search.refine import refined_bound
from sim.search.space import Screened

SAME_COST_DIGITS = 12  # objectives equal to this many significant digits are one cost


def cost_key(value: float) -> float:
    """An objective rounded to SAME_COST_DIGITS significant digits: plans with one key
    cost the same (ZeRO stages that time alike, to 16 digits)."""
    return float(f"{value:.{SAME_COST_DIGITS}g}")


def simulate_dict(simulator: Callable | None, plan: Plan) -> dict:
    """Simulate one plan -> the `simulate` contract as a dict (runs in a worker;
    the default simulator without a timeline: the same numbers, no spans)."""
    result = simulator(plan) if simulator else sim.simulate(plan, timeline=False)
    return result.to_dict() if hasattr(result, "to_dict") else dict(result)


@dataclass
class Outcome:
    """What the loop did: simulated (candidate, result) in simulation order,
    and the candidates left out with their best known bound (seconds) and why
    ("screened": the bound cannot enter the top; "budget": not reached)."""

    done: list[tuple[Screened, dict]]
    left: list[tuple[Screened, float, str]]
    refined: int  # candidates whose lowered-work bound was computed


class _Lazy:
    """A future computed when its result is first asked for (one process)."""

    def __init__(self, fn: Callable, args: tuple):
        self.fn, self.args, self.value, self.ran = fn, args, None, False

    def result(self) -> Any:
        if not self.ran:
            self.value, self.ran = self.fn(*self.args), True
        return self.value

    def cancel(self) -> None:
        pass


class _Inline:
    def submit(self, fn: Callable, *args: Any) -> _Lazy:
        return _Lazy(fn, args)


@contextmanager
def _executor(executor: str, workers: int, address: str | None) -> Iterator[Any]:
    if workers == 1 and executor == "local":
        yield _Inline()
    else:
        with pool(executor, workers, address) as ex:
            yield ex


def best_first(todo: list[Screened], top: int, objective_of: Callable[[Plan, float], float],
               workers: int, max_simulations: int | None = None,
               simulator: Callable | None = None, progress: bool = False,
               executor: str = "local", address: str | None = None) -> Outcome:
    """Simulate `todo` (sorted by objective_of(plan, analytic bound)) best bound
    first until no candidate left can enter the top `top` (module docstring).
    Refinements run here (they reuse this process's memo tables, `sim.memo`),
    simulations on the executor's workers."""
    n = len(todo)
    refine = simulator is None
    first = [objective_of(t.plan, t.lower_bound_s) for t in todo]
    bound_s = [t.lower_bound_s for t in todo]  # best known bound, seconds
    budget = n if max_simulations is None else min(n, max_simulations)
    best: list[float] = []  # distinct objectives that fit, sorted
    seen: set[float] = set()
    done: list[tuple[Screened, dict]] = []
    # (objective of the best known bound, index) of the candidates before j
    pending: list[tuple[float, int]] = [] if refine else [(first[i], i) for i in range(n)]
    j = 0 if refine else n
    key_of = {i: b for b, i in pending}
    sims: dict[int, Any] = {}  # index -> future of simulate_dict, computed ahead
    ahead = 2 * workers
    bar = tqdm(total=budget, desc="simulating", unit="plan", file=sys.stderr,
               disable=not progress, leave=False)

    def kth() -> float:
        return best[top - 1] if len(best) >= top else float("inf")

    def record(i: int, result: dict) -> None:
        done.append((todo[i], result))
        key = cost_key(objective_of(todo[i].plan, result["step_time_s"]))
        if result.get("fits", True) and key not in seen:
            seen.add(key)
            best.append(key)
            best.sort()
        bar.update(1)

    with _executor(executor, workers, address) as ex:
        while True:
            limit = kth()
            for i in [i for i in sims if key_of[i] >= limit]:  # never asked for again
                sims.pop(i).cancel()
            for b, i in heapq.nsmallest(ahead, pending):  # simulate ahead what comes next
                if len(sims) >= ahead or b >= limit or len(done) + len(sims) >= budget:
                    break
                if i not in sims:
                    sims[i] = ex.submit(simulate_dict, simulator, todo[i].plan)
            top1 = first[j] if j < n else float("inf")
            top2 = pending[0][0] if pending else float("inf")
            if min(top1, top2) >= limit:
                break
            if top2 < top1:  # the best candidate is refined: simulate it
                if len(done) >= budget:
                    break
                _, i = heapq.heappop(pending)
                fut = sims.pop(i, None) or ex.submit(simulate_dict, simulator, todo[i].plan)
                record(i, fut.result())
            else:  # refine the best analytic one and put it back
                r = refined_bound(todo[j].plan)
                if r is not None:
                    bound_s[j] = r
                key_of[j] = objective_of(todo[j].plan, bound_s[j])
                heapq.heappush(pending, (key_of[j], j))
                j += 1
        for f in sims.values():
            f.cancel()
    bar.close()
    limit = kth()
    left = [i for _, i in sorted(pending)] + list(range(j, n))
    return Outcome(done, [(todo[i], bound_s[i], "screened" if objective_of(
        todo[i].plan, bound_s[i]) >= limit else "budget") for i in left], j if refine else 0)
