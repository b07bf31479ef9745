"""Data-parallel replicas that differ, and which of them to simulate.

Identical replicas are simulated once (`Work.rep_class` maps each replica
to the first one like it). A replica differs when one of its GPUs is slow or
of another kind, when its micro-batch count or sequence length differs, or
when a slow link lies on its tensor- or pipeline-parallel paths. A
tensor-parallel group (and a context-parallel ring) runs at the pace of its
slowest member (its collectives wait for it), so each stage of a replica takes the costs of its
slowest GPU: kernel time x slowdown, on that GPU's kind. The data-parallel
traffic is placed for every replica in any case (`sim.engine`), so the
gradient reduction starts when the slowest simulated replica is ready.
"""

from __future__ import annotations

from sandbox.layout import rank_of, replica_microbatches, replica_seq_lens
from sandbox.profile import Profile
from sandbox.specs import Plan
from sim import compute, variation
from sim.costs import send_time, stage_costs
from sim.network.topology import Topology
from sim.schedules import schedule
from sim.work import RepWork, Work


def _signature(rw: RepWork) -> tuple:
    def r(x: float) -> float:
        return float(f"{x:.12g}")

    cost = tuple((k, r(c.compute_s), r(c.tp_s), r(c.host_s), r(c.cp_s), r(c.ep_s))
                 for k, c in sorted(rw.cost.items()))
    send = None if rw.send_s is None else tuple(map(r, rw.send_s))
    return cost, tuple(map(r, rw.optimizer_s)), send, tuple(map(tuple, rw.ops))


def stage_devices(plan: Plan, prof: Profile, d: int, kinds: dict | None = None
                  ) -> tuple[list[compute.Device], list[float], list[tuple[str, float]]]:
    """Per stage of replica d: the device and slowdown of its slowest GPU, and
    (GPU kind, slowdown) as a key. `kinds` caches devices between calls."""
    p, c = plan.parallel, plan.cluster
    kinds = {} if kinds is None else kinds
    slow = variation.gpu_slowdowns(c)
    devs, ks, names = [], [], []
    for s in range(p.pp):
        worst = None
        for r in (rank_of(plan, d, s, t, q) for q in range(p.cp) for t in range(p.tp)):
            g = variation.gpu_of(c, r)
            if g.name not in kinds:
                dev = compute.device_for(g, plan.train.precision, prof)
                kinds[g.name] = (dev, compute.layer_times(plan, dev).fwd)
            k = slow.get(r, 1.0)
            if worst is None or k * kinds[g.name][1] > worst[0]:
                worst = (k * kinds[g.name][1], g.name, k)
        names.append((worst[1], worst[2]))
        devs.append(kinds[worst[1]][0])
        ks.append(worst[2])
    return devs, ks, names


def attach(work: Work, topo: Topology, prof: Profile, layers: list[int]) -> None:
    """Fill `work.reps` / `work.rep_class`; replica 0's own work replaces the base.
    `topo` is the cluster's network with its slow links (`sim.network.shared`)."""
    plan = work.plan
    p = plan.parallel
    if variation.is_symmetric(plan):
        work.rep_class = [0] * p.dp
        return
    links = bool(topo.slow_edges)
    mbs, seqs = replica_microbatches(plan), replica_seq_lens(plan)
    P, v = work.p, work.v
    kinds: dict = {}
    times: dict = {}  # kernel times per (device, sequence length)
    made: dict[tuple, tuple[RepWork, tuple]] = {}
    first_of: dict[tuple, int] = {}
    rws: list[RepWork] = []
    classes: list[int] = []
    for d in range(p.dp):
        plan_d = variation.with_seq_len(plan, seqs[d])
        devs, ks, names = stage_devices(plan, prof, d, kinds)
        key = (tuple(names), seqs[d], mbs[d], d if links else -1)
        if key not in made:
            cost, opt = stage_costs(plan_d, topo, prof, devs, ks, layers, d, times)
            ops = [schedule(p.schedule, P, mbs[d], s, v, p.pipeline_flushes) for s in range(P)]
            send = None
            if P > 1 and links:
                send = [send_time(plan_d, topo, prof, d, b, (b + 1) % P) for b in range(P)]
            elif P > 1 and seqs[d] != plan.model.seq_len:
                send = [send_time(plan_d, topo, prof)] * P
            rw = RepWork(cost, ops, opt, send)
            made[key] = (rw, _signature(rw))
        rw, sig = made[key]
        classes.append(first_of.setdefault(sig, d))
        rws.append(rw)
    base = rws[0]
    work.cost, work.ops, work.optimizer_s, work.send_b = (base.cost, base.ops,
                                                          base.optimizer_s, base.send_s)
    work.rep_class = classes
    work.reps = {d: rws[d] for d in range(p.dp) if classes[d] != classes[0]}
