"""Asynchronous SGD over parameter servers: no barrier, stale gradients.

Each data-parallel replica is a worker looping on its own: pull the
parameters from the S servers (`sim.sync.parameter_server.ps_server_ranks`), run its
forward and backward (its pipeline, as simulated by `sim.engine` without
data-parallel traffic), compress and push its gradients, and have the
servers apply them (one update at a time: the servers hold disjoint shards
and update them in parallel, so the bank applies one worker's gradient per
`update_s`). Pulls and pushes are flows on the network graph, shared
max-min fairly with the other workers' traffic in flight (`FlowNetwork`).

Staleness of a gradient = updates applied by the servers between the pull
its worker computed it on and its own update (Dutta et al. 2018's tau);
with W equal workers it settles near W - 1. Throughput is the sum of the
workers' rates, each from its own period between updates after `warmup`
iterations (bursts of simultaneous pulls make a common time window biased).
Pulls and pushes are not overlapped with the worker's compute (Downpour's
loop). Units: seconds, bytes.
"""

from __future__ import annotations

from typing import Any

import simpy

from sandbox import memory
from sandbox.layout import rank_of, replica_microbatches, replica_seq_lens, stage_layers
from sandbox.profile import Profile
from sandbox.specs import Plan
from sim import compute, variation
from sim.costs import stage_params
from sim.engine import EngineResult, RankStats
from sim.network.collectives import point_to_point
from sim.network.flows import FlowNetwork
from sim.network.topology import Topology
from sim.sync import compression
from sim.sync.parameter_server import ps_server_ranks
from sim.work import Work


def run_async(plan: Plan, topo: Topology, prof: Profile, work: Work, res: EngineResult,
              replicas: tuple[int, ...], iters: int = 8, warmup: int = 2) -> dict[str, Any]:
    """Simulate `iters` iterations per worker; sets `res.step_time_s` to the
    time per `global_batch` worth of sequences and returns the extra fields."""
    if iters < warmup + 2:
        raise ValueError("async: need at least warmup + 2 iterations per worker")
    p, tr = plan.parallel, plan.train
    P = p.pp
    layers = stage_layers(plan)
    mbs, seqs = replica_microbatches(plan), replica_seq_lens(plan)
    local = {r: max(res.stats[(r, s)].finish for s in range(P)) for r in replicas}
    cls = work.rep_class or [0] * p.dp
    t_local = [local.get(cls[d], local[replicas[0]]) for d in range(p.dp)]
    dev = compute.device_of(plan, prof)
    servers = ps_server_ranks(plan)
    S = len(servers)
    n_stage = [stage_params(plan, layers, s) for s in range(P)]
    push_b = [compression.push_payload(plan, dev, n)[0] for n in n_stage]
    comp_s = sum(compression.push_payload(plan, dev, n)[1] for n in n_stage)
    wb = memory.weight_bytes_per_param(tr.precision)
    shard = p.tp * sum(n_stage) / S
    update_s = (compute.memory_time(dev, shard * sum(push_b) / sum(n_stage))
                + compute.optimizer_time(dev, shard, tr.precision))

    def phases(d: int, pull: bool) -> list:
        out = []
        for s in range(P):
            ranks = [rank_of(plan, d, s, t) for t in range(p.tp)]
            if pull:
                out.append(point_to_point(topo, prof, [(j, w) for w in ranks for j in servers],
                                  n_stage[s] * wb / S, 1))
            else:
                out.append(point_to_point(topo, prof, [(w, j) for w in ranks for j in servers],
                                  push_b[s] / S, 0))
        return out

    env = simpy.Environment()
    net = FlowNetwork(env, topo.capacity)
    bank = simpy.Resource(env, capacity=1)
    state = {"version": 0}
    applied: list[tuple[float, int, int, int]] = []  # (time, worker, staleness, tokens)
    comm = [0.0] * p.dp

    def move(phs: list):
        t0 = env.now
        yield env.all_of([net.transfer(ph.paths, ph.sizes) for ph in phs])
        yield env.timeout(max((ph.latency_s for ph in phs), default=0.0))
        return env.now - t0

    def worker(d: int):
        pulls, pushes = phases(d, True), phases(d, False)
        tokens = mbs[d] * p.micro_batch * seqs[d]
        for _ in range(iters):
            read = state["version"]
            comm[d] += yield from move(pulls)
            yield env.timeout(t_local[d] + comp_s)
            t0 = env.now
            yield from move(pushes)
            with bank.request() as req:
                yield req
                yield env.timeout(update_s)
                applied.append((env.now, d, state["version"] - read, tokens))
                state["version"] += 1
            comm[d] += env.now - t0

    for d in range(p.dp):
        env.process(worker(d))
    env.run()
    # steady state: each worker's own period between updates after its warm-up
    tok_rate, upd_rate, stale = 0.0, 0.0, []
    for d in range(p.dp):
        mine = sorted(a for a in applied if a[1] == d)[warmup - 1:]
        tok_rate += (len(mine) - 1) * mine[0][3] / (mine[-1][0] - mine[0][0])
        upd_rate += (len(mine) - 1) / (mine[-1][0] - mine[0][0])
        stale += [a[2] for a in mine[1:]]
    step = variation.step_counts(plan)[0] / tok_rate
    _rescale(res, step, comm[0] / iters)
    iteration = [t_local[d] + comp_s + comm[d] / iters for d in range(p.dp)]
    return {"staleness_steps": sum(stale) / len(stale), "staleness_max": max(stale),
            "updates_per_s": upd_rate,
            "worker_iteration_s": sum(iteration) / len(iteration),
            "slowest_worker_iteration_s": max(iteration), "async_iterations": iters,
            "ps_servers": S}


def _rescale(res: EngineResult, step: float, comm_s: float) -> None:
    """Breakdown of worker 0's mean iteration (its local step plus its mean
    pull / push / update time as dp_comm), scaled to the throughput step (the
    two differ when workers run at different speeds)."""
    key = max((k for k in res.stats if k[0] == min(r for r, _ in res.stats)),
              key=lambda k: res.stats[k].finish)
    st = res.stats[key]
    parts = {"compute": st.compute, "tp_comm": st.tp_comm, "pp_comm": st.pp_comm,
             "bubble": st.bubble, "dp_comm": comm_s, "optimizer": st.optimizer}
    other = max(0.0, st.finish - st.compute - st.tp_comm - st.pp_comm - st.bubble
                - st.optimizer - st.dp_comm)  # host-bound time
    scale = step / (sum(parts.values()) + other)
    res.stats = {key: RankStats(**{k: v * scale for k, v in parts.items()}, finish=step)}
    res.step_time_s = step
