"""`sandbox info`: the analytic facts of a plan, no simulation."""

from __future__ import annotations

from typing import Any

from sandbox import counts, memory
from sandbox import units as u
from sandbox.layout_facts import format_layout, layout_facts
from sandbox.specs import Plan


class Facts(dict):
    """A dict of the DESIGN.md `info` contract that renders in Jupyter."""

    def to_dict(self) -> dict[str, Any]:
        return dict(self)

    def _repr_html_(self) -> str:
        from sandbox.report_html import facts_html

        return facts_html(facts_rows(self))

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
        memory_reserve=plan.cluster.memory_reserve,
        fits=memory.fits_in(mem["total"], plan.cluster.gpu.hbm_gb, plan.cluster.memory_reserve),
        layout=layout_facts(plan),
    )


def fits_line(f: dict) -> str:
    """The "fits" cell of `info` or `simulate`: memory against the GPU's, GiB."""
    total = f["memory_gb_per_gpu"]["total"]
    if not f.get("gpu_memory_gb"):
        return "yes" if f["fits"] else "NO (does not fit in GPU memory)"
    return u.memory_fit(total, f["gpu_memory_gb"], f.get("memory_reserve", 0.0), f["fits"])


def facts_rows(f: dict) -> list[tuple[str, Any]]:
    """(label, shown value) of `info`: counts with SI prefixes, memory in GiB."""
    mem = f["memory_gb_per_gpu"]
    rows = [
        ("model", f["model"]), ("cluster", f["cluster"]),
        ("parameters", f"{u.params(f['params'])} ({f['params']:,})"),
        ("active parameters", f"{u.params(f['active_params'])} per token"),
        ("model FLOPs / step", u.flops(f["flops_per_step"])),
        ("hardware FLOPs / step", u.flops(f["hw_flops_per_step"])),
        ("world size", f["world_size"]), ("microbatches / replica", f["microbatches"]),
        ("tokens / step", f"{f['tokens_per_step']:,}"),
    ]
    rows += [(f"memory {k} per GPU", u.gib(v)) for k, v in mem.items()]
    rows += [("most loaded stage", f["most_loaded_stage"]), ("fits", fits_line(f))]
    if "layout" in f:
        rows += format_layout(f["layout"])
    return rows


def format_facts(f: dict) -> str:
    """`info` as aligned text (`facts_rows`)."""
    rows = facts_rows(f)
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
