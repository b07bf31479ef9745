"""Flows sharing links max-min fairly (fluid model).

`max_min_rates` is progressive filling: every unfrozen flow grows at the same
rate until a link saturates; flows through it freeze. `fluid_finish` runs a
set of flows that start together to completion (rates re-shared each time
one ends) without simpy: the closed-form path for collectives that run alone.
`FlowNetwork` is the simpy version for flows that start at different times
(data-parallel groups of different pipeline stages contending for NICs).

A flow may stand for a group of identical flows that move together (one
phase of a collective: every ring edge carries the same bytes): it then
loads each of its links once per member crossing it, and its rate is the
per-member rate. The filling is vectorised with numpy over (flow, link)
incidence lists, so a re-share costs O(links crossed) per frozen level.
Units: bytes, bytes/s, seconds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import simpy


class LinkIndex:
    """Dense integer ids for links, with their capacities (bytes/s)."""

    def __init__(self, capacity: Callable[[tuple], float]):
        self.capacity = capacity
        self.ids: dict = {}
        self._cap: list[float] = []
        self._arr = np.zeros(0)

    def load(self, path) -> tuple[np.ndarray, np.ndarray]:
        """(link ids, weights) of a path (a sequence of links, repeats counted)
        or of a {link: weight} dict."""
        counts: dict = {}
        if isinstance(path, dict):
            counts = path
        else:
            for e in path:
                counts[e] = counts.get(e, 0) + 1
        idx = np.empty(len(counts), dtype=np.int64)
        for j, e in enumerate(counts):
            i = self.ids.get(e)
            if i is None:
                i = self.ids[e] = len(self._cap)
                self._cap.append(float(self.capacity(e)))
            idx[j] = i
        return idx, np.fromiter(counts.values(), dtype=float, count=len(counts))

    @property
    def cap(self) -> np.ndarray:
        if len(self._arr) != len(self._cap):
            self._arr = np.asarray(self._cap, dtype=float)
        return self._arr


def fill(loads: Sequence[tuple[np.ndarray, np.ndarray]], cap: np.ndarray) -> np.ndarray:
    """Max-min fair rates (bytes/s) of flows given as (link ids, weights)."""
    n = len(loads)
    rates = np.zeros(n)
    if n == 0:
        return rates
    lens = np.fromiter((len(ld[0]) for ld in loads), dtype=np.int64, count=n)
    if lens.sum() == 0:
        return np.full(n, np.inf)
    links, inv = np.unique(np.concatenate([ld[0] for ld in loads]), return_inverse=True)
    w = np.concatenate([ld[1] for ld in loads])
    owner = np.repeat(np.arange(n), lens)
    remaining = cap[links].astype(float)
    active = lens > 0
    rates[~active] = np.inf
    while active.any():
        on = active[owner]
        weight = np.bincount(inv[on], weights=w[on], minlength=len(links))
        used = weight > 0
        ratio = np.full(len(links), np.inf)
        ratio[used] = remaining[used] / weight[used]
        share = max(float(ratio.min()), 0.0)
        rates[active] += share
        remaining -= share * weight
        saturated = ratio <= share * (1 + 1e-9) + 1e-300
        frozen = np.zeros(n, dtype=bool)
        frozen[owner[on & saturated[inv]]] = True
        active &= ~frozen
    return rates


def max_min_rates(paths: Sequence, capacity: Callable[[tuple], float]) -> list[float]:
    """Max-min fair rate of each flow (bytes/s) given its links' capacities.

    A path is a sequence of links, or a dict {link: weight} for a group of
    `weight` identical flows per link that move together (one collective
    phase): the group's rate is per flow, and it loads the link `weight` times.
    """
    index = LinkIndex(capacity)
    loads = [index.load(p) for p in paths]
    return fill(loads, index.cap).tolist()


def fluid_finish(paths: Sequence[Sequence], sizes: Sequence[float],
                 capacity: Callable[[tuple], float]) -> list[float]:
    """Finish time (s) of each flow when all start at 0 on an otherwise idle network."""
    index = LinkIndex(capacity)
    loads = [index.load(p) for p in paths]
    cap = index.cap
    n = len(paths)
    done = np.zeros(n)
    left = np.asarray(sizes, dtype=float).copy()
    alive = np.flatnonzero(left > 0)
    now = 0.0
    while len(alive):
        rates = fill([loads[i] for i in alive], cap)
        dt = float(np.min(left[alive] / rates))
        now += dt
        left[alive] -= rates * dt
        finished = left[alive] <= 1e-9 * np.maximum(1.0, np.asarray(sizes)[alive])
        done[alive[finished]] = now
        alive = alive[~finished]
    return done.tolist()


class FlowNetwork:
    """Flows in a simpy environment, re-shared max-min fairly on every change."""

    def __init__(self, env: simpy.Environment, capacity: Callable[[tuple], float]):
        self.env = env
        self.index = LinkIndex(capacity)
        self.flows: dict[int, list] = {}  # id -> [(ids, weights), remaining bytes, rate, event]
        self._next = 0
        self._last = 0.0
        self._gen = 0
        self.reshares = 0
        self._loads: dict = {}  # id(paths) -> (paths, link load): phases repeat per bucket

    def transfer(self, paths: Sequence[Sequence], sizes: Sequence[float]) -> simpy.Event:
        """Start a group of equal flows now (one collective phase: they move at
        one per-flow rate); the event fires when they have all finished."""
        ev = self.env.event()
        size = max(sizes, default=0.0)
        if size <= 0:
            ev.succeed()
            return ev
        self._advance()
        key = id(paths)
        cached = self._loads.get(key)
        if cached is None or cached[0] is not paths:
            load: dict = {}
            for p in paths:
                for e in p:
                    load[e] = load.get(e, 0) + 1
            cached = self._loads[key] = (paths, self.index.load(load))
        self.flows[self._next] = [cached[1], float(size), 0.0, ev]
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
        rates = fill([self.flows[i][0] for i in ids], self.index.cap)
        for i, r in zip(ids, rates, strict=True):
            self.flows[i][2] = float(r)
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
