"""A tight, sound lower bound on a plan's step time from its lowered work.

`work_bound(work, topo)` reads what `sim.lowering.lower` produced (the op
costs, pipeline sends, optimizer seconds and the data-parallel flow phases)
and bounds what `sim.engine` can make of it, without running the engine:

- the critical path of replica 0's ops: each pipeline rank runs its ops in
  its schedule's order, an op lasting at least its cost (`OpCost.total`),
  F of virtual stage k after F of k - 1 has ended and its activation has
  been sent, B of k after B of k + 1 and its gradient send (the pipeline
  bubble of the actual schedule, sends included); then the optimizer;
- the data-parallel tail: the last gradient bucket is ready when the stage's
  last backward of chunk 0 ends and takes at least its transfer time alone on
  the network (a flow never moves faster than its links allow it alone); the
  gradient reductions and the ZeRO-3 parameter gathers of one stage run one
  after another on their streams; the ZeRO 1/2 parameter all-gather follows
  the optimizer step;
- the network's capacity: every link carries the bytes of every transfer
  that crosses it, so the step lasts at least the busiest link's bytes over
  its bandwidth.

Only waiting is left out (sends queueing, flows sharing links, gathers
prefetched late), and waiting only adds time, so the bound never exceeds the
simulated step time; `SOUND` shaves off the engine's rounding (flows end
within 1e-3 bytes). Cheap next to the simulation: one pass over the ops and
the phases. Units: seconds, bytes, bytes/s.
"""

from __future__ import annotations

import numpy as np

from sandbox.profile import profile_for
from sandbox.specs import Plan
from sim import engine, lowering, memo
from sim.network.collectives import Phase
from sim.network.flows import LinkIndex
from sim.network.shared import shared
from sim.network.topology import Topology
from sim.work import Work

SOUND = 1 - 1e-7  # relative margin for the engine's float rounding and flow end tolerance


class _Net:
    """Per group of flow paths (by identity; phases are memoised, so ids repeat
    across plans): its links as dense ids with the group's flows crossing each,
    and its per-flow rate alone on the network (bytes/s). Kept per topology
    (`sim.memo`)."""

    def __init__(self, topo: Topology):
        self.topo = topo
        indices = memo.table(topo, "link_index")
        self.groups = memo.table(topo, "group_links")
        if indices is None or self.groups is None:
            indices, self.groups = {}, {}
        self.index = indices.setdefault("index", LinkIndex(topo.capacity))

    def links(self, paths: tuple) -> tuple[np.ndarray, np.ndarray, float]:
        """(link ids, flows of the group on each, the group's per-flow rate)."""
        got = self.groups.get(id(paths))
        if got is None or got[0] is not paths:
            load: dict = {}
            for path in paths:
                for e in path:
                    load[e] = load.get(e, 0) + 1
            idx, n = self.index.load(load)
            rate = float(np.min(self.index.cap[idx] / n))
            got = self.groups[id(paths)] = (paths, idx, n, rate)
        return got[1], got[2], got[3]

    def alone_s(self, phases: list[Phase]) -> float:
        """Seconds of `phases` one after another, each alone on the network: no
        schedule of the flow network runs them faster."""
        total = 0.0
        for ph in phases:
            total += ph.latency_s
            size = max(ph.sizes, default=0.0)
            if size > 0 and ph.paths:
                total += size / self.links(ph.paths)[2]
        return total

    def busiest_link_s(self, sent: dict) -> float:
        """Seconds the busiest link needs for the bytes of `sent` (`_add_load`)."""
        if not sent:
            return 0.0
        parts = [self.links(paths) for paths, _ in sent.values()]
        idx = np.concatenate([p[0] for p in parts])
        w = np.concatenate([p[1] * nbytes for p, (_, nbytes) in zip(parts, sent.values(),
                                                                    strict=True)])
        cap = self.index.cap
        link_bytes = np.bincount(idx, weights=w, minlength=len(cap))
        return float(np.max(link_bytes / cap))


def _add_load(sent: dict, phases: list[Phase], times: int = 1) -> None:
    """Add `times` transfers of `phases` to `sent` ({id(paths): (paths, bytes per
    member)}: a group of flows moves its largest size over each link once per
    member crossing it)."""
    for ph in phases:
        size = max(ph.sizes, default=0.0)
        if size > 0 and ph.paths:
            prev = sent.get(id(ph.paths))
            sent[id(ph.paths)] = (ph.paths, (prev[1] if prev else 0.0) + size * times)


def _distinct(seq: list) -> list[tuple[list[Phase], int]]:
    """(phases, how many times) of a stream's transfers, identical lists once."""
    seen: dict[int, list] = {}
    for _, ph in seq:
        seen.setdefault(id(ph), [ph, 0])[1] += 1
    return [(ph, n) for ph, n in seen.values()]


