"""Parameter servers: where they live and one gradient bucket's traffic.

Parameters are sharded over S = `parallel.ps_servers` server ranks (0: one
per node, on local GPU 0, 1, ... of successive nodes). Per bucket every
worker GPU pushes 1/S of its (compressed, `sim.sync.compression`) gradients
to each server, each server sums the dp pushes and applies the optimizer to
its shard, then every worker pulls its 16-bit parameters back. Every byte is
a flow on the network graph. Units: bytes, seconds.
"""

from __future__ import annotations

from sandbox import memory
from sandbox.profile import Profile
from sandbox.specs import Plan
from sim import compute
from sim.network.collectives import Phase, point_to_point
from sim.network.topology import Topology
from sim.sync import compression


def ps_server_ranks(plan: Plan) -> list[int]:
    """Global ranks of the parameter servers, spread over nodes first."""
    c = plan.cluster
    n = plan.parallel.ps_servers or c.nodes
    return [(j % c.nodes) * c.gpus_per_node + (j // c.nodes) % c.gpus_per_node
            for j in range(n)]


def ps_phases(plan: Plan, topo: Topology, prof: Profile, dev: compute.Device,
              workers: list[int], n: float) -> list[Phase]:
    """Phases of one bucket of `n` gradients per worker GPU: compress, push
    1/S to each server, servers sum and update, pull the parameters back.
    Buckets follow one another; with servers on the workers' nodes every NIC
    carries pushes and pulls both ways, so overlapping a bucket's pull with
    the next push would move the same bytes over the same saturated links."""
    servers = ps_server_ranks(plan)
    S, tr = len(servers), plan.train
    push_b, comp_s = compression.push_payload(plan, dev, n)
    push = point_to_point(topo, prof, [(w, j) for w in workers for j in servers], push_b / S, 0)
    pull = point_to_point(topo, prof, [(j, w) for w in workers for j in servers],
                  n * memory.weight_bytes_per_param(tr.precision) / S, 1)
    shard = len(workers) / plan.parallel.dp * n / S  # parameters per server
    update = Phase((), (), compute.memory_time(dev, plan.parallel.dp * shard * push_b / n
                                               + shard * compression.grad_bytes(plan))
                   + compute.optimizer_time(dev, shard, tr.precision))
    comp = [Phase((), (), comp_s)] if comp_s > 0 else []
    return comp + [push, update, pull]
