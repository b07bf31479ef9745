"""What `sandbox run` cannot execute although the plan is valid: one line per
field. Synchronisation variants run only on plain DDP; some fields only the
simulator models (stragglers, uneven work per replica, TP overlaps, ...);
the runtime's context and expert parallelism have their own limits. The
simulator models every one of these; `sandbox.validate` re-exports
`runtime_problems` and `validate_runtime`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sandbox.errors import PlanError
from sandbox.layout import split_blocks

if TYPE_CHECKING:
    from sandbox.specs import Plan


def _sync_problem(plan: Plan) -> list[str]:
    """dp_mode other than allreduce and gradient compression run only on plain
    data parallelism with DDP (dp > 1, ZeRO 0, tp = pp = 1), and compression
    only through DDP's all-reduce (dp_mode = 'allreduce')."""
    p = plan.parallel
    if p.dp_mode == "allreduce" and p.grad_compression == "none":
        return []
    where, value = (("parallel.dp_mode", p.dp_mode) if p.dp_mode != "allreduce"
                    else ("parallel.grad_compression", p.grad_compression))
    if p.dp_mode != "allreduce" and p.grad_compression != "none":
        return [f"parallel.grad_compression: '{p.grad_compression}' runs through DDP "
                f"communication hooks, only with dp_mode = 'allreduce' (got '{p.dp_mode}')"]
    if p.tp > 1 or p.pp > 1:
        return [f"{where}: '{value}' runs only on plain data parallelism (tp = pp = 1), "
                f"got tp = {p.tp}, pp = {p.pp}"]
    if p.zero != 0:
        return [f"{where}: '{value}' runs only with parallel.zero = 0 (DDP), got zero = {p.zero}"]
    if p.dp < 2:
        return [f"{where}: '{value}' needs data parallelism (dp >= 2), got dp = {p.dp}"]
    return []


_SIM_ONLY = "the simulator models it; run cannot make it real"


def _unexecutable_fields(plan: Plan) -> list[str]:
    """Fields only the simulator executes: uneven work per replica, a TP
    overlap the DTensor runtime does not do, a server count other than its
    one per replica, and stragglers / mixed GPU kinds (a slowdown is not
    something a run can impose on its hardware)."""
    p, c, problems = plan.parallel, plan.cluster, []
    if p.replica_microbatches and set(p.replica_microbatches) != {p.microbatches}:
        problems.append(f"parallel.replica_microbatches: {list(p.replica_microbatches)}: run "
                        f"gives every replica {p.microbatches} micro-batches ({_SIM_ONLY})")
    if p.replica_seq_len and set(p.replica_seq_len) != {plan.model.seq_len}:
        problems.append(f"parallel.replica_seq_len: {list(p.replica_seq_len)}: run trains on "
                        f"model.seq_len = {plan.model.seq_len} tokens ({_SIM_ONLY})")
    if p.pipeline_flushes > 1 and p.pp > 1:
        problems.append(f"parallel.pipeline_flushes: {p.pipeline_flushes} schedules per step "
                        f"({_SIM_ONLY}); run drives one")
    if plan.train.compile_loss:
        problems.append("train.compile_loss: run compiles the model's blocks, not its loss; "
                        "set it to false for run")
    if p.tp_overlap:
        problems.append("parallel.tp_overlap: the runtime's DTensor TP does not overlap its "
                        "collectives with the weight-gradient GEMM; set it to false for run")
    if not p.stage_layers and 0 in split_blocks(plan.model.layers, p.pp * p.vpp):
        problems.append("parallel.pp: a first or last chunk without a block (embedding or "
                        f"head alone) runs in the simulator only ({plan.model.layers} layers "
                        f"over pp*vpp = {p.pp * p.vpp} chunks)")
    if p.tp_comm_overlap and p.tp > 1:
        problems.append("parallel.tp_comm_overlap: the runtime's DTensor TP does not pipeline "
                        "its collectives with the GEMMs; set it to false for run")
    if p.overlap_param_gather and p.zero in (1, 2) and p.dp > 1:
        problems.append("parallel.overlap_param_gather: the runtime gathers the updated "
                        "parameters at the end of the step; set it to false for run")
    if p.dp_mode in ("parameter-server", "async") and p.ps_servers not in (0, p.dp):
        problems.append(f"parallel.ps_servers: run co-locates one server with each of the "
                        f"dp = {p.dp} replicas, got {p.ps_servers} (0 or {p.dp} for run)")
    if p.dp_shard and p.dp_shard < p.dp and (p.zero != 3 or p.tp > 1 or p.pp > 1):
        problems.append(f"parallel.dp_shard: {p.dp_shard}: run shards over part of dp (HSDP) "
                        f"only with zero = 3 and tp = pp = 1, got zero = {p.zero}, "
                        f"tp = {p.tp}, pp = {p.pp} ({_SIM_ONLY})")
    if c.slow_gpus:
        problems.append(f"cluster.slow_gpus: {list(c.slow_gpus)}: {_SIM_ONLY}")
    if c.slow_gpu_fraction > 0:
        problems.append(f"cluster.slow_gpu_fraction: {c.slow_gpu_fraction}: {_SIM_ONLY}")
    if c.slow_links:
        problems.append(f"cluster.slow_links: {list(c.slow_links)}: {_SIM_ONLY}")
    if c.slow_link_fraction > 0:
        problems.append(f"cluster.slow_link_fraction: {c.slow_link_fraction}: {_SIM_ONLY}")
    if p.cp > 1:
        problems += _context_unexecutable(plan)
    if len(set(c.node_gpus)) > 1:
        problems.append(f"cluster.node_gpus: mixed GPU kinds {sorted(set(c.node_gpus))}: "
                        f"{_SIM_ONLY}")
    return problems


def _context_unexecutable(plan: Plan) -> list[str]:
    """What run's context parallelism (`runtime.parallel.context`: ring or
    all-gather attention, gradients over dp x cp) does not cover."""
    p, problems = plan.parallel, []
    if plan.model.kind == "mla":
        problems.append(f"parallel.cp: {p.cp}: run's context parallelism covers mha / gqa "
                        f"attention, not model.attention_kind = 'mla' ({_SIM_ONLY})")
    if plan.model.experts:
        problems.append(f"parallel.cp: {p.cp}: run's context parallelism covers dense blocks, "
                        f"not mixture-of-experts ones (model.experts = {plan.model.experts}; "
                        f"{_SIM_ONLY})")
    if p.dp_shard and p.dp_shard < p.dp:
        problems.append(f"parallel.dp_shard: {p.dp_shard}: run shards over all of dp x cp "
                        f"with context parallelism (cp = {p.cp}), not HSDP ({_SIM_ONLY})")
    if p.grad_compression != "none":
        problems.append(f"parallel.grad_compression: '{p.grad_compression}': run reduces "
                        f"uncompressed gradients over dp x cp with cp = {p.cp} ({_SIM_ONLY})")
    return problems


def runtime_problems(plan: Plan) -> list[str]:
    """What `run` cannot execute although the plan is valid, one line per
    field: synchronisation variants off plain DDP, and the fields only the
    simulator models (`_unexecutable_fields`). Uneven `stage_layers` run."""
    return _sync_problem(plan) + _unexecutable_fields(plan)


def validate_runtime(plan: Plan) -> Plan:
    """Raise PlanError listing what `run` cannot execute (`runtime_problems`)."""
    if problems := runtime_problems(plan):
        raise PlanError(problems)
    return plan
