"""Numbers checked where they enter: finite, and within sane bounds.

A plan is data a user hands us; a NaN rate, an infinite slowdown or ten
million layers must be refused with one line naming the field, before any
engine loops over them (a NaN bandwidth never finishes a flow, 10**7 layers
take minutes to lower). The limits are generous: each is an order of
magnitude or more beyond the largest published run (Llama 3 405B: 126 layers,
16,384 GPUs, 128K tokens; DeepSeek-V3: 61 layers, 129K vocabulary), so they
refuse typos and attacks, never a real plan. Units as in `sandbox.specs`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # type hints only: sandbox.specs builds plans and validates them
    from sandbox.specs import Plan

# (section, field) -> the largest value accepted
LIMITS: dict[tuple[str, str], float] = {
    ("model", "layers"): 10_000,
    ("model", "hidden"): 2**20,
    ("model", "heads"): 2**16,
    ("model", "kv_heads"): 2**16,
    ("model", "vocab"): 2**24,
    ("model", "seq_len"): 2**24,  # 16.8M tokens
    ("model", "ffn_hidden"): 2**22,
    ("cluster", "nodes"): 2**17,
    ("cluster", "gpus_per_node"): 1024,
    ("cluster", "nics_per_node"): 1024,  # one per GPU (GB200 NVL72: 72 in one NVLink domain)
    ("cluster", "oversubscription"): 1024,
    ("cluster", "slow_gpu_slowdown"): 1000,
    ("cluster", "slow_link_slowdown"): 1000,
    ("cluster", "weibull_shape"): 100,
    ("parallel", "vpp"): 1024,
    ("parallel", "micro_batch"): 2**20,
    ("parallel", "global_batch"): 2**30,
    ("parallel", "sync_every"): 10**9,
    ("train", "lr"): 100.0,
    ("train", "steps"): 10**9,
    ("train", "warmup_steps"): 10**9,
    ("train", "checkpoint_every"): 10**9,
    ("train", "eval_every"): 10**9,
    ("train", "min_lr_ratio"): 1.0,
    ("train", "grad_clip"): 1e9,
    ("train", "weight_decay"): 100.0,
}
MAX_WORLD_SIZE = 2**20  # GPUs (processes) in one plan


def _numbers(section: str, obj: object):
    """(where, name, value) of every int / float field, into nested specs."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _numbers(f"{section}.{f.name}", value)
        elif isinstance(value, tuple):
            for item in value:
                if isinstance(item, int | float) and not isinstance(item, bool):
                    yield section, f.name, item
        elif isinstance(value, int | float) and not isinstance(value, bool):
            yield section, f.name, value


def _num(x: float) -> str:
    return f"{int(x):,}" if float(x).is_integer() else f"{x:g}"


def bound_problems(plan: Plan) -> list[str]:
    """One line per number that is not finite or beyond its limit (empty: all sane)."""
    problems: list[str] = []
    for section in ("model", "cluster", "parallel", "train"):
        for where, name, value in _numbers(section, getattr(plan, section)):
            if isinstance(value, float) and not math.isfinite(value):
                problems.append(f"{where}.{name}: must be a finite number, got {value}")
            elif (limit := LIMITS.get((where, name))) is not None and value > limit:
                problems.append(f"{where}.{name}: {_num(value)} is beyond the limit of "
                                f"{_num(limit)}")
    c = plan.cluster
    if not problems and c.world_size > MAX_WORLD_SIZE:
        problems.append(f"cluster.nodes: {c.nodes} x {c.gpus_per_node} GPUs = "
                        f"{c.world_size:,} is beyond the limit of {MAX_WORLD_SIZE:,}")
    return problems
