"""The rules a plan must satisfy to run; each broken rule is one line naming
the field. Memory fit is not checked here (`run` checks it, `simulate`
reports it). `runtime_problems` adds what only the runtime cannot do (the
simulator models every synchronisation variant on every layout)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from sandbox import sections
from sandbox.bounds import bound_problems
from sandbox.errors import PlanError, did_you_mean
from sandbox.experts import expert_problems
from sandbox.presets import GPUS
from sandbox.runtime_rules import runtime_problems, validate_runtime

__all__ = ["context_problems", "plan_problems", "runtime_problems", "validate",
           "validate_runtime", "variation_problems"]

if TYPE_CHECKING:  # type hints only: sandbox.specs builds plans and calls validate
    from sandbox.specs import Plan

_COMPRESSION = re.compile(r"^(none|fp16|bf16|int8|topk:(0?\.\d+|1(\.0*)?)|powersgd:[1-9]\d*)$")


def _positive(problems: list[str], section: str, obj: object, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(obj, name)
        if value <= 0:
            problems.append(f"{section}.{name}: must be positive, got {value}")


def _non_negative(problems: list[str], section: str, obj: object, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(obj, name)
        if value < 0:
            problems.append(f"{section}.{name}: must not be negative, got {value}")


def _choice(problems: list[str], where: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        problems.append(f"{where}: unknown value '{value}'{did_you_mean(value, options)}; "
                        f"choose one of {', '.join(options)}")


def _kernel_problems(plan: Plan) -> list[str]:
    """A flash kernel the plan's GPU cannot run (FlashAttention-3 and the measured
    cuDNN curve are Hopper-only, `sandbox.attention_kernels`)."""
    from sandbox import attention_kernels

    k, gpu = plan.train.attention_kernel, plan.cluster.gpu.name
    if k not in sections.ATTENTION_KERNELS or attention_kernels.available(k, gpu):
        return []
    return [f'train.attention_kernel: "{k}" ({attention_kernels.KERNEL_NAMES[k]}) needs a '
            f"Hopper GPU (h100-sxm, h100-sxm-96g, h200-sxm); cluster.gpu is {gpu}"]


def plan_problems(plan: Plan) -> list[str]:
    """Every rule the plan breaks, one readable line each (empty: valid)."""
    m, c, p, t = plan.model, plan.cluster, plan.parallel, plan.train
    problems = bound_problems(plan)
    if problems:  # NaN passes every comparison below; huge sizes make them slow
        return problems
    _positive(problems, "model", m, ("layers", "hidden", "heads", "kv_heads", "vocab",
                                     "seq_len", "ffn_hidden", "norm_eps", "rope_theta"))
    _positive(problems, "cluster", c, ("nodes", "gpus_per_node", "intra_node_gb_per_s",
                                       "nics_per_node", "nic_gbit_per_s", "oversubscription",
                                       "storage_gb_per_s", "weibull_shape"))
    _non_negative(problems, "cluster", c, ("intra_node_latency_us", "inter_node_latency_us",
                                           "gpu_mtbf_h", "node_mtbf_h", "link_mtbf_h",
                                           "switch_mtbf_h", "restart_s", "usd_per_gpu_hour",
                                           "storage_total_gb_per_s"))
    if not 0 <= c.memory_reserve < 0.5:
        problems.append("cluster.memory_reserve: must be a fraction in [0, 0.5) of GPU "
                        f"memory (0.05 = 5% kept free), got {c.memory_reserve}")
    _positive(problems, "cluster.gpu", c.gpu, ("tflops_fp32", "hbm_gb", "hbm_gb_per_s"))
    _non_negative(problems, "cluster.gpu", c.gpu, ("tflops_tf32", "tflops_fp16", "tflops_bf16",
                                                   "tflops_fp8", "tdp_w", "power_limit_w"))
    _positive(problems, "parallel", p, ("dp", "tp", "pp", "cp", "vpp", "micro_batch",
                                        "global_batch", "sync_every"))
    _positive(problems, "train", t, ("lr", "steps"))
    _non_negative(problems, "train", t, ("warmup_steps", "min_lr_ratio", "weight_decay",
                                         "grad_clip", "checkpoint_every", "eval_every"))
    _choice(problems, "model.activation", m.activation, sections.ACTIVATIONS)
    _choice(problems, "model.norm", m.norm, sections.NORMS)
    _choice(problems, "model.position", m.position, sections.POSITIONS)
    _choice(problems, "cluster.topology", c.topology, sections.TOPOLOGIES)
    _choice(problems, "train.attention", t.attention, sections.ATTENTION)
    _choice(problems, "train.attention_kernel", t.attention_kernel, sections.ATTENTION_KERNELS)
    problems += _kernel_problems(plan)
    _choice(problems, "cluster.failure_distribution", c.failure_distribution,
            sections.FAILURE_DISTRIBUTIONS)
    _choice(problems, "parallel.schedule", p.schedule, sections.SCHEDULES)
    _choice(problems, "parallel.recompute", p.recompute, sections.RECOMPUTE)
    if p.recompute == "op" and t.attention != "flash":
        problems.append('parallel.recompute: "op" (torchtitan\'s per-op policy saves the '
                        'flash / SDPA kernel\'s output) needs train.attention = "flash"')
    _choice(problems, "parallel.dp_mode", p.dp_mode, sections.DP_MODES)
    _choice(problems, "train.precision", t.precision, sections.PRECISIONS)
    _choice(problems, "train.optimizer", t.optimizer, sections.OPTIMIZERS)
    _choice(problems, "train.lr_schedule", t.lr_schedule, sections.LR_SCHEDULES)
    _choice(problems, "train.fp8_recipe", t.fp8_recipe, sections.FP8_RECIPES)
    _non_negative(problems, "parallel", p, ("dp_shard",))
    if p.zero not in (0, 1, 2, 3):
        problems.append(f"parallel.zero: must be 0, 1, 2 or 3, got {p.zero}")
    if not _COMPRESSION.match(p.grad_compression):
        problems.append(f"parallel.grad_compression: unknown value '{p.grad_compression}'; "
                        "choose none, fp16, bf16, int8, topk:FRACTION or powersgd:RANK")
    if problems:  # the divisibility rules below assume positive sizes
        return problems

    if m.hidden % m.heads and m.head_dim == m.hidden // m.heads:  # no head_dim given
        problems.append(f"model.hidden: {m.hidden} is not divisible by model.heads = {m.heads}")
    if m.heads % m.kv_heads:
        problems.append(f"model.kv_heads: {m.kv_heads} does not divide model.heads = {m.heads}")
    if m.position == "rope" and m.head_dim % 2:
        problems.append(f"model.heads: rope needs an even head size, got {m.head_dim}")
    if p.cp == 1 and p.dp * p.tp * p.pp != c.world_size:
        problems.append(f"parallel: dp*tp*pp = {p.dp}*{p.tp}*{p.pp} = {p.dp * p.tp * p.pp} "
                        f"!= world size {c.world_size} (cluster.nodes*gpus_per_node = "
                        f"{c.nodes}*{c.gpus_per_node})")
    problems += context_problems(plan)
    problems += expert_problems(plan)
    if m.heads % p.tp:
        problems.append(f"parallel.tp: {p.tp} does not divide model.heads = {m.heads}")
    elif m.kv_heads % p.tp:
        problems.append(f"parallel.tp: {p.tp} does not divide model.kv_heads = {m.kv_heads}")
    elif m.ffn_hidden % p.tp:
        problems.append(f"parallel.tp: {p.tp} does not divide model.ffn_hidden = {m.ffn_hidden}")
    # pp*vpp need not divide the layers (`sandbox.layout.split_blocks` cuts them
    # unevenly), and the first and last chunk may be left with the embedding or
    # the head alone (Llama 3's layout); every other chunk needs a block
    chunks = p.pp * p.vpp
    if m.layers < chunks - min(2, chunks - 1) and not p.stage_layers:
        problems.append(f"parallel.pp: pp*vpp = {chunks} chunks need a block each except "
                        f"the first and the last, model.layers = {m.layers}")
    if p.global_batch % (p.dp * p.micro_batch):
        problems.append(f"parallel.global_batch: {p.global_batch} is not divisible by "
                        f"dp*micro_batch = {p.dp}*{p.micro_batch}")
    elif p.schedule == "interleaved-1f1b" and p.microbatches % p.pp:
        problems.append(f"parallel.schedule: interleaved-1f1b needs microbatches per replica "
                        f"({p.microbatches}) divisible by pp = {p.pp}")
    if p.pipeline_flushes < 1 or p.microbatches % p.pipeline_flushes:
        problems.append(f"parallel.pipeline_flushes: {p.pipeline_flushes} must be >= 1 and "
                        f"divide the microbatches per replica ({p.microbatches})")
    elif p.pipeline_flushes > 1 and p.schedule == "interleaved-1f1b" \
            and (p.microbatches // p.pipeline_flushes) % p.pp:
        problems.append(f"parallel.pipeline_flushes: interleaved-1f1b needs each flush's "
                        f"{p.microbatches // p.pipeline_flushes} micro-batches divisible by "
                        f"pp = {p.pp}")
    if p.vpp > 1 and p.schedule != "interleaved-1f1b":
        problems.append(f"parallel.vpp: vpp = {p.vpp} needs schedule = 'interleaved-1f1b'")
    if p.schedule == "interleaved-1f1b" and (p.vpp < 2 or p.pp < 2):
        problems.append("parallel.schedule: interleaved-1f1b needs pp >= 2 and vpp >= 2")
    if p.zero > 0 and p.dp_mode != "allreduce":
        problems.append(f"parallel.zero: ZeRO sharding needs dp_mode = 'allreduce', "
                        f"got '{p.dp_mode}'")
    if t.precision == "fp8" and c.gpu.tflops_fp8 <= 0:
        problems.append(f"train.precision: {c.gpu.name} has no fp8 support")
    problems += _fp8_hsdp_problems(plan)
    problems += variation_problems(plan)
    return problems


def _fp8_hsdp_problems(plan: Plan) -> list[str]:
    """FP8 all-gather (torchao: tensorwise scaling of ZeRO-3 weights in fp8)
    and HSDP's shard groups (a divisor of dp, with ZeRO sharding)."""
    p, t, problems = plan.parallel, plan.train, []
    if t.compile_loss and not t.compile:
        problems.append("train.compile_loss: compiling the loss needs train.compile = true")
    if t.fp8_all_gather and t.precision != "fp8":
        problems.append(f"train.fp8_all_gather: needs precision = 'fp8', got '{t.precision}'")
    elif t.fp8_all_gather and t.fp8_recipe != "tensorwise":
        problems.append("train.fp8_all_gather: torchao casts FSDP weights in fp8 only with "
                        f"fp8_recipe = 'tensorwise', got '{t.fp8_recipe}'")
    if p.dp_shard and p.dp % p.dp_shard:
        problems.append(f"parallel.dp_shard: {p.dp_shard} does not divide dp = {p.dp}")
    elif p.dp_shard == 1 and p.dp > 1:
        problems.append("parallel.dp_shard: 1 shards nothing; replicate with zero = 0 "
                        "or shard over 2 or more data-parallel ranks")
    elif p.dp_shard and p.dp_shard != p.dp and p.zero == 0:
        problems.append(f"parallel.dp_shard: {p.dp_shard} shards ZeRO states; it needs "
                        "zero >= 1 (zero 0 replicates everything)")
    elif p.dp_shard and p.dp_shard != p.dp and p.grad_compression != "none":
        problems.append(f"parallel.dp_shard: HSDP reduces uncompressed gradients, got "
                        f"grad_compression = '{p.grad_compression}'")
    return problems


