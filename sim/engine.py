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

from sim.lowering import Work, rank_of
from sim.network import FlowNetwork
from sim.topology import Topology


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
    step_time_s: float
    stats: dict[tuple[int, int], RankStats]  # (replica, stage) -> stats
    spans: list[dict] = field(default_factory=list)
    events: int = 0


def run(work: Work, topo: Topology, replicas: tuple[int, ...] = (0,),
        timeline: bool = True) -> EngineResult:
    """Simulate one step of the given data-parallel replicas."""
    plan, P, v = work.plan, work.p, work.v
    env = simpy.Environment()
    net = FlowNetwork(env, topo.capacity)
    arrive: dict[tuple, simpy.Event] = {}
    spans: list[dict] = []
    stats = {(r, s): RankStats() for r in replicas for s in range(P)}
    send_free: dict[tuple, float] = {}
    n_rep = len(replicas)
    rws = {r: work.rep(r) for r in replicas}  # per-replica work (sim.replicas)

    def ev(key: tuple) -> simpy.Event:
        e = arrive.get(key)
        if e is None:
            e = arrive[key] = env.event()
            e.sent_at = None
        return e

    def span(rank: int, stream: str, kind: str, t0: float, t1: float, mb: int = -1) -> None:
        if timeline and t1 > t0:
            spans.append({"rank": rank, "stream": stream, "kind": kind, "start_s": t0,
                          "end_s": t1, "microbatch": mb})

    def send(r: int, s: int, key: tuple, direction: str) -> None:
        sk = (r, s, direction)
        start = max(env.now, send_free.get(sk, 0.0))
        end = start + work.send_of(rws[r], s, direction)
        send_free[sk] = end
        target = ev(key)
        target.sent_at = env.now
        span(rank_of(plan, r, s, 0), f"pp_send_{direction}", "pp_comm", start, end, key[2])
        env.timeout(end - env.now).callbacks.append(lambda _e: target.succeed())

    # data-parallel buckets: ready counters across simulated replicas
    ready: dict[tuple[int, int], simpy.Event] = {}
    counts: dict[tuple[int, int], int] = {}
    dp_done = {s: env.event() for s in range(P)}

    def bucket_ready(s: int, k: int) -> None:
        counts[(s, k)] = counts.get((s, k), 0) + 1
        if counts[(s, k)] == n_rep:
            ready.setdefault((s, k), env.event()).succeed()

    def dp_stream(s: int):
        """Reduce the stage's buckets in order; buckets already ready when the
        stream gets to them go as one transfer (same flows, summed bytes and
        latencies: identical in the fluid model, far fewer events)."""
        buckets = work.dp_buckets[s]
        k = 0
        while k < len(buckets):
            yield ready.setdefault((s, k), env.event())
            j = k + 1
            while j < len(buckets) and ready.setdefault((s, j), env.event()).triggered \
                    and buckets[j][1] is buckets[k][1]:
                j += 1
            t0 = env.now
            yield from _transfer(buckets[k][1], j - k)
            for r in replicas:
                span(rank_of(plan, r, s, 0), "dp_comm", "dp_comm", t0, env.now)
            k = j
        dp_done[s].succeed()

    def _transfer(phases: list, times: int = 1):
        for ph in phases:
            sizes = ph.sizes if times == 1 else tuple(x * times for x in ph.sizes)
            yield net.transfer(ph.paths, sizes)
            yield env.timeout(ph.latency_s * times)

    # ZeRO 1/2: every replica's optimizer step, then the parameter all-gather
    stepped: dict[int, int] = {}
    gathered = {s: env.event() for s in range(P)}

    def gather_stream(s: int):
        t0 = env.now
        yield from _transfer(work.dp_gather[s])
        for r in replicas:
            span(rank_of(plan, r, s, 0), "dp_comm", "param_allgather", t0, env.now)
        gathered[s].succeed()

    def optimizer_done(s: int) -> None:
        stepped[s] = stepped.get(s, 0) + 1
        if stepped[s] == n_rep:
            env.process(gather_stream(s))

    def stage(r: int, s: int):
        st = stats[(r, s)]
        rank = rank_of(plan, r, s, 0)
        rw = rws[r]
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
                need = ev((r, "F", mb, vs - 1))
            elif kind == "B" and vs < P * v - 1:
                need = ev((r, "B", mb, vs + 1))
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
                span(rank, "dp_comm", "param_allgather", ag_done - ag_t, ag_done, mb)
                ag_done = max(env.now, ag_done) + ag_t  # prefetch the next op's params
            cost = rw.cost[(s, c, kind)]
            t0 = env.now
            if kind == last_kind and c == 0:
                seen_last += 1
                if seen_last == max(1, n_b // v) and work.dp_buckets[s]:
                    _issue_buckets(s, t0, t0 + cost.total)
            yield env.timeout(cost.total)
            st.compute += cost.compute_s
            st.tp_comm += cost.tp_s
            st.host += cost.total - cost.compute_s - cost.tp_s
            span(rank, "compute", {"F": "fwd", "B": "bwd", "W": "wgrad"}[kind], t0, env.now, mb)
            if kind == "F" and vs < P * v - 1:
                send(r, s, (r, "F", mb, vs), "fwd")
            elif kind == "B" and vs > 0:
                send(r, s, (r, "B", mb, vs), "bwd")
        t_end = env.now
        yield dp_done[s]
        st.dp_comm += env.now - t_end
        t0 = env.now
        yield env.timeout(rw.optimizer_s[s])
        st.optimizer += env.now - t0
        span(rank, "compute", "optimizer", t0, env.now)
        if work.dp_gather and work.dp_gather[s]:  # wait for every shard, then gather
            optimizer_done(s)
            t0 = env.now
            yield gathered[s]
            st.dp_comm += env.now - t0
        st.finish = env.now

    def _issue_buckets(s: int, t0: float, t1: float) -> None:
        """The last backward of the stage produced the gradients: with overlap,
        bucket k is ready after its share of that backward (last layers first)."""
        nb = len(work.dp_buckets[s])
        for k in range(nb):
            at = t0 + (t1 - t0) * (k + 1) / nb if work.dp_overlap else t1
            if at <= env.now:
                bucket_ready(s, k)
            else:
                env.timeout(at - env.now).callbacks.append(
                    lambda _e, s=s, k=k: bucket_ready(s, k))

    for s in range(P):
        if work.dp_buckets[s]:
            env.process(dp_stream(s))
        else:
            dp_done[s].succeed()
        for r in replicas:
            env.process(stage(r, s))
    events = 0
    while True:
        try:
            env.step()
        except simpy.core.EmptySchedule:
            break
        events += 1
    step = max(x.finish for x in stats.values())
    return EngineResult(step, stats, spans, events)