def critical_path(work: Work) -> tuple[list[float], list[float]]:
    """Replica 0's ops as a dependency graph -> per stage (the end of its last
    op, the end of the op after which its last gradient bucket is ready:
    chunk 0's last backward, as `sim.engine` issues the buckets), seconds."""
    rw = work.rep(0)
    P, v = work.p, work.v
    n_vs = P * v
    total = {k: c.total for k, c in rw.cost.items()}
    fwd = [work.send_of(rw, s, "fwd") for s in range(P)]
    bwd = [work.send_of(rw, s, "bwd") for s in range(P)]
    arrive: dict[int, float] = {}  # 2 * (mb * n_vs + vs) + (0 F, 1 B) -> arrival, s
    waiting: dict[int, int] = {}
    pos, now, ready = [0] * P, [0.0] * P, [0.0] * P
    final, seen = [], [0] * P
    for s in range(P):
        last_kind = "W" if total[(s, 0, "W")] else "B"
        n_b = sum(1 for k, _, _ in rw.ops[s] if k == last_kind)
        final.append((last_kind, max(1, n_b // v)))
    todo = list(range(P))
    while todo:
        s = todo.pop()
        ops, t, i = rw.ops[s], now[s], pos[s]
        last_kind, n_final = final[s]
        while i < len(ops):
            kind, mb, c = ops[i]
            vs = c * P + s
            base = 2 * (mb * n_vs + vs)
            need = (base - 2 if kind == "F" and vs > 0 else
                    base + 3 if kind == "B" and vs < n_vs - 1 else -1)
            if need >= 0:
                at = arrive.get(need)
                if at is None:
                    waiting[need] = s
                    break
                if at > t:
                    t = at
            t += total[(s, c, kind)]
            if kind == last_kind and c == 0:
                seen[s] += 1
                if seen[s] == n_final:
                    ready[s] = t
            out = -1
            if kind == "F" and vs < n_vs - 1:
                out, arrive[base] = base, t + fwd[s]
            elif kind == "B" and vs > 0:
                out, arrive[base + 1] = base + 1, t + bwd[s]
            if out >= 0 and out in waiting:
                todo.append(waiting.pop(out))
            i += 1
        pos[s], now[s] = i, t
    if any(pos[s] < len(rw.ops[s]) for s in range(P)):
        raise ValueError("critical_path: the schedule deadlocks")  # never for sim.schedules
    return now, ready


def work_bound(work: Work, topo: Topology) -> float:
    """A lower bound on the step time `sim.engine` finds for `work` on `topo`
    (see the module docstring), seconds. Valid for the all-reduce and
    parameter-server data-parallel modes (local SGD and async change the step
    after the engine: `sim.sync.variants.finish`)."""
    eng = engine.Engine(work, topo, work.representatives(), timeline=False)  # not run
    net = _Net(topo)
    rw = work.rep(0)
    ends, ready = critical_path(work)
    sent: dict = {}
    best = 0.0
    for s in range(work.p):
        stage = ends[s]
        if work.dp_buckets[s]:
            seq = eng.seq[s]
            stream = 0.0
            for ph, n in _distinct(seq):
                stream += n * net.alone_s(ph)
                _add_load(sent, ph, n)
            stage = max(stage, ready[s] + net.alone_s(seq[-1][1]), stream)
        if work.zero3_ag and work.zero3_ag[s]:
            n_ag = max(eng.n_ag[(r, s)] for r in eng.replicas)
            stage = max(stage, eng.n_ag[(0, s)] * net.alone_s(work.zero3_ag[s]))
            _add_load(sent, work.zero3_ag[s], n_ag)
        tail = 0.0
        if work.dp_gather and work.dp_gather[s]:  # ZeRO 1/2: after every replica's step
            tail = net.alone_s(work.dp_gather[s])
            if work.plan.parallel.overlap_param_gather:
                first_f = rw.cost[(s, 0, "F")]
                tail = max(0.0, tail - first_f.compute_s - first_f.tp_s)
            _add_load(sent, work.dp_gather[s])
        best = max(best, stage + rw.optimizer_s[s] + tail)
    return max(best, net.busiest_link_s(sent)) * SOUND


def refined_bound(plan: Plan) -> float | None:
    """`work_bound` of `plan` lowered as `sim.simulate(plan)` lowers it (its
    defaults: the cluster's profile and network, bucketed overlapped ring
    reductions), seconds; None for the data-parallel modes the engine does not
    finish (local-sgd, async: `work_bound`)."""
    if plan.parallel.dp_mode not in ("allreduce", "parameter-server"):
        return None
    prof = profile_for(plan.cluster)
    topo = shared(plan.cluster)
    return work_bound(lowering.lower(plan, topo, prof), topo)