_LINK = re.compile(r"^(nvlink:(\d+)|nic:(\d+)\.(\d+)|node:(\d+))$")


def context_problems(plan: Plan) -> list[str]:
    """Rules of `parallel.cp_method` (one of `CP_METHODS`) and of `parallel.cp`
    (cp > 1): the mesh pp x dp x cp x tp fills the cluster, every sequence
    splits into 2 * cp equal chunks (causal load balance), and the gradients
    are all-reduced (no parameter server)."""
    m, c, p = plan.model, plan.cluster, plan.parallel
    problems: list[str] = []
    _choice(problems, "parallel.cp_method", p.cp_method, sections.CP_METHODS)
    if p.cp == 1:
        return problems
    n = p.pp * p.dp * p.cp * p.tp
    if n != c.world_size:
        problems.append(f"parallel: pp*dp*cp*tp = {p.pp}*{p.dp}*{p.cp}*{p.tp} = {n} != world "
                        f"size {c.world_size} (cluster.nodes*gpus_per_node = "
                        f"{c.nodes}*{c.gpus_per_node})")
    for where, s in [("model.seq_len", m.seq_len)] + [
            ("parallel.replica_seq_len", x) for x in sorted(set(p.replica_seq_len))]:
        if s % (2 * p.cp):
            problems.append(f"{where}: {s} tokens do not split into 2*cp = {2 * p.cp} equal "
                            "chunks (context parallelism's causal load balance)")
            break
    if p.dp_mode != "allreduce":
        problems.append(f"parallel.cp: context parallelism needs dp_mode = 'allreduce', "
                        f"got '{p.dp_mode}'")
    return problems


