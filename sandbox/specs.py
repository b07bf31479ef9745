"""A plan: one experiment (model x cluster x parallel strategy x training),
built from nested dicts, edited, and written back as TOML.

`Plan` is a frozen dataclass holding one of each section (`sandbox.sections`:
`Model`, `GPU`, `Cluster`, `Parallel`, `Train`, re-exported here).
`plan_from_dict` builds one: each section may name a `preset`, override single
fields, or give every field; missing sections take the defaults below; names
and types are checked and the plan is validated (`sandbox.validate`), every
problem one line naming the field. `Plan.replace` edits through the same path,
`Plan.to_toml` writes every field explicitly (tomli-w). Reading plan files and
TOML text is `sandbox.planfile.load`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import tomli_w

from sandbox import presets
from sandbox.errors import PlanError, did_you_mean
from sandbox.report_html import plan_html
from sandbox.sections import GPU, Cluster, Model, Parallel, Train
from sandbox.validate import validate

__all__ = ["GPU", "Cluster", "Model", "Parallel", "Plan", "Train", "plan_from_dict",
           "replace_plan"]

DEFAULT_MODEL = "gpt-mini"
DEFAULT_CLUSTER = "localhost"
SECTIONS = ("model", "cluster", "parallel", "train")
_SPEC = {"model": Model, "cluster": Cluster, "parallel": Parallel, "train": Train,
         "gpu": GPU}


@dataclass(frozen=True)
class Plan:
    """One experiment: model x cluster x parallel strategy x training."""

    model: Model
    cluster: Cluster
    parallel: Parallel = field(default_factory=Parallel)
    train: Train = field(default_factory=Train)

    @property
    def world_size(self) -> int:
        return self.cluster.world_size

    @property
    def tokens_per_step(self) -> int:
        return self.parallel.global_batch * self.model.seq_len

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict; `sandbox.load(plan.to_dict())` gives the plan back."""
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        """The whole plan with every field explicit, a table per section (and
        `[cluster.gpu]`); `sandbox.load` reads it back to an equal plan."""
        return tomli_w.dumps(self.to_dict())

    def replace(self, **changes: Any) -> Plan:
        """A validated copy with some fields changed.

        Keys are field names of any section (`tp=4`, `layers=8`, `nodes=2`),
        or dotted (`**{"cluster.gpu.hbm_gb": 40}`); `model="llama3-8b"` or
        `cluster="dgx-h100"` swaps a preset. Changing tp, pp, cp or the cluster's
        size re-derives dp unless dp is given.
        """
        return replace_plan(self, changes)

    def _repr_html_(self) -> str:
        return plan_html(self)


# ------------------------------------------------------------------ building
def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _check_type(where: str, value: Any, kind: Any, problems: list[str]) -> Any:
    """Coerce `value` to the field's type or record a problem; returns the value."""
    kind = kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
    if kind == "bool":
        if isinstance(value, bool):
            return value
        problems.append(f"{where}: expected true or false, got {value!r}")
    elif kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        problems.append(f"{where}: expected an integer, got {value!r}")
    elif kind == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        problems.append(f"{where}: expected a number, got {value!r}")
    elif kind == "str":
        if isinstance(value, str):
            return value
        problems.append(f"{where}: expected a string, got {value!r}")
    elif kind.startswith("tuple["):  # tuple[int, ...] / tuple[str, ...]: a TOML array
        inner = kind[len("tuple["):].split(",")[0].strip()
        if isinstance(value, (list, tuple)):
            bad: list[str] = []
            items = tuple(_check_type(f"{where}[{i}]", v, inner, bad)
                          for i, v in enumerate(value))
            if not bad:
                return items
        problems.append(f"{where}: expected a list of {_KIND_WORDS.get(inner, inner)}, "
                        f"got {value!r}")
    else:
        return value
    return None


_KIND_WORDS = {"int": "integers", "str": "strings", "float": "numbers"}


