"""A `Calibration` as the simulator's profile TOML, plus the raw measurements.

The profile part follows `sandbox.profile` (the simulator's format): one
`[compute]` table describes one rank, so on a CPU machine it is written for
one process count (by default the most processes measured, i.e. a plan that
fills the machine) with every `[[collective]]` fit. Every measurement also
goes into a `[measurements]` table that the profile loader ignores: the
kernels per process count (shape, FLOPs, bytes, median and quartiles of the
time, efficiency), the `[compute]` table of every process count, and per
backend and group size the collective points and their alpha-beta fits, so
that nothing measured is lost and two profiles can be compared point by point.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import tomli_w

from sandbox.counts import FLASH_BACKWARD_RATIO, causal_fraction
from sandbox.profile import padded_gemm_flops

HEADER = "# Calibration profile written by `sandbox calibrate`; units: s, bytes, FLOP/s, bytes/s.\n"


# ------------------------------------------------------------------ TOML out
def _plain(v: Any) -> Any:
    """`v` with every None replaced by "" (TOML has no null), tuples as lists."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return "" if v is None else v


def dumps_toml(data: dict) -> str:
    """Nested dicts -> TOML (`tomli_w`): dicts as tables, lists of dicts as
    arrays of tables, None as ""."""
    return tomli_w.dumps(_plain(data))


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


# The simulator looks GEMM rates up by the FLOPs of the shape padded to the
# profile's `gemm_tile` (sandbox.profile); the curves are keyed the same way,
# so that a measured shape's time comes back. GPU GEMM kernels pad to the
# tensor-core tile; a CPU BLAS does not pad.
GPU_TILE = (128, 128, 32)
CPU_TILE = (1, 1, 1)


def gemm_tile(device: str) -> tuple[int, int, int]:
    """The (M, N, K) padding of `device`'s GEMM kernels."""
    return CPU_TILE if device == "cpu" else GPU_TILE


