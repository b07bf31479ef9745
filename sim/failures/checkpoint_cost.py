"""What a failure costs a job, as pure functions of a plan (seconds, bytes, hours).

- Failure rates per component class: every GPU, every node (host: CPU,
  memory, power, software), every inter-node link (one per NIC; none on a
  single node) and every network switch. Any failure interrupts the whole
  synchronous job (no spare capacity, no redundancy).
- Switches are counted for a folded-Clos fat tree of radix `SWITCH_RADIX`
  (64 ports, NVIDIA Quantum-2 NDR) over `nodes * nics_per_node` endpoint
  ports: one switch when they fit in one; two levels (leaf `2E/k`, spine
  `E/k`) up to `k^2/2` endpoints; three levels (`2E/k + 2E/k + E/k`) beyond.
  Rail-optimised networks are counted the same; torus and ring topologies
  have direct links and no switches.
- The checkpoint is the training state of the whole job: weights plus
  optimizer states (fp32 master weights and Adam moments), sizes per
  parameter from `sandbox.memory`, parameters from `sandbox.counts`;
  gradients are not saved. It is written (and read back on restore) in
  parallel by all nodes, each at `cluster.storage_gb_per_s`, together at
  most `cluster.storage_total_gb_per_s` (the shared filesystem; 0: no cap).
- Young (1974) / Daly (2006): the first-order best interval between
  checkpoints is `sqrt(2 M C)` for a job MTBF `M` and checkpoint cost `C`.
"""

from __future__ import annotations

import math

from sandbox import counts, memory
from sandbox.specs import Cluster, Plan

SWITCH_RADIX = 64  # ports per switch (NVIDIA Quantum-2 NDR 400G: 64 ports)
CAUSES = ("gpu", "node", "link", "switch")
HOUR = 3600.0


def switch_count(endpoints: int, radix: int = SWITCH_RADIX) -> int:
    """Switches of a non-blocking folded-Clos fat tree with `endpoints` ports."""
    if endpoints <= 0:
        return 0
    if endpoints <= radix:
        return 1
    half = radix // 2
    leaves = math.ceil(endpoints / half)
    if endpoints <= radix * half:  # two levels
        return leaves + math.ceil(leaves * half / radix)
    aggregation = leaves  # three levels: leaf, aggregation, core
    return leaves + aggregation + math.ceil(endpoints / radix)


def component_counts(cluster: Cluster) -> dict[str, int]:
    """Number of components of each class whose failure stops the job."""
    links = cluster.nodes * cluster.nics_per_node if cluster.nodes > 1 else 0
    switched = cluster.topology in ("fat-tree", "rail")
    return {"gpu": cluster.world_size, "node": cluster.nodes, "link": links,
            "switch": switch_count(links) if switched else 0}


def component_mtbf_h(cluster: Cluster) -> dict[str, float]:
    """MTBF of one component of each class, hours (0 = never fails)."""
    return {"gpu": cluster.gpu_mtbf_h, "node": cluster.node_mtbf_h,
            "link": cluster.link_mtbf_h, "switch": cluster.switch_mtbf_h}


def failure_rates_per_h(cluster: Cluster) -> dict[str, float]:
    """Interruptions per hour of the whole job by cause (count / component MTBF)."""
    n, mtbf = component_counts(cluster), component_mtbf_h(cluster)
    return {c: (n[c] / mtbf[c] if mtbf[c] > 0 else 0.0) for c in CAUSES}


def job_mtbf_h(cluster: Cluster) -> float:
    """Mean time between interruptions of the job, hours (inf without failures)."""
    total = sum(failure_rates_per_h(cluster).values())
    return 1.0 / total if total > 0 else math.inf


def checkpoint_bytes(plan: Plan) -> float:
    """Bytes of one checkpoint of the whole job: weights + optimizer states."""
    t = plan.train
    per_param = (memory.weight_bytes_per_param(t.precision)
                 + memory.optimizer_bytes_per_param(t.precision, t.optimizer))
    return float(counts.param_count(plan.model)) * per_param


def storage_bytes_per_s(cluster: Cluster) -> float:
    """Aggregate checkpoint bandwidth of the job, bytes/s: all nodes in
    parallel, capped by the filesystem's total when it has one."""
    if cluster.storage_gb_per_s <= 0:
        raise ValueError("cluster.storage_gb_per_s must be > 0 to price checkpoints")
    per_nodes = cluster.nodes * cluster.storage_gb_per_s
    if cluster.storage_total_gb_per_s > 0:
        per_nodes = min(per_nodes, cluster.storage_total_gb_per_s)
    return per_nodes * memory.GB


def checkpoint_cost_s(plan: Plan) -> float:
    """Seconds the job stops to write one checkpoint."""
    return checkpoint_bytes(plan) / storage_bytes_per_s(plan.cluster)


def restore_cost_s(plan: Plan) -> float:
    """Seconds to read the newest checkpoint back after a restart."""
    return checkpoint_bytes(plan) / storage_bytes_per_s(plan.cluster)


def downtime_s(plan: Plan) -> float:
    """Seconds from an interruption until training resumes: restart + restore."""
    return plan.cluster.restart_s + restore_cost_s(plan)


def young_daly_interval_s(mtbf_s: float, checkpoint_s: float) -> float:
    """First-order best compute time between checkpoints, `sqrt(2 M C)`, seconds."""
    return math.sqrt(2.0 * mtbf_s * checkpoint_s) if math.isfinite(mtbf_s) else math.inf


def first_order_goodput(interval_s: float, checkpoint_s: float, downtime_s: float,
                        mtbf_s: float) -> float:
    """Goodput to first order: `1 - C/T - (T/2 + D)/M` (D = restart + restore)."""
    return 1.0 - checkpoint_s / interval_s - (interval_s / 2 + downtime_s) / mtbf_s


def daly_expected_wall_s(work_s: float, interval_s: float, checkpoint_s: float,
                         downtime_s: float, mtbf_s: float) -> float:
    """Daly's (2006) exact expected wall time for exponential failures, seconds.

    `W/T * M e^(D/M) (e^((T+C)/M) - 1)`: a checkpoint after every interval,
    failures also during restarts. Used to size the simulation horizon.
    """
    if not math.isfinite(mtbf_s):
        return work_s + (math.ceil(work_s / interval_s) - 1) * checkpoint_s
    m = mtbf_s
    return work_s / interval_s * m * math.exp(downtime_s / m) * math.expm1(
        (interval_s + checkpoint_s) / m)