def _build(section: str, cls: type, given: dict, base: dict, problems: list[str]) -> dict:
    """Merge `given` over `base`, checking names and types. Returns field values."""
    fields = _fields(cls)
    values = dict(base)
    for key, value in given.items():
        if key == "preset":
            continue
        if key not in fields:
            problems.append(f"{section}.{key}: unknown key{did_you_mean(key, fields)}")
            continue
        if key == "gpu" and cls is Cluster:
            continue  # handled by the caller
        checked = _check_type(f"{section}.{key}", value, fields[key].type, problems)
        if checked is not None:
            values[key] = checked
    return values


def _preset(section: str, given: dict, table: dict, problems: list[str]) -> tuple[str, dict]:
    name = given.get("preset")
    if name is None:
        return "", {}
    if not isinstance(name, str):
        problems.append(f"{section}.preset: expected a string, got {name!r}")
        return "", {}
    if name not in table:
        problems.append(f"{section}.preset: unknown preset '{name}'{did_you_mean(name, table)}"
                        f"; known: {', '.join(table)}")
        return "", {}
    return name, dict(table[name])


def _missing(section: str, cls: type, values: dict, problems: list[str]) -> bool:
    need = [f.name for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            and f.name not in values and f.name != "gpu"]
    for name in need:
        problems.append(f"{section}.{name}: missing (give it, or name a preset)")
    return bool(need)


