"""The Python front door; each function mirrors a CLI command.

Engines are imported lazily so that `import sandbox` stays free of torch and
simpy.
"""

from __future__ import annotations

from typing import Any

from sandbox.info import Facts
from sandbox.info import info as _info
from sandbox.planfile import load
from sandbox.specs import Plan

__all__ = ["compare", "export", "info", "load", "run", "search", "simulate"]


def info(plan: Plan | str | dict) -> Facts:
    """The analytic facts of a plan (DESIGN.md `info` contract)."""
    return _info(load(plan))


def simulate(plan: Plan | str | dict, **options: Any) -> Any:
    """Predict a plan's step time, breakdown and memory -> `sim.SimResult`;
    warns (`CalibrationWarning`) when the cluster has no calibrated profile."""
    from sandbox.calibration import warn_api
    from sim import simulate as _simulate

    plan = load(plan)
    warn_api(plan.cluster)
    return _simulate(plan, **options)


def run(plan: Plan | str | dict, out: str, **options: Any) -> Any:
    """Execute a plan with torchrun on this machine -> `runtime.RunResult`."""
    from runtime.launch import run as _run

    return _run(load(plan), out, **options)


def compare(plan: Plan | str | dict, out: str, **options: Any) -> Any:
    """Run and simulate the plan; write compare.json and a timeline plot."""
    from sandbox.compare import compare as _compare

    return _compare(load(plan), out, **options)


def search(**options: Any) -> Any:
    """Rank feasible plans for a model, cluster and GPU budget -> DataFrame."""
    from sim.search import search as _search

    return _search(**options)


def export(run_dir: str, out: str, **options: Any) -> Any:
    """Compress and export a trained run to ONNX -> export report."""
    from runtime.export.pipeline import export as _export

    return _export(run_dir, out, **options)