def _per_item(problems: list[str], where: str, values: tuple, n: int, what: str) -> bool:
    if values and len(values) != n:
        problems.append(f"{where}: needs {n} entries (one per {what}), got {len(values)}")
        return False
    return bool(values)


def variation_problems(plan: Plan) -> list[str]:
    """Rules of the straggler / heterogeneity / uneven-work fields."""
    m, c, p = plan.model, plan.cluster, plan.parallel
    problems: list[str] = []
    for r in c.slow_gpus:
        if not 0 <= r < c.world_size:
            problems.append(f"cluster.slow_gpus: GPU {r} is not in 0..{c.world_size - 1}")
    for name in ("slow_gpu_fraction", "slow_link_fraction"):
        if not 0 <= getattr(c, name) <= 1:
            problems.append(f"cluster.{name}: must be in [0, 1], got {getattr(c, name)}")
    for name in ("slow_gpu_slowdown", "slow_link_slowdown"):
        if getattr(c, name) < 1:
            problems.append(f"cluster.{name}: must be at least 1 (1 = full speed), "
                            f"got {getattr(c, name)}")
    for link in c.slow_links:
        g = _LINK.match(link)
        if not g:
            problems.append(f"cluster.slow_links: cannot read '{link}'; write nvlink:GPU, "
                            "nic:NODE.NIC or node:NODE")
        elif g.group(2) is not None and int(g.group(2)) >= c.world_size:
            problems.append(f"cluster.slow_links: '{link}': no GPU {g.group(2)}")
        elif g.group(3) is not None and (int(g.group(3)) >= c.nodes
                                         or int(g.group(4)) >= c.nics_per_node):
            problems.append(f"cluster.slow_links: '{link}': no NIC {g.group(4)} on node "
                            f"{g.group(3)} ({c.nodes} nodes, {c.nics_per_node} NICs each)")
        elif g.group(5) is not None and int(g.group(5)) >= c.nodes:
            problems.append(f"cluster.slow_links: '{link}': no node {g.group(5)}")
    if _per_item(problems, "cluster.node_gpus", c.node_gpus, c.nodes, "node"):
        for name in sorted(set(c.node_gpus) - set(GPUS)):
            problems.append(f"cluster.node_gpus: unknown GPU preset '{name}'"
                            f"{did_you_mean(name, GPUS)}; known: {', '.join(GPUS)}")
    if p.grad_compression.startswith("powersgd") and p.dp_mode != "allreduce":
        problems.append(f"parallel.grad_compression: powersgd needs dp_mode = 'allreduce' "
                        f"(its two all-reduce rounds have no push form), got '{p.dp_mode}'")
    if p.ps_servers < 0 or p.ps_servers > c.world_size:
        problems.append(f"parallel.ps_servers: must be in 0..{c.world_size} (0: one per "
                        f"node), got {p.ps_servers}")
    if _per_item(problems, "parallel.stage_layers", p.stage_layers, p.pp, "pipeline stage"):
        if min(p.stage_layers) < 1 or sum(p.stage_layers) != m.layers:
            problems.append(f"parallel.stage_layers: {list(p.stage_layers)} must be positive "
                            f"and sum to model.layers = {m.layers}")
        if p.vpp > 1:
            problems.append("parallel.stage_layers: uneven stages need vpp = 1")
    mbs = p.global_batch // (p.dp * p.micro_batch) * p.dp
    if _per_item(problems, "parallel.replica_microbatches", p.replica_microbatches, p.dp,
                 "data-parallel replica"):
        if min(p.replica_microbatches) < 1 or sum(p.replica_microbatches) != mbs:
            problems.append(f"parallel.replica_microbatches: {list(p.replica_microbatches)} "
                            f"must be positive and sum to global_batch / micro_batch = {mbs}")
        elif p.schedule == "interleaved-1f1b" and any(x % p.pp for x in p.replica_microbatches):
            problems.append("parallel.replica_microbatches: interleaved-1f1b needs each "
                            f"divisible by pp = {p.pp}")
    if _per_item(problems, "parallel.replica_seq_len", p.replica_seq_len, p.dp,
                 "data-parallel replica"):
        bad = sorted({x for x in p.replica_seq_len if not 1 <= x <= m.seq_len})
        if bad:
            problems.append(f"parallel.replica_seq_len: {', '.join(map(str, bad))} not in "
                            f"1..model.seq_len = {m.seq_len}")
    return problems


def validate(plan: Plan) -> Plan:
    """Raise PlanError listing every broken rule; return the plan if valid."""
    problems = plan_problems(plan)
    if problems:
        raise PlanError(problems)
    return plan
