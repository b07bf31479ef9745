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

import math

import simpy

from sandbox.layout import rank_of
from sandbox.memory import zero3_pipelined
from sim.engine_result import EngineResult, RankStats
from sim.network.collectives import Phase
from sim.network.flows import FlowNetwork
from sim.network.topology import Topology
from sim.work import Work

OP_KINDS = {"F": "fwd", "B": "bwd", "W": "wgrad"}  # span kinds of the schedule's ops


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
        # ZeRO-3: gathers per stage (k-th gathered op), gradient reductions per
        # micro-batch (`rounds`: reductions of a stage's buckets per step)
        self.ag_ready: dict[tuple[int, int], simpy.Event] = {}
        self.ag_done: dict[tuple[int, int], simpy.Event] = {}
        self.ag_first: dict[tuple[int, int], simpy.Event] = {}
        self.ag_count: dict[tuple[int, int], int] = {}
        self.z3 = any(work.zero3_ag)
        self.z3_pp = self.z3 and zero3_pipelined(work.plan)  # one gather per chunk per step
        self.gath = {(r, s): self._gathers(self.rws[r].ops[s])
                     for r in replicas for s in range(self.P)}
        self.n_ag = {key: sum(g) for key, g in self.gath.items()}
        self.rounds = [self._rounds(work.rep(0), s) for s in range(self.P)]
        # ZeRO-3: each micro-batch's reduction but the last as one transfer (it
        # runs behind the next ops; fewer flow events), the last per bucket
        self.seq = []
        for s, b in enumerate(work.dp_buckets):
            nb = len(b)
            src = work.dp_early[s] if work.dp_early else (b[0][1] if b else [])
            whole = [(sum(x for x, _ in b), [Phase(ph.paths, tuple(x * nb for x in ph.sizes),
                                                   ph.latency_s * nb) for ph in src])] if b \
                else []
            self.seq.append(whole * (self.rounds[s] - 1) + b)
        self.ag_mb = {(r, s): [op[1] for op, g in zip(self.rws[r].ops[s], self.gath[(r, s)],
                                                      strict=True) if g]
                      for r in replicas for s in range(self.P)}  # microbatch of each gather

    def run(self) -> EngineResult:
        """Start every stream, step the simulation to its end."""
        env, work = self.env, self.work
        for s in range(self.P):
            if work.dp_buckets[s]:
                env.process(self._dp_stream(s))
            else:
                self.dp_done[s].succeed()
            if work.zero3_ag and work.zero3_ag[s]:
                env.process(self._ag_stream(s))
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
              mb: int = -1, chunk: int = -1) -> None:
        if self.timeline and t1 > t0:
            self.spans.append({"rank": rank, "stream": stream, "kind": kind, "start_s": t0,
                               "end_s": t1, "microbatch": mb, "chunk": chunk})

    def _op_spans(self, rank: int, kind: str, mb: int, c: int, t0: float, cost) -> None:
        """An op's compute span and its blocking tensor-, context- and
        expert-parallel time, each drawn as the op's last seconds on its stream."""
        if not self.timeline:  # the event loop's common case: nothing to record
            return
        now = self.env.now
        self._span(rank, "compute", OP_KINDS[kind], t0, now, mb, c)
        for secs, stream, what in ((cost.tp_s, "tp", "tp_comm"), (cost.cp_s, "cp_ring", "cp_comm"),
                                   (cost.ep_s, "ep_a2a", "ep_comm")):
            self._span(rank, stream, what, now - secs, now, mb, c)

    def _send(self, r: int, s: int, key: tuple, direction: str) -> None:
        env = self.env
        sk = (r, s, direction)
        start = max(env.now, self.send_free.get(sk, 0.0))
        end = start + self.work.send_of(self.rws[r], s, direction)
        self.send_free[sk] = end
        target = self._ev(key)
        target.sent_at = env.now
        self._span(rank_of(self.plan, r, s, 0), f"pp_send_{direction}", "pp_comm", start, end,
                   key[2], key[3] // self.P)
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
        buckets = self.seq[s]
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

    def _gathers(self, ops: list) -> list[bool]:
        """ZeRO-3: whether each op all-gathers its chunk's parameters first
        (forward always, backward when `reshard_after_forward`; under pipeline
        parallelism only each chunk's first op: `zero3_pipelined`)."""
        if self.z3_pp:
            firsts = {c: i for i, (_, _, c) in reversed(list(enumerate(ops)))}
            return [firsts[c] == i for i, (_, _, c) in enumerate(ops)]
        raf = self.plan.parallel.reshard_after_forward
        return [self.z3 and (k == "F" or k == "B" and raf) for k, _, _ in ops]

    def _rounds(self, rw, s: int) -> int:
        """Gradient reductions of stage s per step: one per micro-batch with
        ZeRO-3 (FSDP2 reduce-scatters after every backward: the gradients stay
        sharded), one after the last backward otherwise (and under pipeline
        parallelism: `perform_reduce_grad` after a chunk's last backward)."""
        if self.plan.parallel.zero < 3 or zero3_pipelined(self.plan):
            return 1
        last = "W" if rw.cost[(s, 0, "W")].total else "B"
        return max(1, sum(1 for k, _, c in rw.ops[s] if k == last and c == 0))

    def _last_unit(self, st: RankStats, done: simpy.Event, unit_s: float):
        """ZeRO-3: the op ends no earlier than its last unit's compute (`unit_s`)
        after the chunk's gather ends; the wait beyond its own compute is exposed."""
        env = self.env
        t_wait = env.now
        if not done.triggered:
            yield done
        if done.at + unit_s > env.now:
            yield env.timeout(done.at + unit_s - env.now)
        st.dp_comm += env.now - t_wait

    def _prefetch_ready(self, s: int, k: int) -> None:
        """A replica reached the op before stage s's k-th gathered op: once
        every replica that has it did, its all-gather may start."""
        self.ag_count[(s, k)] = self.ag_count.get((s, k), 0) + 1
        need = sum(1 for r in self.replicas if self.n_ag[(r, s)] > k)
        if self.ag_count[(s, k)] == need:
            self.ag_ready.setdefault((s, k), self.env.event()).succeed()

    def _ag_stream(self, s: int):
        """ZeRO-3's communication stream of stage s: the chunk parameters of
        each gathered op all-gathered over dp in op order, each as soon as the
        op before it has started (prefetch one op ahead), as flows sharing the
        network with the gradient reductions."""
        env = self.env
        for k in range(max(self.n_ag[(r, s)] for r in self.replicas)):
            yield self.ag_ready.setdefault((s, k), env.event())
            t0 = env.now
            first = self._evt(self.ag_first, (s, k))  # the first unit's share, unhindered
            env.timeout(self.work.zero3_ag_s[s]).callbacks.append(
                lambda _e, first=first: first.triggered or first.succeed())
            yield from self._transfer(self.work.zero3_ag[s])
            if not first.triggered:
                first.succeed()
            for r in self.replicas:
                mbs = self.ag_mb[(r, s)]
                self._span(rank_of(self.plan, r, s, 0), "dp_comm", "param_allgather", t0,
                           env.now, mbs[k] if k < len(mbs) else -1)
            done = self._evt(self.ag_done, (s, k))
            done.at = env.now
            done.succeed()

    def _evt(self, table: dict, key: tuple) -> simpy.Event:
        e = table.get(key)
        if e is None:
            e = table[key] = self.env.event()
        return e

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
        seen_chunk = [0] * v  # last-kind ops per chunk so far (interleaved, overlapped)
        by_chunk = v > 1 and work.dp_overlap and self.rounds[s] == 1 and work.dp_buckets[s]
        k_ag = 0  # gathered ops so far (ZeRO-3)
        gath = self.gath[(r, s)]
        for i, (kind, mb, c) in enumerate(ops):
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
                self._span(rank, "compute", "bubble", t_wait, max(t_wait, sent), mb, c)
            done = None
            if gath[i]:  # wait for the op's first FSDP unit's parameters
                if kind == "F":  # FSDP2's root pre-forward: gathers wait for the compute
                    self._prefetch_ready(s, k_ag)
                first = self._evt(self.ag_first, (s, k_ag))
                if not first.triggered:
                    t_wait = env.now
                    yield first
                    st.dp_comm += env.now - t_wait
                done = self._evt(self.ag_done, (s, k_ag))
                k_ag += 1
            if i + 1 < len(ops) and ops[i + 1][0] == "B" and gath[i + 1]:
                self._prefetch_ready(s, k_ag)  # the next backward's gather runs behind this op
            cost = rw.cost[(s, c, kind)]
            t0 = env.now
            if by_chunk and kind == last_kind:
                seen_chunk[c] += 1
                if seen_chunk[c] == max(1, n_b // v):  # the chunk's gradients are complete
                    self._issue_chunk_buckets(s, c, t0, t0 + cost.total)
            elif kind == last_kind and c == 0:
                seen_last += 1
                final, n_r = seen_last == max(1, n_b // v), self.rounds[s]
                if work.dp_buckets[s] and (final or n_r > 1):
                    # this micro-batch's reduction (a replica with fewer: all the rest)
                    first = 0 if n_r == 1 else seen_last - 1
                    for j in range(first, n_r if final else min(seen_last, n_r)):
                        self._issue_buckets(s, t0, t0 + cost.total, j)
            copy = work.zero3_copy_s[s] if done is not None else 0.0
            yield env.timeout(cost.total + copy)
            st.compute += cost.compute_s + copy
            st.tp_comm += cost.tp_s
            st.cp_comm += cost.cp_s
            st.ep_comm += cost.ep_s
            st.host += cost.total - cost.compute_s - cost.tp_s - cost.cp_s - cost.ep_s
            self._op_spans(rank, kind, mb, c, t0, cost)
            if done is not None:  # the last unit computes once its parameters are in
                yield from self._last_unit(st, done, cost.total / work.zero3_units[s])
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
            exposed = env.now - t0
            if self.plan.parallel.overlap_param_gather:  # behind the next first forward
                first_f = rw.cost[(s, 0, "F")]
                exposed = max(0.0, exposed - first_f.compute_s - first_f.tp_s)
            st.dp_comm += exposed
            st.finish = t0 + exposed
            return
        st.finish = env.now

    def _issue_chunk_buckets(self, s: int, c: int, t0: float, t1: float) -> None:
        """Interleaved schedules with overlap: the buckets of chunk c (buckets run
        last layers first, so chunk v - 1 holds the first ones) are ready along
        the chunk's last backward (Megatron-LM reduces each model chunk's
        buckets once its last micro-batch's backward has produced them; ZeRO-3
        under pipeline parallelism: all at its end, `perform_reduce_grad`)."""
        nb, v = len(self.work.dp_buckets[s]), self.v
        # a bucket is ready once the last (lowest) chunk it holds parameters of is
        mine = [k for k in range(nb) if v - math.ceil((k + 1) * v / nb) == c]
        for j, key in enumerate(mine):
            at = t1 if self.z3_pp else t0 + (t1 - t0) * (j + 1) / len(mine)
            if at <= self.env.now:
                self._bucket_ready(s, key)
            else:
                self.env.timeout(at - self.env.now).callbacks.append(
                    lambda _e, s=s, k=key: self._bucket_ready(s, k))

    def _issue_buckets(self, s: int, t0: float, t1: float, rnd: int = 0) -> None:
        """The last backward of the stage (ZeRO-3: of micro-batch `rnd`)
        produced the gradients: with overlap, bucket k is ready after its share
        of that backward (last layers first; ZeRO-3 under pipeline
        parallelism: all at its end, `perform_reduce_grad`)."""
        env = self.env
        last = rnd == self.rounds[s] - 1
        nb = len(self.work.dp_buckets[s]) if last else 1
        for k in range(nb):
            at = t0 + (t1 - t0) * (k + 1) / nb if self.work.dp_overlap and not self.z3_pp else t1
            key = rnd + k
            if at <= env.now:
                self._bucket_ready(s, key)
            else:
                env.timeout(at - env.now).callbacks.append(
                    lambda _e, s=s, k=key: self._bucket_ready(s, k))


def run(work: Work, topo: Topology, replicas: tuple[int, ...] = (0,),
        timeline: bool = True) -> EngineResult:
    """Simulate one step of the given data-parallel replicas."""
    return Engine(work, topo, replicas, timeline).run()
