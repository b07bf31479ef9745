"""A `Calibration` as the simulator's profile TOML, plus the raw measurements.

The profile part follows `sandbox.profile` (the simulator's format). Every
measurement also goes into a `[measurements]` table that the profile loader
ignores: per process count the kernels (shape, FLOPs, bytes, median and
quartiles of the time, efficiency), and per backend and group size the
collective points and their alpha-beta fits, so that nothing measured is lost
and two profiles can be compared point by point.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

HEADER = "# Calibration profile written by `sandbox calibrate`; units: s, bytes, FLOP/s, bytes/s.\n"


# ------------------------------------------------------------------ TOML out
def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + "}"
    if v is None:
        return '""'
    s = str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{s}"'


def _key(k: str) -> str:
    k = str(k)
    return k if k.replace("_", "").replace("-", "").isalnum() else _value(k)


def dumps_toml(data: dict, prefix: str = "") -> str:
    """Nested dicts -> TOML: scalars and lists inline, dicts as tables, lists of
    dicts as arrays of tables."""
    lines: list[str] = []
    tables, arrays = [], []
    for k, v in data.items():
        if isinstance(v, dict):
            tables.append((k, v))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            arrays.append((k, v))
        else:
            lines.append(f"{_key(k)} = {_value(v)}")
    text = "\n".join(lines) + ("\n" if lines else "")
    for k, v in tables:
        name = f"{prefix}{_key(k)}"
        text += f"\n[{name}]\n" + dumps_toml(v, name + ".")
    for k, v in arrays:
        name = f"{prefix}{_key(k)}"
        for item in v:
            text += f"\n[[{name}]]\n" + dumps_toml(item, name + ".")
    return text


# ---------------------------------------------------------------- the profile
def measurements(cal: Any) -> dict:
    """The raw measurements as plain TOML-able dicts (see module docstring)."""
    kernels = []
    for pk in cal.kernels:
        for k in pk.kernels:
            kernels.append({
                "processes": pk.processes, "threads": pk.threads, "kind": k.kind,
                "name": k.name, "dtype": k.dtype, "pass": k.pass_, "shape": list(k.shape),
                "flops": k.flops, "bytes": k.bytes, "time_s": k.time.median,
                "time_q1_s": k.time.q1, "time_q3_s": k.time.q3, "time_min_s": k.time.min,
                "time_max_s": k.time.max, "repeats": k.time.n,
                "efficiency": pk.efficiency(k), "rate": k.rate})
    colls = []
    for c in cal.collectives:
        for op in sorted({q.op for q in c.points}):
            pts = sorted((q for q in c.points if q.op == op), key=lambda q: q.bytes)
            fit = c.fit(op)
            colls.append({
                "backend": c.backend, "group_size": c.group_size, "op": op,
                "latency_s": fit.latency_s, "busbw_bytes_per_s": fit.busbw_bytes_per_s,
                "bytes": [q.bytes for q in pts], "time_s": [q.time.median for q in pts],
                "time_q1_s": [q.time.q1 for q in pts], "time_q3_s": [q.time.q3 for q in pts],
                "time_min_s": [q.time.min for q in pts],
                "time_max_s": [q.time.max for q in pts]})
    return {"machine": {k: v for k, v in cal.machine.items() if v is not None},
            "device": cal.device, "wall_s": cal.wall_s,
            "peak_flops": {str(pk.processes): pk.peak_flops for pk in cal.kernels},
            "kernel": kernels, "collective": colls}


def to_profile(cal: Any) -> dict:
    """The simulator-facing part of the profile, as a dict (provisional until
    `sandbox.profile` defines the format)."""
    return {}


def write_profile(cal: Any, path: Path) -> Path:
    """Write `to_profile(cal)` and `[measurements]` as one TOML file."""
    body = dumps_toml(to_profile(cal))
    body += "\n" + dumps_toml({"measurements": measurements(cal)})
    path.write_text(HEADER + body)
    return path


# ------------------------------------------------------------ reproducibility
def _points(meas: dict) -> dict[tuple, tuple[float, float, float]]:
    """(key) -> (median, q1, q3) seconds for every kernel and collective point."""
    out = {}
    for k in meas.get("kernel", []):
        key = ("kernel", k["processes"], k["kind"], k["name"], k["dtype"], k["pass"],
               tuple(k["shape"]))
        out[key] = (k["time_s"], k["time_q1_s"], k["time_q3_s"])
    for c in meas.get("collective", []):
        for i, b in enumerate(c["bytes"]):
            key = ("collective", c["backend"], c["group_size"], c["op"], b)
            out[key] = (c["time_s"][i], c["time_q1_s"][i], c["time_q3_s"][i])
    return out


def agreement(a: dict, b: dict, tolerance: float = 0.5) -> dict:
    """How well two calibrations' `[measurements]` agree, point by point.

    Two medians agree when they differ by at most the sum of the two
    inter-quartile ranges plus `tolerance` times the larger median. Returns
    the number of common points, the fraction that agree, and the median and
    90th percentile of |log(median_b / median_a)| (0.1 ~ 10% apart).
    """
    pa, pb = _points(a), _points(b)
    common = sorted(set(pa) & set(pb))
    agree, logs = 0, []
    for key in common:
        (ma, qa1, qa3), (mb_, qb1, qb3) = pa[key], pb[key]
        agree += abs(ma - mb_) <= (qa3 - qa1) + (qb3 - qb1) + tolerance * max(ma, mb_)
        logs.append(abs(math.log(mb_ / ma)) if ma > 0 and mb_ > 0 else float("inf"))
    logs.sort()
    n = len(common)
    return {"points": n, "agree_fraction": agree / n if n else 0.0, "tolerance": tolerance,
            "median_abs_log_ratio": logs[n // 2] if n else None,
            "p90_abs_log_ratio": logs[min(n - 1, int(0.9 * n))] if n else None}


def median_spread(meas: dict) -> float:
    """Median over all points of the inter-quartile range / median."""
    rel = sorted((q3 - q1) / m for m, q1, q3 in _points(meas).values() if m > 0)
    return rel[len(rel) // 2] if rel else 0.0
