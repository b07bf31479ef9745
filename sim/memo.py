"""Memo tables that live as long as one network topology.

The simulator's network costs are pure functions of (topology, arguments):
`sim.network.shared` hands out one `Topology` per cluster and never changes
it (it `register`s it here), so a result computed once for a collective or a
stage is valid for every later plan on that topology. `table(topo, name)` is
a dict for one function's results on a registered `topo` (None for any other
topology: one built by hand may be changed, so nothing is memoised for it),
dropped when the topology is garbage-collected; keys are
the function's other arguments (frozen dataclasses, tuples), never an
approximation of them, so a hit returns exactly what the call would compute.
A table is emptied when it reaches `MAX_ENTRIES` (memory, not correctness).
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

MAX_ENTRIES = 200_000  # per table

_TABLES: dict[int, tuple[weakref.ref, dict[str, dict]]] = {}
_ON = [True]


def _forget(ref: weakref.ref, key: int) -> None:
    if _TABLES is None:  # interpreter teardown: module globals already cleared
        return
    got = _TABLES.get(key)
    if got is not None and got[0] is ref:
        del _TABLES[key]


def register(topo: Any) -> Any:
    """Mark `topo` as never changed again (memo tables may hold its results)."""
    key = id(topo)
    got = _TABLES.get(key)
    if got is None or got[0]() is not topo:
        _TABLES[key] = (weakref.ref(topo, functools.partial(_forget, key=key)), {})
    return topo


def table(topo: Any, name: str) -> dict | None:
    """The memo dict of function `name` on a registered `topo` (created empty);
    None for a topology not registered, or while memoisation is off (`disabled`)."""
    if not _ON[0]:
        return None
    got = _TABLES.get(id(topo))
    if got is None or got[0]() is not topo:
        return None
    tables = got[1]
    t = tables.get(name)
    if t is None or len(t) >= MAX_ENTRIES:
        t = tables[name] = {}
    return t


_SHARED: dict[str, dict] = {}


def shared_table(name: str) -> dict | None:
    """A memo dict of function `name` for arguments not tied to one topology
    (keys must pin what they stand for: values, or objects the entry keeps
    alive); None while memoisation is off."""
    if not _ON[0]:
        return None
    t = _SHARED.get(name)
    if t is None or len(t) >= MAX_ENTRIES:
        t = _SHARED[name] = {}
    return t


def clear() -> None:
    """Empty every memo table (tests compare cached and uncached results)."""
    # a copy: clearing drops cached values that may hold the last reference to a
    # topology, whose weakref callback then removes its entry from _TABLES
    for _ref, tables in list(_TABLES.values()):
        tables.clear()
    _SHARED.clear()


@contextmanager
def disabled() -> Iterator[None]:
    """Compute everything afresh inside the block (tests: cached == uncached)."""
    _ON[0] = False
    try:
        yield
    finally:
        _ON[0] = True
