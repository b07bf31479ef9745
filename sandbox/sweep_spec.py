"""SWEEP.toml: what `sandbox sweep` searches over, read and checked into a `SweepSpec`.

    plan = "plan.toml"            # relative to SWEEP.toml's folder; or an inline [plan] table
    objective = "val_loss"        # a run's summary.json field, or (mode = "simulate") a
    mode = "run"                  #   `simulate --json` field: step_time_s, breakdown_s.dp_comm...
    direction = "minimize"        # default: maximize for throughput fields, else minimize
    sampler = "tpe"               # grid | random | tpe
    pruner = "median"             # median | none (fed by the training loss of each step)
    trials = 20                   # trials per invocation (--trials overrides); grid: what is left
    seed = 0
    [space]
    "train.lr" = { low = 1e-4, high = 1e-2, log = true }
    "parallel.micro_batch" = [1, 2, 4]

Every problem is one line naming the key (`SandboxError`); nothing in the file executes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox.errors import SandboxError, did_you_mean
from sandbox.files import read_text_file
from sandbox.outputs import checked_path
from sandbox.planfile import load, parse_toml
from sandbox.specs import Plan

KEYS = ("plan", "objective", "mode", "direction", "sampler", "pruner", "trials", "seed", "name",
        "space")
MODES = ("run", "simulate")
SAMPLERS = ("grid", "random", "tpe")
PRUNERS = ("median", "none")
DIRECTIONS = ("minimize", "maximize")
# summary.json fields of `sandbox run` a sweep can optimise; val_loss = eval_loss, else final_loss
RUN_FIELDS = ("val_loss", "eval_loss", "final_loss", "step_time_s", "tokens_per_s", "mfu",
              "peak_mem_gb")
SIM_FIELDS = ("step_time_s", "tokens_per_s", "tflops_per_gpu", "hw_tflops_per_gpu", "mfu", "hfu",
              "events", "sim_wall_s", "usd_per_million_tokens", "memory_gb_per_gpu.total")
SIM_PREFIXES = ("breakdown_s.", "memory_gb_per_gpu.")
LOSSES = ("val_loss", "eval_loss", "final_loss")  # objectives the per-step loss can prune
MAXIMIZED = ("tokens_per_s", "mfu", "hfu", "tflops_per_gpu", "hw_tflops_per_gpu")
MAX_TRIALS = 100_000
MAX_GRID = 100_000


@dataclass(frozen=True)
class Param:
    """One dimension of the space: `choices` (categorical) or a range low..high."""

    name: str  # a dotted plan field, e.g. "train.lr"
    choices: tuple = ()
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None

    @property
    def is_int(self) -> bool:
        return not self.choices and all(isinstance(v, int) for v in (self.low, self.high)) \
            and (self.step is None or isinstance(self.step, int))

    def grid(self) -> list:
        """Every value the grid sampler visits (a range needs a `step`)."""
        if self.choices:
            return list(self.choices)
        if self.step is None:
            raise SandboxError(f"space.{self.name}: the grid sampler needs a list of values "
                               "or a step")
        n = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
        vals = [self.low + i * self.step for i in range(n)]
        return [int(v) for v in vals] if self.is_int else vals


@dataclass(frozen=True)
class SweepSpec:
    """A checked SWEEP.toml."""

    base: Plan
    objective: str
    mode: str
    direction: str
    sampler: str
    pruner: str
    trials: int
    seed: int
    name: str
    space: tuple[Param, ...] = field(default_factory=tuple)

    @property
    def grid(self) -> dict[str, list]:
        return {p.name: p.grid() for p in self.space}

    def plan_for(self, params: dict[str, Any]) -> Plan:
        """The base plan with one trial's values (validated: a PlanError if it cannot run)."""
        return self.base.replace(**params)


def _scalar(v: Any) -> bool:
    return isinstance(v, (bool, int, float, str)) and not (isinstance(v, float)
                                                           and not math.isfinite(v))


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def parse_param(name: str, value: Any) -> Param:
    """One `[space]` entry -> Param (a list, {values = [...]}, or {low, high, log, step})."""
    where = f"space.{name}"
    if isinstance(value, dict) and set(value) == {"values"}:
        value = value["values"]
    if isinstance(value, list):
        if not value:
            raise SandboxError(f"{where}: empty list of values")
        if not all(_scalar(v) for v in value):
            raise SandboxError(f"{where}: values must be numbers, strings or booleans")
        if len(set(map(repr, value))) != len(value):
            raise SandboxError(f"{where}: a value is listed twice")
        return Param(name, choices=tuple(value))
    if not isinstance(value, dict):
        raise SandboxError(f"{where}: expected a list of values or "
                           f"{{ low = ..., high = ... }}, got {value!r}")
    unknown = [k for k in value if k not in ("low", "high", "log", "step")]
    if unknown:
        raise SandboxError(f"{where}: unknown key '{unknown[0]}'"
                           f"{did_you_mean(unknown[0], ('low', 'high', 'log', 'step'))}")
    for k in ("low", "high"):
        if k not in value:
            raise SandboxError(f"{where}: missing '{k}'")
        if not _number(value[k]):
            raise SandboxError(f"{where}.{k}: expected a finite number, got {value[k]!r}")
    low, high, log, step = value["low"], value["high"], value.get("log", False), \
        value.get("step")
    if not isinstance(log, bool):
        raise SandboxError(f"{where}.log: expected true or false, got {log!r}")
    if not low < high:
        raise SandboxError(f"{where}: low ({low}) must be below high ({high})")
    if log and low <= 0:
        raise SandboxError(f"{where}: log = true needs low > 0, got {low}")
    if step is not None and (not _number(step) or step <= 0):
        raise SandboxError(f"{where}.step: expected a positive number, got {step!r}")
    if step is not None and log:
        raise SandboxError(f"{where}: step and log = true cannot be combined")
    return Param(name, low=low, high=high, log=log, step=step)


