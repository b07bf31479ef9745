"""Plans from TOML files, TOML text, dicts or Plans: `load`, the one entry point.

The building itself (presets, overrides, defaults, checks, validation) is
`sandbox.specs.plan_from_dict`; this module reads the file or text first and
turns unreadable or malformed input into one line naming it.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sandbox.errors import PlanError, SandboxError, did_you_mean
from sandbox.files import read_text_file
from sandbox.outputs import checked_path
from sandbox.overrides import apply_overrides
from sandbox.specs import Plan, plan_from_dict, replace_plan
from sandbox.validate import validate

__all__ = ["did_you_mean", "load", "plan_from_dict", "replace_plan"]


def load(source: Any, overrides: Sequence[str] = ()) -> Plan:
    """A plan from a TOML path, a TOML string, a dict or a Plan (validated).

    overrides: `--set` items ("parallel.tp=4", `sandbox.overrides`) applied to
    the TOML dict before the plan is built; they beat the file and its presets."""
    if isinstance(source, Plan) and not overrides:
        validate(source)
        return source
    if isinstance(source, Plan):
        source = source.to_dict()
    if isinstance(source, dict):
        return _build(source, overrides)
    if isinstance(source, (str, Path)):
        text_source = isinstance(source, str) and ("\n" in source or "[" in source)
        if text_source:
            return _build(parse_toml(source, "plan"), overrides)
        try:
            checked_path(source, "plan file")
            text = read_text_file(source, "plan file")
        except SandboxError as e:
            raise PlanError(str(e)) from None
        return _build(parse_toml(text, str(source)), overrides)
    raise PlanError(f"plan: cannot load a {type(source).__name__}")


def _build(data: dict, overrides: Sequence[str]) -> Plan:
    if overrides:
        data = apply_overrides(data, overrides)
    return plan_from_dict(data)


def parse_toml(text: str, where: str) -> dict:
    """TOML text -> dict; malformed or too deeply nested TOML is one line naming `where`."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PlanError(f"{where}: malformed TOML: {e}") from None
    except RecursionError:
        raise PlanError(f"{where}: TOML nested too deeply (arrays or tables inside "
                        "each other hundreds of levels deep)") from None
