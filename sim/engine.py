"""The discrete-event engine: simpy processes per simulated rank.

Each simulated rank (a pipeline stage of a data-parallel replica; its
tensor-parallel peers are identical) has a compute stream (a simpy process
walking its schedule, waiting for the activations / gradients it needs), a
pipeline send stream per direction, and a data-parallel stream that reduces
gradient buckets through the shared `FlowNetwork` as soon as the backward
pass has produced them. Bubbles and overlap come out of the event order.
Units: seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import simpy

from sandbox.layout import rank_of
from sim.network.flows import FlowNetwork
from sim.network.topology import Topology
from sim.work import Work


@dataclass
class RankStats:
    """Where one simulated rank's step went (seconds)."""

    compute: float = 0.0
    tp_comm: float = 0.0
    pp_comm: float = 0.0
    bubble: float = 0.0
    dp_comm: float = 0.0
    optimizer: float = 0.0
    host: float = 0.0  # ops' time beyond their GPU work: the host dispatching them
    finish: float = 0.0


@dataclass
class EngineResult:
    """One simulated step: its seconds, per-rank stats, spans and event count."""

    step_time_s: float
    stats: dict[tuple[int, int], RankStats]  # (replica, stage) -> stats
    spans: list[dict] = field(default_factory=list)
    events: int = 0


