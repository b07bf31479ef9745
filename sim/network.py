"""Flows sharing links max-min fairly (fluid model).

`max_min_rates` is progressive filling: every unfrozen flow grows at the same
rate until a link saturates; flows through it freeze. `fluid_finish` runs a
set of flows that start together to completion (rates re-shared each time
one ends) without simpy: the closed-form path for collectives that run alone.
`FlowNetwork` is the simpy version for flows that start at different times
(data-parallel groups of different pipeline stages contending for NICs).
Units: bytes, bytes/s, seconds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import simpy


def max_min_rates(paths: Sequence, capacity: Callable[[tuple], float]) -> list[float]:
    """Max-min fair rate of each flow (bytes/s) given its links' capacities.

    A path is a sequence of links, or a dict {link: weight} for a group of
    `weight` identical flows per link that move together (one collective
    phase): the group's rate is per flow, and it loads the link `weight` times.
    """
    n = len(paths)
    rates = [0.0] * n
    if n == 0:
        return rates
    loads = [p if isinstance(p, dict) else _count(p) for p in paths]
    users: dict = {}
    for i, ld in enumerate(loads):
        for e in ld:
            users.setdefault(e, []).append(i)
    remaining = {e: capacity(e) for e in users}
    weight = {e: sum(loads[i][e] for i in u) for e, u in users.items()}
    frozen = [False] * n
    left = n
    while left:
        e_min, share = None, float("inf")
        for e, w in weight.items():
            if w > 0 and remaining[e] / w < share:
                e_min, share = e, remaining[e] / w
        if e_min is None:
            break
        for e, w in weight.items():
            remaining[e] -= share * w
        for i in range(n):
            if not frozen[i]:
                rates[i] += share
        for i in users[e_min]:
            if not frozen[i]:
                frozen[i] = True
                left -= 1
                for e, w in loads[i].items():
                    weight[e] -= w
        weight = {e: w for e, w in weight.items() if w > 1e-12}
    return rates


def _count(path: Sequence) -> dict:
    out: dict = {}
    for e in path:
        out[e] = out.get(e, 0) + 1
    return out


def fluid_finish(paths: Sequence[Sequence], sizes: Sequence[float],
                 capacity: Callable[[tuple], float]) -> list[float]:
    """Finish time (s) of each flow when all start at 0 on an otherwise idle network."""
    n = len(paths)
    done = [0.0] * n
    left = {i: float(sizes[i]) for i in range(n) if sizes[i] > 0}
    now = 0.0
    while left:
        idx = list(left)
        rates = max_min_rates([paths[i] for i in idx], capacity)
        dt = min(left[i] / r for i, r in zip(idx, rates, strict=True))
        now += dt
        for i, r in zip(idx, rates, strict=True):
            left[i] -= r * dt
            if left[i] <= 1e-9 * max(1.0, sizes[i]):
                done[i] = now
                del left[i]
    return done


class FlowNetwork:
    """Flows in a simpy environment, re-shared max-min fairly on every change."""

    def __init__(self, env: simpy.Environment, capacity: Callable[[tuple], float]):
        self.env = env
        self.capacity = capacity
        self.flows: dict[int, list] = {}  # id -> [path, remaining bytes, rate, event]
        self._next = 0
        self._last = 0.0
        self._gen = 0
        self.reshares = 0

    def transfer(self, paths: Sequence[Sequence], sizes: Sequence[float]) -> simpy.Event:
        """Start a group of equal flows now (one collective phase: they move at
        one per-flow rate); the event fires when they have all finished."""
        ev = self.env.event()
        size = max(sizes, default=0.0)
        if size <= 0:
            ev.succeed()
            return ev
        self._advance()
        load: dict = {}
        for p in paths:
            for e in p:
                load[e] = load.get(e, 0) + 1
        self.flows[self._next] = [load, float(size), 0.0, ev]
        self._next += 1
        self._reshare()
        return ev

    def _advance(self) -> None:
        dt = self.env.now - self._last
        if dt > 0:
            for f in self.flows.values():
                f[1] -= f[2] * dt
        self._last = self.env.now

    def _reshare(self) -> None:
        self.reshares += 1
        ids = list(self.flows)
        rates = max_min_rates([self.flows[i][0] for i in ids], self.capacity)
        for i, r in zip(ids, rates, strict=True):
            self.flows[i][2] = r
        if ids:
            dt = min(self.flows[i][1] / max(self.flows[i][2], 1e-30) for i in ids)
            self._gen += 1
            gen = self._gen
            self.env.timeout(max(dt, 0.0)).callbacks.append(lambda _e: self._wake(gen))

    def _wake(self, gen: int) -> None:
        if gen != self._gen:
            return  # a newer re-share superseded this wake-up
        self._advance()
        for i in [i for i, f in self.flows.items() if f[1] <= max(1e-3, f[2] * 1e-12)]:
            self.flows.pop(i)[3].succeed()
        self._reshare()
