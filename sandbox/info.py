"""`sandbox info`: the analytic facts of a plan, no simulation."""

from __future__ import annotations

from typing import Any

from sandbox import counts, memory
from sandbox.layout_facts import format_layout, layout_facts
from sandbox.specs import Plan


class Facts(dict):
    """A dict of the DESIGN.md `info` contract that renders in Jupyter."""

    def to_dict(self) -> dict[str, Any]:
        return dict(self)

    def _repr_html_(self) -> str:
        from sandbox.report_html import facts_html

        return facts_html(self)

    def __str__(self) -> str:
        return format_facts(self)


def info(plan: Plan) -> Facts:
    """params, flops_per_step, hw_flops_per_step, world_size, memory_gb_per_gpu, fits;
    also active_params, microbatches, tokens_per_step, most_loaded_stage,
    gpu_memory_gb and `layout` (`sandbox.layout_facts`: mesh order, groups)."""
    m, p = plan.model, plan.parallel
    mem = memory.memory_per_gpu(plan)
    return Facts(
        model=m.name,
        cluster=plan.cluster.name,
        params=counts.param_count(m),
        active_params=counts.active_params(m),
        flops_per_step=counts.model_flops_per_step(m, p.global_batch),
        hw_flops_per_step=counts.hardware_flops_per_step(m, p.global_batch, p.recompute,
                                                            plan.train.precision),
        world_size=plan.world_size,
        microbatches=p.microbatches,
        tokens_per_step=plan.tokens_per_step,
        memory_gb_per_gpu={k: mem[k] for k in ("params", "grads", "optimizer",
                                               "activations", "other", "total")},
        most_loaded_stage=mem["stage"],
        gpu_memory_gb=plan.cluster.gpu.hbm_gb,
        fits=mem["total"] <= plan.cluster.gpu.hbm_gb,
        layout=layout_facts(plan),
    )


def format_facts(f: dict) -> str:
    mem = f["memory_gb_per_gpu"]
    rows = [
        ("model", f["model"]), ("cluster", f["cluster"]),
        ("parameters", f"{f['params'] / 1e9:.3f} B ({f['params']:,})"),
        ("active parameters", f"{f['active_params'] / 1e9:.3f} B per token"),
        ("model FLOPs / step", f"{f['flops_per_step']:.4g}"),
        ("hardware FLOPs / step", f"{f['hw_flops_per_step']:.4g}"),
        ("world size", f["world_size"]), ("microbatches / replica", f["microbatches"]),
        ("tokens / step", f"{f['tokens_per_step']:,}"),
    ]
    rows += [(f"memory {k} (GB/GPU)", f"{v:.3f}") for k, v in mem.items()]
    rows += [("most loaded stage", f["most_loaded_stage"]),
             ("fits", f"{'yes' if f['fits'] else 'NO'} ({mem['total']:.1f} of "
                      f"{f['gpu_memory_gb']:.1f} GB)")]
    if "layout" in f:
        rows += format_layout(f["layout"])
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