class Engine:
    """One step of some data-parallel replicas of `work` as simpy processes.

    Per simulated rank: a compute stream (`_stage`), pipeline sends per
    direction (`_send`); per stage: a data-parallel stream reducing the
    gradient buckets (`_dp_stream`) and, with ZeRO 1/2, the parameter
    all-gather after every replica's optimizer step (`_gather_stream`).
    """

    def __init__(self, work: Work, topo: Topology, replicas: tuple[int, ...] = (0,),
                 timeline: bool = True):
        self.work, self.replicas, self.timeline = work, replicas, timeline
        self.plan, self.P, self.v = work.plan, work.p, work.v
        self.env = env = simpy.Environment()
        self.net = FlowNetwork(env, topo.capacity)
        self.arrive: dict[tuple, simpy.Event] = {}
        self.spans: list[dict] = []
        self.stats = {(r, s): RankStats() for r in replicas for s in range(self.P)}
        self.send_free: dict[tuple, float] = {}
        self.n_rep = len(replicas)
        self.rws = {r: work.rep(r) for r in replicas}  # per-replica work (sim.replicas)
        # data-parallel buckets: ready counters across simulated replicas
        self.ready: dict[tuple[int, int], simpy.Event] = {}
        self.counts: dict[tuple[int, int], int] = {}
        self.dp_done = {s: env.event() for s in range(self.P)}
        # ZeRO 1/2: every replica's optimizer step, then the parameter all-gather
        self.stepped: dict[int, int] = {}
        self.gathered = {s: env.event() for s in range(self.P)}

    def run(self) -> EngineResult:
        """Start every stream, step the simulation to its end."""
        env, work = self.env, self.work
        for s in range(self.P):
            if work.dp_buckets[s]:
                env.process(self._dp_stream(s))
            else:
                self.dp_done[s].succeed()
            for r in self.replicas:
                env.process(self._stage(r, s))
        events = 0
        while True:
            try:
                env.step()
            except simpy.core.EmptySchedule:
                break
            events += 1
        step = max(x.finish for x in self.stats.values())
        return EngineResult(step, self.stats, self.spans, events)

    def _ev(self, key: tuple) -> simpy.Event:
        e = self.arrive.get(key)
        if e is None:
            e = self.arrive[key] = self.env.event()
            e.sent_at = None
        return e

    def _span(self, rank: int, stream: str, kind: str, t0: float, t1: float,
              mb: int = -1) -> None:
        if self.timeline and t1 > t0:
            self.spans.append({"rank": rank, "stream": stream, "kind": kind, "start_s": t0,
                               "end_s": t1, "microbatch": mb})

    def _send(self, r: int, s: int, key: tuple, direction: str) -> None:
        env = self.env
        sk = (r, s, direction)
        start = max(env.now, self.send_free.get(sk, 0.0))
        end = start + self.work.send_of(self.rws[r], s, direction)
        self.send_free[sk] = end
        target = self._ev(key)
        target.sent_at = env.now
        self._span(rank_of(self.plan, r, s, 0), f"pp_send_{direction}", "pp_comm", start, end,
                   key[2])
        env.timeout(end - env.now).callbacks.append(lambda _e: target.succeed())

    def _bucket_ready(self, s: int, k: int) -> None:
        self.counts[(s, k)] = self.counts.get((s, k), 0) + 1
        if self.counts[(s, k)] == self.n_rep:
            self.ready.setdefault((s, k), self.env.event()).succeed()

    def _dp_stream(self, s: int):
        """Reduce the stage's buckets in order; buckets already ready when the
        stream gets to them go as one transfer (same flows, summed bytes and
        latencies: identical in the fluid model, far fewer events)."""
        env, ready = self.env, self.ready
        buckets = self.work.dp_buckets[s]
        k = 0
        while k < len(buckets):
            yield ready.setdefault((s, k), env.event())
            j = k + 1
            while j < len(buckets) and ready.setdefault((s, j), env.event()).triggered \
                    and buckets[j][1] is buckets[k][1]:
                j += 1
            t0 = env.now
            yield from self._transfer(buckets[k][1], j - k)
            for r in self.replicas:
                self._span(rank_of(self.plan, r, s, 0), "dp_comm", "dp_comm", t0, env.now)
            k = j
        self.dp_done[s].succeed()

    def _transfer(self, phases: list, times: int = 1):
        for ph in phases:
            sizes = ph.sizes if times == 1 else tuple(x * times for x in ph.sizes)
            yield self.net.transfer(ph.paths, sizes)
            yield self.env.timeout(ph.latency_s * times)

    def _gather_stream(self, s: int):
        t0 = self.env.now
        yield from self._transfer(self.work.dp_gather[s])
        for r in self.replicas:
            self._span(rank_of(self.plan, r, s, 0), "dp_comm", "param_allgather", t0,
                       self.env.now)
        self.gathered[s].succeed()

    def _optimizer_done(self, s: int) -> None:
        self.stepped[s] = self.stepped.get(s, 0) + 1
        if self.stepped[s] == self.n_rep:
            self.env.process(self._gather_stream(s))

    def _stage(self, r: int, s: int):
        """The compute stream of replica r's stage s: its schedule, waiting for
        activations / gradients, then the reduction, the optimizer, the gather."""
        env, work, P, v = self.env, self.work, self.P, self.v
        st = self.stats[(r, s)]
        rank = rank_of(self.plan, r, s, 0)
        rw = self.rws[r]
        ops = rw.ops[s]
        last_kind = "W" if rw.cost[(s, 0, "W")].total else "B"
        n_b = sum(1 for k, _, _ in ops if k == last_kind)
        seen_last = 0
        ag_t = work.zero3_ag_s[s]
        ag_done = ag_t
        for kind, mb, c in ops:
            vs = c * P + s
            need = None
            if kind == "F" and vs > 0:
                need = self._ev((r, "F", mb, vs - 1))
            elif kind == "B" and vs < P * v - 1:
                need = self._ev((r, "B", mb, vs + 1))
            if need is not None and not need.triggered:
                t_wait = env.now
                yield need
                sent = need.sent_at if need.sent_at is not None else env.now
                exposed_pp = env.now - max(t_wait, sent)
                st.pp_comm += exposed_pp
                st.bubble += env.now - t_wait - exposed_pp
            if ag_t and kind != "W":
                if env.now < ag_done:
                    t_wait = env.now
                    yield env.timeout(ag_done - env.now)
                    st.dp_comm += env.now - t_wait
                self._span(rank, "dp_comm", "param_allgather", ag_done - ag_t, ag_done, mb)
                ag_done = max(env.now, ag_done) + ag_t  # prefetch the next op's params
            cost = rw.cost[(s, c, kind)]
            t0 = env.now
            if kind == last_kind and c == 0:
                seen_last += 1
                if seen_last == max(1, n_b // v) and work.dp_buckets[s]:
                    self._issue_buckets(s, t0, t0 + cost.total)
            yield env.timeout(cost.total)
            st.compute += cost.compute_s
            st.tp_comm += cost.tp_s
            st.host += cost.total - cost.compute_s - cost.tp_s
            self._span(rank, "compute", {"F": "fwd", "B": "bwd", "W": "wgrad"}[kind], t0,
                       env.now, mb)
            if kind == "F" and vs < P * v - 1:
                self._send(r, s, (r, "F", mb, vs), "fwd")
            elif kind == "B" and vs > 0:
                self._send(r, s, (r, "B", mb, vs), "bwd")
        t_end = env.now
        yield self.dp_done[s]
        st.dp_comm += env.now - t_end
        t0 = env.now
        yield env.timeout(rw.optimizer_s[s])
        st.optimizer += env.now - t0
        self._span(rank, "compute", "optimizer", t0, env.now)
        if work.dp_gather and work.dp_gather[s]:  # wait for every shard, then gather
            self._optimizer_done(s)
            t0 = env.now
            yield self.gathered[s]
            st.dp_comm += env.now - t0
        st.finish = env.now

    def _issue_buckets(self, s: int, t0: float, t1: float) -> None:
        """The last backward of the stage produced the gradients: with overlap,
        bucket k is ready after its share of that backward (last layers first)."""
        env = self.env
        nb = len(self.work.dp_buckets[s])
        for k in range(nb):
            at = t0 + (t1 - t0) * (k + 1) / nb if self.work.dp_overlap else t1
            if at <= env.now:
                self._bucket_ready(s, k)
            else:
                env.timeout(at - env.now).callbacks.append(
                    lambda _e, s=s, k=k: self._bucket_ready(s, k))


def run(work: Work, topo: Topology, replicas: tuple[int, ...] = (0,),
        timeline: bool = True) -> EngineResult:
    """Simulate one step of the given data-parallel replicas."""
    return Engine(work, topo, replicas, timeline).run()