def _model(given: dict, problems: list[str]) -> Model | None:
    if not given:
        given = {"preset": DEFAULT_MODEL}
    before = len(problems)
    name, base = _preset("model", given, presets.MODELS, problems)
    values = _build("model", Model, given, base, problems)
    if len(problems) > before and given.get("preset") and not name:
        return None  # unknown preset: the missing fields would only add noise
    values.setdefault("name", name or "custom")
    if _missing("model", Model, values, problems):
        return None
    if not values.get("kv_heads"):
        values["kv_heads"] = values["heads"]
    if not values.get("ffn_hidden") and isinstance(values.get("hidden"), int):
        h = values["hidden"]
        if values.get("activation") == "swiglu":  # Llama: 2/3 of 4h, rounded up to 256
            values["ffn_hidden"] = 256 * ((int(8 * h / 3) + 255) // 256)
        else:
            values["ffn_hidden"] = 4 * h
    return Model(**values)


def _gpu(given: Any, problems: list[str]) -> GPU | None:
    if isinstance(given, GPU):
        return given
    if isinstance(given, str):
        given = {"preset": given}
    if not isinstance(given, dict):
        problems.append(f"cluster.gpu: expected a GPU preset name or a table, got {given!r}")
        return None
    if "preset" in given:
        name, base = _preset("cluster.gpu", given, presets.GPUS, problems)
        if not name:
            return None
    else:
        name, base = given.get("name", "custom"), {}
    values = _build("cluster.gpu", GPU, given, base, problems)
    values.setdefault("name", name or "custom")
    if _missing("cluster.gpu", GPU, values, problems):
        return None
    return GPU(**values)


def _cluster(given: dict, processes: int, problems: list[str]) -> Cluster | None:
    if not given:
        given = {"preset": DEFAULT_CLUSTER}
    if given.get("preset") == "localhost":
        n = given.get("gpus_per_node") if isinstance(given.get("gpus_per_node"), int) else None
        name, base = "localhost", presets.localhost_cluster(n or processes)
    else:
        name, base = _preset("cluster", given, {**presets.CLUSTERS, "localhost": {}}, problems)
        if given.get("preset") and not name:
            return None
    values = _build("cluster", Cluster, given, base, problems)
    values.setdefault("name", name or "custom")
    gpu_given = given.get("gpu", base.get("gpu"))
    if isinstance(gpu_given, dict) and "gpu" in given and "preset" not in gpu_given:
        if isinstance(base.get("gpu"), dict):  # override fields of the preset's GPU
            gpu_given = {**base["gpu"], **gpu_given}
        elif isinstance(base.get("gpu"), str):
            gpu_given = {"preset": base["gpu"], **gpu_given}
    if gpu_given is None:
        problems.append("cluster.gpu: missing (give a GPU preset name or a [cluster.gpu] table)")
        return None
    gpu = _gpu(gpu_given, problems)
    if gpu is None:
        return None
    values["gpu"] = gpu
    return Cluster(**values)


def plan_from_dict(data: dict) -> Plan:
    """Build and validate a plan from nested dicts (the TOML's structure)."""
    problems: list[str] = []
    if not isinstance(data, dict):
        raise PlanError(f"plan: expected a table of sections, got {type(data).__name__}")
    for key in data:
        if key not in SECTIONS:
            problems.append(f"{key}: unknown section{did_you_mean(key, SECTIONS)}; "
                            f"sections are {', '.join(SECTIONS)}")
    sections = {}
    for s in SECTIONS:
        v = data.get(s, {})
        if not isinstance(v, dict):
            problems.append(f"{s}: expected a table, got {v!r}")
            v = {}
        sections[s] = dict(v)
    parallel = _build("parallel", Parallel, sections["parallel"], {}, problems)
    train = _build("train", Train, sections["train"], {}, problems)
    tp, pp = parallel.get("tp", 1), parallel.get("pp", 1)
    rest = tp * pp * parallel.get("cp", 1)  # the mesh's non-dp dimensions
    # localhost grows to as many processes as the plan needs unless sized explicitly.
    processes = parallel.get("dp", 1) * rest
    model = _model(sections["model"], problems)
    cluster = _cluster(sections["cluster"], processes, problems)
    if cluster is not None and "dp" not in parallel and rest > 0:
        if cluster.world_size % rest == 0:
            parallel["dp"] = cluster.world_size // rest
    if cluster is not None and cluster.gpu.name == "cpu" and "precision" not in train:
        train["precision"] = "fp32"  # CPU processes train in fp32
    if problems or model is None or cluster is None:
        raise PlanError(problems or ["plan: incomplete"])
    plan = Plan(model=model, cluster=cluster, parallel=Parallel(**parallel), train=Train(**train))
    validate(plan)
    return plan


# ------------------------------------------------------------------ editing
_SECTION_OF: dict[str, str] = {}
for _s in ("parallel", "train", "cluster", "model"):
    for _f in dataclasses.fields(_SPEC[_s]):
        _SECTION_OF.setdefault(_f.name, _s)  # 'name' resolves to parallel/train first: none


def replace_plan(plan: Plan, changes: dict[str, Any]) -> Plan:
    """See `Plan.replace`."""
    d = plan.to_dict()
    for key, value in changes.items():
        if key in ("model", "cluster") and isinstance(value, str):
            d[key] = {"preset": value}
            continue
        if key in SECTIONS and isinstance(value, dict):
            d[key] = {**d[key], **value}
            continue
        path = key.split(".")
        if len(path) == 1:
            if key not in _SECTION_OF:
                raise PlanError(f"{key}: unknown field{did_you_mean(key, _SECTION_OF)}")
            path = [_SECTION_OF[key], key]
        target = d
        for p in path[:-1]:
            if not isinstance(target.get(p), dict):
                raise PlanError(f"{key}: unknown field")
            target = target[p]
        target[path[-1]] = value
    keys = {k.split(".")[-1] for k in changes}
    local = d["cluster"].get("name") == "localhost"
    if local and "gpus_per_node" in keys:
        d["cluster"] = {"preset": "localhost", "gpus_per_node": d["cluster"]["gpus_per_node"]}
    elif local and keys & {"dp", "tp", "pp", "cp"} and "nodes" not in keys:
        d["cluster"] = {"preset": "localhost"}  # one process per dp*cp*tp*pp rank
    elif not local and keys & {"tp", "pp", "cp", "nodes", "gpus_per_node"} and "dp" not in keys:
        d["parallel"].pop("dp", None)  # re-derived from the world size
    return plan_from_dict(d)
