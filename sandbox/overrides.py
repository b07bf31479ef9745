"""`--set section.key=value`: one field of a plan changed from the command
line, applied to the plan's TOML dict before the plan is built.

    parallel.micro_batch=4      model.preset=llama3-8b      train.attention_kernel=fa3
    cluster.gpu.hbm_gb=40       parallel.stage_layers=[9,8,8,7]   train.lr=1.5e-4

The value is read as a TOML value (`42`, `true`, `1.5e-4`, `"fa3"`, `[1, 2]`);
anything TOML cannot read (a bare word such as `fa3` or `interleaved-1f1b`)
is the string itself. An override beats the file's field and the section's
preset (`sandbox.specs` merges a section's fields over its preset); one on a
section the plan leaves out changes that section's default (gpt-mini,
localhost). The plan's own checks then name any bad value. A malformed
override (no `=`, no section, an unknown section or key) is one line naming
`--set`.
"""

from __future__ import annotations

import copy
import dataclasses
import tomllib
from collections.abc import Iterable
from typing import Any

from sandbox.errors import SandboxError, did_you_mean
from sandbox.sections import GPU, Cluster, Model, Parallel, Train
from sandbox.specs import DEFAULT_CLUSTER, DEFAULT_MODEL

FLAG = "--set"
# a plan without [model] / [cluster] means these presets: an override keeps them
_DEFAULT_PRESET = {"model": DEFAULT_MODEL, "cluster": DEFAULT_CLUSTER}
_SECTIONS = {"model": Model, "cluster": Cluster, "parallel": Parallel, "train": Train}


def _keys(cls: type) -> tuple[str, ...]:
    return ("preset", *(f.name for f in dataclasses.fields(cls)))


def _section_of(key: str) -> str:
    """The section holding a bare field name ("" if none): for the error's hint."""
    return next((s for s, cls in _SECTIONS.items() if key in _keys(cls)[1:]), "")


def parse_value(text: str) -> Any:
    """A TOML value (`42`, `true`, `1.5e-4`, `"fa3"`, `[1, 2]`), else the text itself."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except (tomllib.TOMLDecodeError, RecursionError):
        return text


def parse_override(item: str) -> tuple[tuple[str, ...], Any]:
    """"parallel.tp=4" -> (("parallel", "tp"), 4); SandboxError naming `--set`."""
    key, sep, value = item.partition("=")
    key, value = key.strip(), value.strip()
    if not sep or not key:
        raise SandboxError(f"{FLAG} {item!r}: expected SECTION.KEY=VALUE, e.g. "
                           "parallel.micro_batch=4")
    if not value:
        raise SandboxError(f"{FLAG} {item}: no value after '='")
    path = tuple(p.strip() for p in key.split("."))
    if len(path) == 1:
        where = _section_of(path[0])
        hint = f"; write {where}.{item}" if where else f"{did_you_mean(path[0], _SECTIONS)}"
        raise SandboxError(f"{FLAG} {item}: no section (SECTION.KEY=VALUE){hint}")
    section = path[0]
    if section not in _SECTIONS:
        raise SandboxError(f"{FLAG} {item}: unknown section '{section}'"
                           f"{did_you_mean(section, _SECTIONS)}; sections are "
                           f"{', '.join(_SECTIONS)}")
    cls, where = _SECTIONS[section], section
    if section == "cluster" and path[1] == "gpu" and len(path) == 3:
        cls, where = GPU, "cluster.gpu"
    elif len(path) > 2:
        raise SandboxError(f"{FLAG} {item}: too many dots; keys are SECTION.KEY "
                           "(or cluster.gpu.KEY)")
    name = path[-1]
    if name not in _keys(cls):
        raise SandboxError(f"{FLAG} {item}: unknown key '{name}' in [{where}]"
                           f"{did_you_mean(name, _keys(cls))}")
    return path, parse_value(value)


def check_overrides(items: Iterable[str]) -> None:
    """Refuse the first malformed override (one line naming `--set`)."""
    for item in items:
        parse_override(item)


def apply_overrides(data: dict, items: Iterable[str]) -> dict:
    """A deep copy of the plan's TOML dict with every override set, in order."""
    out = copy.deepcopy(data)
    for item in items:
        path, value = parse_override(item)
        section = out.setdefault(path[0], {})
        if not isinstance(section, dict):
            raise SandboxError(f"{FLAG} {item}: [{path[0]}] of the plan is not a table")
        if not section and path[0] in _DEFAULT_PRESET and path[1] != "preset":
            section["preset"] = _DEFAULT_PRESET[path[0]]  # the section the plan defaults to
        if len(path) == 3:  # cluster.gpu.KEY: a GPU named by preset becomes a table
            gpu = section.get("gpu", {})
            gpu = {"preset": gpu} if isinstance(gpu, str) else gpu
            if not isinstance(gpu, dict):
                raise SandboxError(f"{FLAG} {item}: cluster.gpu of the plan is not a table")
            section["gpu"] = gpu
            section = gpu
        section[path[-1]] = value
    return out
