"""Distributed-training sandbox: one plan, a simulator and a runtime.

`import sandbox` is light: torch and simpy load only when a simulation or a
run is asked for.
"""

from __future__ import annotations

from sandbox.api import compare, export, info, load, run, search, simulate
from sandbox.errors import PlanError, SandboxError
from sandbox.specs import GPU, Cluster, Model, Parallel, Plan, Train

__all__ = ["GPU", "Cluster", "Model", "Parallel", "Plan", "PlanError", "SandboxError",
           "Train", "compare", "export", "info", "load", "run", "search", "simulate"]
__version__ = "0.1.0"
