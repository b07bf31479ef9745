"""The strategy search's space and its analytic screen, as pure functions.

- `base_plan` builds the plan every candidate starts from (model, cluster of
  `gpus` GPUs, training options); `candidates` enumerates the parallel
  settings (tp within a node, pp up to the number of layers, dp from the
  world size; vpp, micro-batch, ZeRO stage, recompute, sequence parallelism,
  schedule; for a mixture of experts the expert-parallel degree ep, every
  divisor of dp that divides the experts, 1 for dense models; for long
  sequences, `seq_len >= CP_MIN_SEQ_LEN`, the context-parallel degree cp,
  every divisor of the GPUs left by tp x pp that cuts the sequence into
  2 cp equal chunks, with the ring method; below that threshold cp = 1, as
  every published short-sequence run has it, and the space of such searches
  stays what it was), restricted by `fix` (`cp_method` = "allgather" or both
  methods only when fixed).
- `screen` keeps what can run (`sandbox.validate.plan_problems`) and fits
  (`sandbox.memory.memory_per_gpu`), and gives every rejected candidate its
  reason.
- `step_time_lower_bound` is a cheap bound on the step time, in seconds:
  the busiest rank's kernels as the simulator costs them (or the host's
  dispatch time if longer), the tensor-parallel
  collectives that sit on the critical path at full link bandwidth, the
  pipeline bubble of the schedule, the data-parallel gradient traffic that
  cannot hide behind the last microbatch, and the optimizer's HBM traffic.
  It is used only to order and prune candidates, never reported as a
  prediction.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Iterable, Iterator
from typing import Any

from sandbox import memory, presets, sections
from sandbox.errors import SandboxError
from sandbox.layout import local_seq_len, stage_layers
from sandbox.planfile import did_you_mean, load
from sandbox.profile import profile_for
from sandbox.specs import Parallel, Plan
from sandbox.validate import plan_problems
from sim import compute, costs, host

SEARCHED = ("dp", "tp", "pp", "vpp", "micro_batch", "zero", "recompute",
            "sequence_parallel", "schedule", "ep", "cp", "cp_method")
# Sequences from this length (tokens) get context parallelism in the space:
# NVIDIA's long-sequence tables run cp = 1 up to 16K tokens and cp > 1 from
# 32K (NeMo docs, performance_long_sequence.md); 16K is where it may start to pay.
CP_MIN_SEQ_LEN = 16384
MICRO_BATCHES = (1, 2, 4, 8)
VPPS = (2, 3, 4, 6, 8)  # virtual stages tried with the interleaved schedule
ZEROS = (0, 1, 2, 3)
RECOMPUTES = ("none", "selective", "full")
PIPELINE_SCHEDULES = ("gpipe", "1f1b", "zero-bubble")
BOUND_SLACK = 0.95  # the bound is scaled down so that modelling detail never prunes a winner
GRAD_BYTES = 2  # bytes per gradient element on the wire (the least any precision sends)
OPTIMIZER_BYTES = 16  # HBM bytes per parameter the optimizer at least reads (m, v, master, grad)


def divisors(n: int) -> list[int]:
    """Every positive divisor of n, ascending."""
    return [d for d in range(1, n + 1) if n % d == 0]


def base_plan(model: Any, cluster: Any, gpus: int, global_batch: int,
              seq_len: int | None = None, **overrides: Any) -> Plan:
    """The plan every candidate starts from: dp = gpus, tp = pp = 1.

    `model` and `cluster` are preset names or section dicts; `overrides` are
    plan fields (`precision="fp8"`, `nic_gbit_per_s=100.0`, ...). The global
    batch is set without validation: each candidate is validated on its own.
    """
    if not isinstance(gpus, int) or gpus <= 0:
        raise SandboxError(f"gpus: must be a positive integer, got {gpus!r}")
    if not isinstance(global_batch, int) or global_batch <= 0:
        raise SandboxError(f"global_batch: must be a positive integer, got {global_batch!r}")
    msec = {"preset": model} if isinstance(model, str) else dict(model)
    if seq_len is not None:  # 0 or negative: the plan's validator names it
        msec["seq_len"] = seq_len
    csec = {"preset": cluster} if isinstance(cluster, str) else dict(cluster)
    if csec.get("preset") == "localhost" and "gpus_per_node" not in csec:
        csec = {"preset": "localhost", "gpus_per_node": gpus}  # one process per rank
    else:
        preset = presets.CLUSTERS.get(csec.get("preset", ""), {})
        per_node = csec.get("gpus_per_node") or preset.get("gpus_per_node", 8)
        if gpus < per_node:
            csec = {**csec, "nodes": 1, "gpus_per_node": gpus}
        elif gpus % per_node:
            raise SandboxError(f"gpus: {gpus} is not a multiple of the cluster's "
                               f"{per_node} GPUs per node")
        else:
            csec = {**csec, "nodes": gpus // per_node}
    plan = load({"model": msec, "cluster": csec,
                 "parallel": {"dp": gpus, "tp": 1, "pp": 1, "global_batch": gpus}})
    if overrides:
        plan = plan.replace(**overrides)
    return dataclasses.replace(plan, parallel=dataclasses.replace(
        plan.parallel, global_batch=global_batch))


def _options(name: str, default: Iterable, fix: dict) -> list:
    if name not in fix:
        return list(default)
    v = fix[name]
    return list(v) if isinstance(v, (list, tuple, set)) else [v]


def check_fix(fix: dict | None) -> dict:
    """Validate the keys of `fix` (searched parallel fields) -> a plain dict."""
    fix = dict(fix or {})
    choices = {"recompute": RECOMPUTES, "schedule": (*PIPELINE_SCHEDULES, "interleaved-1f1b"),
               "sequence_parallel": (True, False), "zero": ZEROS,
               "cp_method": sections.CP_METHODS}
    for key, value in fix.items():
        if key not in SEARCHED:
            raise SandboxError(f"fix: unknown field '{key}'{did_you_mean(key, SEARCHED)}; "
                               f"fixable: {', '.join(SEARCHED)}")
        for v in value if isinstance(value, (list, tuple, set)) else [value]:
            if key in choices:
                ok = v in choices[key] and type(v) is type(choices[key][0])
                if not ok:
                    raise SandboxError(f"fix: {key} = {v!r} is not one of "
                                       f"{', '.join(map(str, choices[key]))}")
            elif not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise SandboxError(f"fix: {key} must be a positive integer, got {v!r}")
    return fix


def candidates(base: Plan, fix: dict | None = None) -> Iterator[Parallel]:
    """Every parallel setting the search considers for `base`'s world size.

    tp divides the GPUs of one node; pp runs up to the number of layers; dp is
    what is left of the world size. Settings that do not run (heads % tp,
    fewer layers than pp*vpp chunks, batch divisibility, ...) are still yielded: `screen`
    rejects them with the validator's reason. With tp = 1 sequence
    parallelism is off (it has no effect); with pp = 1 the schedule is 1f1b.
    """
    fix = check_fix(fix)
    world, per_node = base.world_size, base.cluster.gpus_per_node
    tps = _options("tp", [t for t in divisors(world) if t <= per_node], fix)
    for tp in tps:
        pps = _options("pp", [p for p in divisors(max(1, world // tp))
                              if p <= base.model.layers], fix)
        layouts = [(q, c) for q in pps for c in cp_options(base, world // tp // q, fix)]
        for pp, cp in layouts:
            dp = world // (tp * pp * cp) if world % (tp * pp * cp) == 0 else 0
            if "dp" in fix and dp not in _options("dp", [], fix):
                continue
            if pp == 1:
                scheds = [("1f1b", 1)]
            else:
                scheds = [(s, 1) for s in PIPELINE_SCHEDULES]
                scheds += [("interleaved-1f1b", v) for v in VPPS]
            scheds = [(s, v) for s, v in scheds
                      if s in _options("schedule", [s], fix) and v in _options("vpp", [v], fix)]
            sps = _options("sequence_parallel", [True, False] if tp > 1 else [False], fix)
            e = base.model.experts
            eps = _options("ep", [x for x in divisors(dp or 1) if e and e % x == 0] or [1], fix)
            methods = _options("cp_method", ["ring"], fix) if cp > 1 else [base.parallel.cp_method]
            for (sched, vpp), mb, zero, rc, sp, ep, method in itertools.product(
                    scheds, _options("micro_batch", MICRO_BATCHES, fix),
                    _options("zero", ZEROS, fix), _options("recompute", RECOMPUTES, fix), sps,
                    eps, methods):
                yield dataclasses.replace(base.parallel, dp=dp or 1, tp=tp, pp=pp, vpp=vpp,
                                          micro_batch=mb, zero=zero, recompute=rc,
                                          sequence_parallel=sp, schedule=sched, ep=ep, cp=cp,
                                          cp_method=method)


def cp_options(base: Plan, ranks: int, fix: dict) -> list[int]:
    """Context-parallel degrees for `ranks` GPUs left by tp x pp: [1] below
    `CP_MIN_SEQ_LEN` tokens, else every divisor of `ranks` that cuts the
    sequence into 2 cp equal chunks (`fix["cp"]` overrides)."""
    s = base.model.seq_len
    default = ([c for c in divisors(max(1, ranks)) if s % (2 * c) == 0]
               if s >= CP_MIN_SEQ_LEN else [1])
    return _options("cp", default, fix)


def with_parallel(base: Plan, **fields: Any) -> Plan:
    """`base` with some parallel fields changed, not validated (see `plan_problems`)."""
    return dataclasses.replace(base, parallel=dataclasses.replace(base.parallel, **fields))


def reason_kind(reason: str) -> str:
    """A reason with its numbers blanked, for counting rejections by kind."""
    return re.sub(r"\d+(\.\d+)?", "N", reason)


_NUMBER = re.compile(r"\d+(\.\d+)?")
SHOWN_VALUES = 4  # distinct values listed in a grouped reason; more are shown as a range


def _values(found: list[str]) -> str:
    vals = sorted(set(found), key=float)
    if len(vals) <= SHOWN_VALUES:
        return "|".join(vals)
    return f"{vals[0]}..{vals[-1]}"


def group_reasons(reasons: list[str]) -> dict[str, int]:
    """Rejection reasons grouped by kind, each number slot showing the values it took
    ("pp*vpp = 5..480 does not divide model.layers = 96") -> {text: count}, most first."""
    groups: dict[str, tuple[str, list[list[str]]]] = {}
    for r in reasons:
        example, numbers = groups.setdefault(reason_kind(r), (r, []))
        numbers.append([m.group(0) for m in _NUMBER.finditer(r)])
    out = {}
    for example, numbers in sorted(groups.values(), key=lambda g: -len(g[1])):
        parts = iter([_values(list(v)) for v in zip(*numbers, strict=True)])
        out[_NUMBER.sub(lambda _m, it=parts: next(it), example)] = len(numbers)
    return out


def peak_memory_gb(plan: Plan) -> dict:
    """Memory of the most loaded GPU (`sandbox.memory`), GB by component.

    Only the first and last pipeline stages are evaluated: activations in
    flight never grow with the stage index, and only the end stages hold the
    embedding and the logits, so the maximum is at one of them.
    """
    stages = {0, plan.parallel.pp - 1}
    return max((memory.memory_per_gpu(plan, s) for s in stages), key=lambda d: d["total"])


@dataclasses.dataclass(frozen=True)
class Screened:
    """A candidate that can run and fits, with its memory (GB) and bound (s)."""

    plan: Plan
    memory_gb: float
    lower_bound_s: float


def screen(base: Plan, settings: Iterable[Parallel], max_memory_gb: float | None = None
           ) -> tuple[list[Screened], list[tuple[Parallel, str, str]]]:
    """Split candidates into (feasible, rejected).

    Rejected entries are `(parallel, stage, reason)` with stage "invalid"
    (the validator's first reason) or "memory" (does not fit the GPU or
    `max_memory_gb`).
    """
    c = base.cluster
    cap = memory.usable_gb(c.gpu.hbm_gb, c.memory_reserve)  # the reserve left free
    limit = min(cap, max_memory_gb) if max_memory_gb else cap
    feasible: list[Screened] = []
    rejected: list[tuple[Parallel, str, str]] = []
    for par in settings:
        plan = dataclasses.replace(base, parallel=par)
        problems = plan_problems(plan)
        if problems:
            rejected.append((par, "invalid", problems[0]))
            continue
        mem = peak_memory_gb(plan)["total"]
        if mem > limit:
            what = (f"GPU memory {c.gpu.hbm_gb:.1f} GB less its "
                    f"{c.memory_reserve:.0%} reserve ({cap:.1f} GB)" if limit == cap
                    else f"max_memory_gb {limit:.1f} GB")
            rejected.append((par, "memory", f"memory: needs {mem:.1f} GB per GPU > {what}"))
            continue
        feasible.append(Screened(plan, mem, step_time_lower_bound(plan)))
    return feasible, rejected


def _stage0_params(plan: Plan) -> tuple[float, float]:
    """(non-routed, routed-expert) parameters of one GPU of stage 0."""
    m, p = plan.model, plan.parallel
    if not m.moe:
        return memory.stage_params_per_gpu(m, p.tp, p.pp, 0), 0.0
    return costs.stage_param_parts(plan, stage_layers(plan), 0)


def _dp_comm_s(plan: Plan) -> float:
    """Least time to reduce one replica's gradients over the data-parallel group."""
    c, p = plan.cluster, plan.parallel
    if p.cp > 1:  # over dp x cp ranks, tp apart at the closest: as many per node as fit
        return _grad_reduce_s(plan, p.dp * p.cp, max(1, c.gpus_per_node // p.tp))
    if p.dp <= 1:
        return 0.0
    grads = _stage0_params(plan)[0] * GRAD_BYTES  # MoE: routed experts reduce over less
    per_node = c.gpus_per_node
    stride = p.tp * p.pp  # ranks of one DP group are tp*pp apart
    if stride * p.dp <= per_node:  # the whole group inside one node
        return 2 * (p.dp - 1) / p.dp * grads / (c.intra_node_gb_per_s * 1e9)
    members = max(1, per_node // stride)  # members of one group per node
    groups = per_node // members  # groups sharing one node's NICs
    k = p.dp // members  # nodes one group spans
    node_bytes = groups * 2 * (k - 1) / k * grads  # after reducing inside the node
    return node_bytes / (c.node_nic_gb_per_s * 1e9)


def _grad_reduce_s(plan: Plan, g: int, per_node: int) -> float:
    """Least time of an all-reduce of stage 0's gradients over `g` ranks of
    which at most `per_node` share a node (NVLink inside, the node's NICs,
    shared by its groups, across)."""
    c = plan.cluster
    grads = _stage0_params(plan)[0] * GRAD_BYTES
    if g <= 1:
        return 0.0
    members = min(g, per_node)
    if members == g:
        return 2 * (g - 1) / g * grads / (c.intra_node_gb_per_s * 1e9)
    k = -(-g // members)  # nodes one group spans
    node_bytes = c.gpus_per_node // members * 2 * (k - 1) / k * grads
    return node_bytes / (c.node_nic_gb_per_s * 1e9)


def _microbatch_s(plan: Plan) -> float:
    """Least time of one microbatch on the busiest pipeline rank: the
    simulator's own kernel costs (`sim.compute`) and TP collectives at full
    link bandwidth, or the host's dispatch time if longer (`sim.host`)."""
    m, c, p, t = plan.model, plan.cluster, plan.parallel, plan.train
    prof = profile_for(c)
    dev = compute.device_of(plan, prof)
    per_layer = []
    for lt in [compute.layer_times(plan, dev)] + (
            [compute.layer_times(plan, dev, moe=True)] if m.moe else []):
        recompute = {"full": lt.fwd, "selective": lt.attn_core, "op": lt.op_recompute,
                     "layer": lt.fwd / 2}.get(p.recompute, 0.0)
        per_layer.append(lt.fwd + lt.bwd + recompute)  # MoE: the cheaper block kind
    ends = sum(compute.embedding_times(plan, dev)) + sum(compute.head_times(plan, dev))
    layers = m.layers / p.pp
    gpu = layers * min(per_layer) + (ends if p.pp == 1 else ends / 2)
    if p.tp > 1:  # 2 collectives forward + 2 backward per layer (all-reduce or AG+RS)
        act = (local_seq_len(plan) * p.micro_batch * m.hidden
               * memory.weight_bytes_per_param(t.precision))
        one = 2 * (p.tp - 1) / p.tp * act / (c.intra_node_gb_per_s * 1e9)
        gpu += (2 if p.tp_overlap else 4) * one * layers
    ho = host.host_ops(plan)  # kernels per block as `sim.costs` charges the host for them
    rerun = {"full": ho.block_fwd, "selective": ho.attn_core, "op": ho.op_recompute}.get(
        p.recompute, 0)  # "layer": a share of the blocks, at least none
    ops = layers * (ho.block_fwd + ho.block_bwd_input + ho.block_bwd_weight + rerun)
    return max(gpu, ops * prof.host_op_overhead_s)


def step_time_lower_bound(plan: Plan) -> float:
    """A lower bound on one optimizer step's time, seconds (see module doc)."""
    c, p = plan.cluster, plan.parallel
    mbs = p.microbatches
    work = _microbatch_s(plan) * mbs  # per GPU, all microbatches
    if p.pp > 1:
        slots = {"interleaved-1f1b": (p.pp - 1) / p.vpp,
                 "zero-bubble": (p.pp - 1) / 3}.get(p.schedule, p.pp - 1)
        work *= 1 + slots / mbs
    grads_s = _dp_comm_s(plan)  # reduce-scatter + all-gather volume = one all-reduce
    # ZeRO-3 gathers the stage's parameters before every forward and backward
    # (half an all-reduce each; under pipeline parallelism once per step, with
    # one reduce-scatter: `memory.zero3_pipelined`); that traffic may overlap
    # compute, so it only bounds the step from below as a whole.
    traffic = grads_s * (0.5 + mbs if p.zero >= 3 and not memory.zero3_pipelined(plan)
                         else 1.0)
    hidden = work / mbs  # the last microbatch hides at most its own time
    if p.zero in (1, 2):  # reduce-scatter may hide; the all-gather follows the step
        exposed = grads_s / 2 + max(0.0, grads_s / 2 - hidden)
    else:
        exposed = max(0.0, grads_s - hidden)
    shard = p.dp * p.cp if p.zero >= 1 else 1  # ZeRO shards over dp x cp
    dense, routed = _stage0_params(plan)  # routed experts shard over dp / ep
    held = dense / shard + (routed / (p.dp // p.ep if p.zero >= 1 else 1) if routed else 0.0)
    optim = held * OPTIMIZER_BYTES / (c.gpu.hbm_gb_per_s * 1e9)
    return BOUND_SLACK * (max(work + exposed, traffic) + optim)