def _curve(points: list[tuple[float, float]]) -> tuple[tuple[float, float], ...]:
    """Ascending (FLOPs, FLOP/s) with one point per FLOPs value (median rate)."""
    by: dict[float, list[float]] = {}
    for x, y in points:
        by.setdefault(float(x), []).append(float(y))
    return tuple((x, sorted(ys)[len(ys) // 2]) for x, ys in sorted(by.items()))


def compute_section(pk: Any, device: str, tile: tuple[int, int, int] = GPU_TILE) -> dict:
    """`[compute]` of `sandbox.profile` from the kernels one rank ran.

    - matmul: per linear shape (tokens, k, n), the forward + backward (three
      GEMMs of 2 tokens k n FLOPs: what training runs) as one point at the
      padded FLOPs of one GEMM, rate = padded FLOPs / (time / 3); equal keys
      take the median rate.
    - attention: `Attention.core` is causal SDPA, the fused kernel the
      simulator prices for `attention = "flash"` (`sim.compute.flash_times`):
      per measured shape one point at the FLOPs its forward executes (the
      causal fraction of the padded QK^T + PV square, `sandbox.counts`), rate
      = (1 + 2.5) x those FLOPs / the measured fwd+bwd time, so the simulator
      gives the measured time back (`attention_fused = true`: the rate covers
      softmax; an eager plan prices its two GEMMs at these rates too).
    - memory_bytes_per_s: total bytes / total time of the memory-bound ops
      (norm, GELU, add, softmax, cross-entropy) over the measured shapes.
    - kernel_overhead_s: the fastest median of the elementwise adds (almost
      no work: dispatch plus launch).
    - block: per measured layer (`runtime.calibrate.layer`: model dims, micro-batch,
      tp, sequence parallelism), the median seconds of its forward + backward
      and of its AdamW step.
    """
    gemm = []
    for k in pk.kernels:
        if k.kind == "gemm" and k.pass_ == "fwd+bwd":
            f = padded_gemm_flops(k.shape[0], k.shape[2], k.shape[1], 1, tile)
            gemm.append((f, f / (k.time.median / 3)))
    attn = []
    for k in pk.kernels:
        if k.kind == "attention" and k.pass_ == "fwd+bwd":
            b, heads, sq, hd = k.shape
            square = (padded_gemm_flops(sq, sq, hd, b * heads, tile)
                      + padded_gemm_flops(sq, hd, sq, b * heads, tile))
            f = causal_fraction(sq) * square
            attn.append((f, (1 + FLASH_BACKWARD_RATIO) * f / k.time.median))
    mem = [k for k in pk.kernels if k.kind == "memory"]
    adds = [k.time.median for k in mem if k.name == "add"]
    blocks: dict[tuple, dict] = {}
    for k in pk.kernels:
        if k.kind == "block" and len(k.shape) == 7:
            b, s, h, heads, ffn, tp, sp = k.shape
            d = blocks.setdefault(tuple(k.shape), {
                "tp": tp, "sequence_parallel": bool(sp), "micro_batch": b, "seq_len": s,
                "hidden": h, "heads": heads, "ffn_hidden": ffn})
            d["seconds" if k.pass_ == "fwd+bwd" else "optimizer_s"] = k.time.median
    return {"device": device, "peak_flops": pk.peak_flops,
            "matmul": [list(x) for x in _curve(gemm)],
            "attention": [list(x) for x in _curve(attn)],
            "memory_bytes_per_s": sum(k.bytes for k in mem) / sum(k.time.median for k in mem),
            "kernel_overhead_s": min(adds) if adds else 0.0,
            "gemm_tile": list(tile), "attention_fused": True,
            "block": [d for d in blocks.values() if "seconds" in d and "optimizer_s" in d]}


def rank_kernels(cal: Any, processes: int | None = None) -> Any:
    """The kernel set for `processes` ranks (default: the most measured ranks,
    i.e. one rank of a plan that fills the machine), in the first dtype."""
    if processes is None:
        processes = max(pk.processes for pk in cal.kernels)
    for pk in cal.kernels:
        if pk.processes == processes:
            return pk
    raise ValueError(f"no kernels measured for {processes} process(es); measured: "
                     f"{sorted({pk.processes for pk in cal.kernels})}")


def _device_label(cal: Any, pk: Any) -> str:
    if cal.device == "cuda":
        return f"{cal.machine.get('gpu', 'cuda')} ({pk.kernels[0].dtype if pk.kernels else ''})"
    return f"cpu (gloo) x{pk.processes}, {pk.threads} thread(s) per process"


def profile_dict(cal: Any, processes: int | None = None) -> dict:
    """The `sandbox.profile` TOML structure for one rank of `processes` ranks:
    name, source, the measured `[compute]` and every `[[collective]]` fit."""
    pk = rank_kernels(cal, processes)
    m = cal.machine
    colls = [{"op": op, "group_size": c.group_size, "latency_s": c.fit(op).latency_s,
              "busbw_bytes_per_s": c.fit(op).busbw_bytes_per_s, "backend": c.backend}
             for c in cal.collectives for op in sorted({q.op for q in c.points})]
    return {"name": f"{cal.device}-{m.get('host', '')}-p{pk.processes}",
            "source": (f"sandbox calibrate --device {cal.device} on {m.get('host')} "
                       f"({m.get('gpu') or m.get('cpu')}, {m.get('cores')} cores, torch "
                       f"{m.get('torch')}) at {m.get('date_utc')}, load average "
                       f"{m.get('loadavg_1m')}, other jobs' CPU use "
                       f"{m.get('foreign_cores')} cores; one rank of {pk.processes} with "
                       f"{pk.threads} thread(s); medians of repeats, {cal.wall_s:.0f} s"),
            "compute": compute_section(pk, _device_label(cal, pk), gemm_tile(cal.device)),
            "collective": colls}


def to_profile(cal: Any, processes: int | None = None) -> Any:
    """`sandbox.profile.Profile` for one rank of `processes` ranks."""
    from sandbox.profile import profile_from_dict

    return profile_from_dict(profile_dict(cal, processes), "calibration")


def write_profile(cal: Any, path: Path, processes: int | None = None) -> Path:
    """Write the profile (`sandbox.profile.dump_profile`) for one rank of
    `processes` ranks, then `[measurements]`: the raw points and, under
    `[measurements.compute_by_processes.N]`, the `[compute]` table for every
    measured process count N (the loader ignores both)."""
    from sandbox.profile import dump_profile

    body = dump_profile(to_profile(cal, processes))
    extra = measurements(cal)
    extra["compute_by_processes"] = {
        str(pk.processes): compute_section(pk, _device_label(cal, pk), gemm_tile(cal.device))
        for pk in cal.kernels}
    body += "\n" + dumps_toml({"measurements": extra})
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