def _check_fields(base: Plan, space: tuple[Param, ...]) -> None:
    """Each key must name a field of the plan ("train.lr", "parallel.micro_batch", or a bare
    field name such as "lr"); whether a value runs is each trial's business."""
    from sandbox.specs import _SECTION_OF

    tree = base.to_dict()
    for p in space:
        path = p.name.split(".")
        if len(path) == 1 and p.name in _SECTION_OF:
            continue
        node: Any = tree
        for part in path:
            if not isinstance(node, dict) or part not in node:
                options = list(node) if isinstance(node, dict) else []
                raise SandboxError(f"space.{p.name}: unknown plan field"
                                   f"{did_you_mean(part, options)}")
            node = node[part]


def _choice(data: dict, key: str, options: tuple, default: str) -> str:
    v = data.get(key, default)
    if v not in options:
        raise SandboxError(f"{key}: unknown value {v!r}{did_you_mean(v, options)}; choose "
                           f"{', '.join(options)}")
    return v


def _objective(data: dict, mode: str) -> str:
    obj = data.get("objective")
    if obj is None:
        raise SandboxError("objective: missing (e.g. objective = \"val_loss\")")
    if not isinstance(obj, str):
        raise SandboxError(f"objective: expected a field name, got {obj!r}")
    fields = RUN_FIELDS if mode == "run" else SIM_FIELDS
    if obj in fields or (mode == "simulate" and obj.startswith(SIM_PREFIXES)):
        return obj
    other = "simulate" if mode == "run" else "run"
    elsewhere = obj in RUN_FIELDS if mode == "simulate" else (
        obj in SIM_FIELDS or obj.startswith(SIM_PREFIXES))
    hint = f" (a {other} field: set mode = \"{other}\")" if elsewhere \
        else did_you_mean(obj, fields)
    raise SandboxError(f"objective: '{obj}' is not a {mode} field{hint}; choose "
                       f"{', '.join(fields)}")


def _base(data: dict, folder: Path) -> Plan:
    src = data.get("plan")
    if src is None:
        raise SandboxError("plan: missing (plan = \"file.toml\" or an inline [plan] table)")
    if isinstance(src, str):
        path = Path(src) if Path(src).is_absolute() else folder / src
        return load(path)
    if isinstance(src, dict):
        return load(src)
    raise SandboxError(f"plan: expected a file name or a table, got {src!r}")


def _int(data: dict, key: str, default: int, low: int, high: int) -> int:
    v = data.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool) or not low <= v <= high:
        raise SandboxError(f"{key}: expected an integer in {low}..{high:,}, got {v!r}")
    return v


def parse_sweep(data: dict, folder: Path = Path(".")) -> SweepSpec:
    """A SWEEP.toml's dict -> SweepSpec (plan files resolved against `folder`)."""
    unknown = [k for k in data if k not in KEYS]
    if unknown:
        raise SandboxError(f"{unknown[0]}: unknown key{did_you_mean(unknown[0], KEYS)}; keys: "
                           f"{', '.join(KEYS)}")
    mode = _choice(data, "mode", MODES, "run")
    objective = _objective(data, mode)
    default_dir = "maximize" if objective in MAXIMIZED else "minimize"
    direction = _choice(data, "direction", DIRECTIONS, default_dir)
    sampler = _choice(data, "sampler", SAMPLERS, "tpe")
    pruner = _choice(data, "pruner", PRUNERS, "median")
    name = data.get("name", "sweep")
    if not isinstance(name, str) or not name:
        raise SandboxError(f"name: expected a non-empty study name, got {name!r}")
    raw = data.get("space")
    if not isinstance(raw, dict) or not raw:
        raise SandboxError("space: missing or empty (e.g. [space] \"train.lr\" = "
                           "{ low = 1e-4, high = 1e-2, log = true })")
    space = tuple(parse_param(k, v) for k, v in raw.items())
    base = _base(data, folder)
    _check_fields(base, space)
    spec = SweepSpec(base=base, objective=objective, mode=mode, direction=direction,
                     sampler=sampler, pruner=pruner,
                     trials=_int(data, "trials", 20, 1, MAX_TRIALS),
                     seed=_int(data, "seed", 0, 0, 2**32 - 1), name=name, space=space)
    if sampler == "grid":
        size = math.prod(len(v) for v in spec.grid.values())
        if size > MAX_GRID:
            raise SandboxError(f"space: the grid holds {size:,} points (at most {MAX_GRID:,})")
    return spec


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and check SWEEP.toml."""
    p = checked_path(path, "sweep file")
    text = read_text_file(p, "sweep file")
    return parse_sweep(parse_toml(text, str(p)), p.parent)
