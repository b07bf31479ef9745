"""The discrete-event simulator: `simulate(plan) -> SimResult`.

Pipeline: `lowering.lower` (plan -> per-rank `work.Work` with costs from
`costs`, `compute` and `network.collectives` over the cluster's network
`network.shared`) -> `engine.Engine` (simpy processes, flows in
`network.flows`) -> `SimResult` (DESIGN.md contract).
Deterministic and pure in the plan; one data-parallel replica stands for
all when they are identical, one per kind when stragglers, mixed GPUs or
uneven work make them differ (`sim.replicas`; `replicas="all"` simulates
every one). `parallel.dp_mode` picks the synchronisation (`sim.sync`).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from sandbox import counts, memory
from sandbox.experts import layer_kinds
from sandbox.layout import rank_of, stage_layers
from sandbox.profile import Profile, profile_for
from sandbox.specs import Plan
from sim import engine, lowering, variation
from sim.budget import check_budget
from sim.context_parallel import cp_note
from sim.costs import chunk_blocks
from sim.engine import EngineResult
from sim.expert_parallel import ep_note
from sim.moe_compute import moe_note
from sim.network.shared import shared
from sim.result import BREAKDOWN, SimResult
from sim.sync import variants

__all__ = ["SimResult", "memory_fields", "same_timing", "simulate"]


def simulate(plan: Plan, *, profile: Profile | None = None, replicas: str = "auto",
             timeline: bool = True, dp_overlap: bool = True,
             bucket_params: float | None = None, dp_algorithm: str = "ring",
             topology: str | None = None) -> SimResult:
    """Simulate one optimizer step of `plan`.

    profile: efficiency constants (default: the cluster's `profile` file, or
    `Profile()`); replicas: "auto" (one replica per kind of work: exact),
    "one" (replica 0 only: exact when replicas are identical) or "all";
    timeline: keep per-rank spans (off is faster); dp_overlap: reduce gradient
    buckets during the last backward (False: one reduction after it, as with
    Megatron's no-bucketing runs);
    bucket_params: parameters per gradient bucket; dp_algorithm: ring | tree
    | hierarchical; topology: override `cluster.topology`. Raises SandboxError
    when the plan is too large to simulate (`sim.budget`).
    """
    t_start = time.perf_counter()
    check_budget(plan, replicas, timeline)
    prof = profile or profile_for(plan.cluster)
    topo = shared(plan.cluster, topology)
    work = lowering.lower(plan, topo, prof, dp_overlap=dp_overlap,
                          bucket_params=bucket_params or lowering.DEFAULT_BUCKET_PARAMS,
                          dp_algorithm=dp_algorithm)
    reps = {"all": tuple(range(plan.parallel.dp)), "one": (0,)}.get(
        replicas, work.representatives())
    res = engine.run(work, topo, reps, timeline=timeline)
    extra = variants.finish(plan, topo, prof, work, res, reps, dp_algorithm)
    if len(reps) > 1 or replicas == "auto" and len(work.representatives()) > 1:
        extra["simulated_replicas"] = len(reps)
    return _result(plan, res, time.perf_counter() - t_start, extra)


def memory_fields(plan: Plan) -> tuple[dict[str, float], bool]:
    """`memory_gb_per_gpu` of the contract (the most loaded GPU, GB) and `fits`
    (against the smallest GPU of a mixed cluster, less `cluster.memory_reserve`)."""
    mem = memory.memory_per_gpu(plan)
    keep = ("params", "grads", "optimizer", "activations", "other", "total")
    fits = memory.fits_in(mem["total"], variation.min_hbm_gb(plan.cluster),
                          plan.cluster.memory_reserve)
    return {k: mem[k] for k in keep}, fits


def same_timing(plan: Plan) -> Any:
    """A key equal for plans the simulator times identically: ZeRO 1 and 2
    differ only in the memory of the gradients (both reduce-scatter, step on a
    shard and all-gather the parameters)."""
    par = plan.parallel
    return (plan.model, plan.cluster, plan.train,
            replace(par, zero=1) if par.zero == 2 else par)


def _result(plan: Plan, res: EngineResult, wall: float, extra: dict | None = None
            ) -> SimResult:
    m = plan.model
    step = res.step_time_s
    key = max(res.stats, key=lambda k: (res.stats[k].finish, -k[1]))
    st = res.stats[key]
    parts = {"compute": st.compute, "tp_comm": st.tp_comm, "pp_comm": st.pp_comm,
             "dp_comm": st.dp_comm, "bubble": st.bubble, "optimizer": st.optimizer}
    if plan.parallel.cp > 1:  # exposed ring attention transfers (DESIGN.md: when they occur)
        parts["cp_comm"] = st.cp_comm
        extra = {**(extra or {}), **cp_note(plan)}
    if m.moe:  # routing facts; exposed expert all-to-alls when ep > 1 (DESIGN.md)
        extra = {**(extra or {}), **moe_note(plan)}
        if plan.parallel.ep > 1:
            parts["ep_comm"] = st.ep_comm
            per_stage: dict[int, int] = {}
            for (s, _c), r in chunk_blocks(plan, stage_layers(plan)).items():
                per_stage[s] = per_stage.get(s, 0) + layer_kinds(m, r)[1]
            extra.update(ep_note(plan, max(per_stage.values())))
    parts["other"] = max(0.0, step - sum(parts.values()))
    if st.host > 0:  # part of `other`: host-bound ops (`sim.host`)
        extra = {**(extra or {}), "host_bound_s": st.host}
    tokens, flops, hw = variation.step_counts(plan)
    n = plan.world_size
    peak = variation.peak_flops_total(plan) / n  # mean over mixed GPU kinds
    mem_d, fits = memory_fields(plan)
    if plan.train.precision == "fp8":  # torchtitan / Llama 3 quote FP8 MFU against bf16
        bf16 = variation.peak_flops_total(replace(plan, train=replace(plan.train,
                                                                       precision="bf16")))
        extra = {**(extra or {}), "mfu_vs_bf16_peak": flops / (step * bf16)}
    return SimResult(
        params=counts.param_count(m), flops_per_step=flops, hw_flops_per_step=hw,
        step_time_s=step, tokens_per_s=tokens / step,
        tflops_per_gpu=flops / step / n / 1e12, hw_tflops_per_gpu=hw / step / n / 1e12,
        mfu=flops / (step * n * peak), hfu=hw / (step * n * peak), memory_gb_per_gpu=mem_d,
        fits=fits,
        breakdown_s={k: parts[k] for k in (*BREAKDOWN[:2], "cp_comm", "ep_comm",
                                           *BREAKDOWN[2:]) if k in parts},
        events=res.events, sim_wall_s=wall,
        gpu_memory_gb=variation.min_hbm_gb(plan.cluster),
        memory_reserve=plan.cluster.memory_reserve, world_size=n,
        critical_rank=rank_of(plan, key[0], key[1], 0), extra=extra or {},
        timeline=res.spans)
