"""Calibration profiles: the efficiency constants the simulator uses.

A cluster names one with `profile = "path.toml"`; without one the simulator
uses `Profile()` (the documented defaults below). `sandbox calibrate` writes
measured profiles (`runtime.calibrate.profile`) and
`experiments/calibrate_vtrain_a100.py` writes the A100 one. Units: seconds,
FLOP, FLOP/s, bytes, bytes/s; efficiencies are fractions of the datasheet
peak (dense FLOP/s of the dtype, HBM bytes/s) or of a link's bandwidth.

TOML layout (every key optional; unknown tables such as `[measurements]`
are ignored):

```toml
name = "a100"
source = "how these numbers were obtained"
matmul_efficiency = 0.80        # large-GEMM fraction of dense peak
matmul_half_flops = 2.0e9       # GEMM FLOPs at which efficiency is half of that
fp8_matmul_efficiency = 0.0     # FP8 GEMMs (precision "fp8"): fraction of the FP8 peak (0: as bf16)
fp8_matmul_half_flops = 0.0     # FP8 GEMM FLOPs at half efficiency (0: 2 x matmul_half_flops)
attention_efficiency = 0.55     # batched attention GEMMs (QK^T, PV)
attention_half_flops = 1.0e9
attention_kernel_efficiency = 0.0  # flash kernels: fraction of their published curve (0: off)
memory_efficiency = 0.80        # memory-bound kernels: fraction of HBM bandwidth
kernel_overhead_s = 4.0e-6      # fixed cost of one kernel launch
host_op_overhead_s = 0.0        # host (CPU) dispatch per kernel; work takes max(GPU, host)
collective_efficiency = 0.80    # achieved bandwidth / link bandwidth
collective_step_latency_s = 5.0e-6  # software cost per algorithm step (ring hop)

[compute]                       # measured rates (replace the curves above)
device = "A100-SXM4-80GB"
peak_flops = 3.12e14
matmul = [[1e8, 2.0e13], [1e10, 2.3e14]]     # [GEMM FLOPs, achieved FLOP/s]
matmul_fp8 = [[1e8, 3.0e13], [1e10, 4.0e14]] # FP8 GEMMs (torch._scaled_mm), same keys
attention = [[1e8, 1.0e13], [1e10, 1.5e14]]  # [attention-core FLOPs, FLOP/s]
memory_bytes_per_s = 1.6e12
kernel_overhead_s = 5e-6
gemm_tile = [128, 128, 32]      # M, N, K the kernels pad to ([1, 1, 1]: no padding)
attention_fused = false         # true: the attention rate covers QK^T, softmax and PV

[[compute.block]]               # a measured whole layer (runtime.calibrate.layer), one rank
tp = 2
sequence_parallel = true
micro_batch = 4
seq_len = 256
hidden = 384
heads = 6
ffn_hidden = 1536
seconds = 0.15                  # forward + backward of the block, TP communication included
optimizer_s = 0.026             # one AdamW step over the block's parameters on this rank

[[collective]]                  # measured alpha-beta fits per op and group size
op = "all_reduce"               # all_reduce | all_gather | reduce_scatter | send_recv
group_size = 8
latency_s = 2.0e-5
busbw_bytes_per_s = 1.2e11      # time = latency_s + bus_factor * bytes / busbw
backend = "nccl"
```
A measured block makes a plan with exactly that layer (model dims,
micro-batch, tp and, with tp > 1, sequence parallelism) cost a block what was
measured: the simulator scales its kernel sum so that kernels plus its
modelled TP communication equal `seconds`, and replaces the modelled AdamW
time of the block's parameters by `optimizer_s` (`sim.compute`). This is
what per-kernel benchmarks miss: framework glue between kernels and, with
tensor parallelism, DTensor's dispatch, redistributions and optimizer.

Without a measured curve GEMM efficiency follows the saturating curve
`eff(f) = matmul_efficiency * f / (f + matmul_half_flops)`; a measured curve
is interpolated in log FLOPs (and scales linearly below its first point).
Both are keyed by the FLOPs of the GEMM padded to `gemm_tile`: the
tensor-core tile (128, 128, 32) on GPUs; a CPU BLAS pads nothing, and a CPU
calibration writes (1, 1, 1). `train.attention` picks the core: "flash" is one fused kernel looked
up at the FLOPs its forward executes (causal fraction of the square), charged 3.5x that per fwd+bwd
(a CPU calibration writes its SDPA points on that basis), or, with `attention_kernel_efficiency` >
0, by its kernel's published curve times that factor (`sim.flash_kernels`); "eager" is two batched
GEMMs keyed by their square FLOPs plus, unless `attention_fused` (a measured SDPA rate),
Megatron-LM's separate scale-mask-softmax and dropout over the s x s scores.
FP8 GEMMs (precision "fp8": the linear layers) use a measured `matmul_fp8`
against the FP8 peak, else `fp8_matmul_efficiency` (default: bf16's, no
citable FP8 fraction; calibration sets it) with half efficiency at
`fp8_matmul_half_flops` (default 2x bf16's: a GEMM's fixed ramp-up takes the
same seconds at r = FP8 / bf16 peak = 2x the rate); a measured bf16 curve is
stretched likewise: rate_fp8(f) = r * rate_bf16(f / r).
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from sandbox.errors import SandboxError
from sandbox.files import PLAN_FILE_LIMIT, read_text_file

Curve = tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class CollectivePoint:
    """One measured collective: alpha (s) and bus bandwidth (bytes/s)."""

    op: str
    group_size: int
    latency_s: float
    busbw_bytes_per_s: float
    backend: str = ""


@dataclass(frozen=True)
class BlockPoint:
    """One measured layer on one rank: fwd+bwd seconds and AdamW seconds."""

    tp: int
    sequence_parallel: bool
    micro_batch: int
    seq_len: int
    hidden: int
    heads: int
    ffn_hidden: int
    seconds: float
    optimizer_s: float


@dataclass(frozen=True)
class Profile:
    """Efficiency constants of one machine type (see the module docstring)."""

    name: str = "default"
    # Defaults: typical published A100/H100 behaviour (cuBLAS large GEMMs ~80% of
    # peak, STREAM-like kernels ~80% of HBM, NCCL ring ~80% of link bandwidth).
    source: str = "documented defaults (not calibrated)"
    matmul_efficiency: float = 0.80
    matmul_half_flops: float = 2.0e9
    fp8_matmul_efficiency: float = 0.0  # 0: matmul_efficiency (see the module docstring)
    fp8_matmul_half_flops: float = 0.0  # 0: 2 x matmul_half_flops
    attention_efficiency: float = 0.55
    attention_half_flops: float = 1.0e9
    attention_kernel_efficiency: float = 0.0  # of a flash kernel's curve (0: not used)
    memory_efficiency: float = 0.80
    kernel_overhead_s: float = 4.0e-6
    # CPU dispatch per kernel in eager mode (sim/host.py); 0 = the host never binds
    host_op_overhead_s: float = 0.0
    collective_efficiency: float = 0.80
    collective_step_latency_s: float = 5.0e-6
    # measured ([compute] table); empty / 0 = use the curves above
    device: str = ""
    peak_flops: float = 0.0
    matmul: Curve = ()  # (GEMM FLOPs, achieved FLOP/s)
    matmul_fp8: Curve = ()  # FP8 GEMMs: (GEMM FLOPs, achieved FLOP/s)
    attention: Curve = ()  # (attention FLOPs, achieved FLOP/s)
    memory_bytes_per_s: float = 0.0
    gemm_tile: tuple[int, int, int] = (128, 128, 32)  # M, N, K padding of GEMM kernels
    attention_fused: bool = False  # attention rate covers QK^T, softmax and PV
    block: tuple[BlockPoint, ...] = ()  # measured whole layers
    collective: tuple[CollectivePoint, ...] = ()

    def padded_gemm_flops(self, m: int, n: int, k: int, batch: int = 1) -> float:
        """FLOPs of `batch` (m x k) @ (k x n) GEMMs padded to `gemm_tile`."""
        return padded_gemm_flops(m, n, k, batch, self.gemm_tile)

    def matmul_seconds(self, flops: float, peak: float) -> float:
        """Seconds of one GEMM of `flops` FLOPs on a device of dense `peak` FLOP/s."""
        if self.matmul:
            return flops / _interp_log(self.matmul, flops)
        eff = self.matmul_efficiency * flops / (flops + self.matmul_half_flops)
        return flops / (peak * max(eff, 1e-9))

    def fp8_matmul_seconds(self, flops: float, peak_fp8: float, peak_bf16: float) -> float:
        """Seconds of one FP8 GEMM of `flops` FLOPs (peaks in FLOP/s; module doc)."""
        if self.matmul_fp8:
            return flops / _interp_log(self.matmul_fp8, flops)
        r = peak_fp8 / peak_bf16 if peak_bf16 > 0 else 1.0
        if self.matmul:
            return flops / (r * _interp_log(self.matmul, flops / r))
        e = self.fp8_matmul_efficiency or self.matmul_efficiency
        half = self.fp8_matmul_half_flops or r * self.matmul_half_flops
        return flops / (peak_fp8 * max(e * flops / (flops + half), 1e-9))

    def attention_seconds(self, flops: float, peak: float) -> float:
        """Seconds of one batched attention GEMM of `flops` FLOPs."""
        if self.attention:
            return flops / _interp_log(self.attention, flops)
        eff = self.attention_efficiency * flops / (flops + self.attention_half_flops)
        return flops / (peak * max(eff, 1e-9))

    def best_matmul_flops(self, peak: float) -> float:
        """The highest FLOP/s any GEMM or attention kernel reaches (a bound)."""
        if self.matmul or self.attention:
            return max(y for _, y in (*self.matmul, *self.matmul_fp8, *self.attention))
        return peak * max(self.matmul_efficiency, self.attention_efficiency)

    def memory_rate(self, hbm_bytes_per_s: float) -> float:
        """Achieved bytes/s of memory-bound kernels."""
        return self.memory_bytes_per_s or hbm_bytes_per_s * self.memory_efficiency

    def block_point(self, tp: int, sequence_parallel: bool, micro_batch: int, seq_len: int,
                    hidden: int, heads: int, ffn_hidden: int) -> BlockPoint | None:
        """The measured layer of exactly this shape, if any (sequence
        parallelism only matters with tp > 1)."""
        sp = sequence_parallel and tp > 1
        for b in self.block:
            if (b.tp, b.sequence_parallel and b.tp > 1, b.micro_batch, b.seq_len, b.hidden,
                    b.heads, b.ffn_hidden) == (tp, sp, micro_batch, seq_len, hidden, heads,
                                                ffn_hidden):
                return b
        return None

    def collective_point(self, op: str, group_size: int) -> CollectivePoint | None:
        """The measured fit for `op` on `group_size` ranks, if any."""
        for c in self.collective:
            if c.op == op and c.group_size == group_size:
                return c
        return None

    def replace(self, **changes: Any) -> Profile:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The TOML's structure (see the module docstring)."""
        d: dict[str, Any] = {k: getattr(self, k) for k in ("name", "source", *_FLOATS)}
        comp = {"device": self.device, "peak_flops": self.peak_flops,
                "matmul": [list(p) for p in self.matmul],
                "attention": [list(p) for p in self.attention],
                "memory_bytes_per_s": self.memory_bytes_per_s,
                "gemm_tile": list(self.gemm_tile), "attention_fused": self.attention_fused}
        if self.matmul_fp8:
            comp["matmul_fp8"] = [list(p) for p in self.matmul_fp8]
        if self.block:
            comp["block"] = [dataclasses.asdict(b) for b in self.block]
        if (self.matmul or self.matmul_fp8 or self.attention or self.memory_bytes_per_s
                or self.attention_fused or self.gemm_tile != Profile.gemm_tile or self.block):
            d["compute"] = comp
        if self.collective:
            d["collective"] = [dataclasses.asdict(c) for c in self.collective]
        return d


def bus_factor(op: str, p: int) -> float:
    """Bytes each rank sends on a ring, as a fraction of the buffer (the
    nccl-tests bus-bandwidth factor): 2(p-1)/p for all-reduce, (p-1)/p for
    all-gather and reduce-scatter (buffer: the gathered output / the
    input), 1 for send/recv. Collective time = latency + factor x bytes / busbw."""
    if op == "all_reduce":
        return 2.0 * (p - 1) / p
    if op in ("all_gather", "reduce_scatter"):
        return (p - 1) / p
    return 1.0


def padded_gemm_flops(m: int, n: int, k: int, batch: int = 1,
                      tile: tuple[int, int, int] = (128, 128, 32)) -> float:
    """2 * batch * m * n * k FLOPs with m, n, k rounded up to `tile` (M, N, K)."""
    def pad(x: int, t: int) -> int:
        return -(-int(x) // int(t)) * int(t)

    return 2.0 * batch * pad(m, tile[0]) * pad(n, tile[1]) * pad(k, tile[2])


def _interp_log(points: Curve, x: float) -> float:
    pts = sorted(points)
    if x <= pts[0][0]:
        return pts[0][1] * x / pts[0][0]
    if x >= pts[-1][0]:
        return pts[-1][1]
    for (x0, y0), (x1, y1) in zip(pts, pts[1:], strict=False):
        if x0 <= x <= x1:
            t = (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
            return y0 + t * (y1 - y0)
    return pts[-1][1]


_FLOATS = ("matmul_efficiency", "matmul_half_flops", "fp8_matmul_efficiency",
           "fp8_matmul_half_flops", "attention_efficiency", "attention_half_flops",
           "attention_kernel_efficiency", "memory_efficiency", "kernel_overhead_s",
           "host_op_overhead_s", "collective_efficiency", "collective_step_latency_s")


_KEYS = ("name", "source", *_FLOATS, "compute", "collective", "measurements")
_COMPUTE_KEYS = ("device", "peak_flops", "matmul", "matmul_fp8", "attention", "memory_bytes_per_s",
                 "gemm_tile", "attention_fused", "block", "kernel_overhead_s")


def _check_keys(d: Any, known: tuple[str, ...], where: str) -> None:
    """Refuse a table that is not one, or holds a key the loader would ignore."""
    from sandbox.errors import did_you_mean

    if not isinstance(d, dict):
        raise SandboxError(f"{where}: bad calibration profile (expected a table)")
    for k in d:
        if k not in known:
            raise SandboxError(f"{where}: bad calibration profile (unknown key '{k}'"
                               f"{did_you_mean(k, known)})")


def profile_from_dict(d: dict, where: str = "profile") -> Profile:
    """A Profile from the TOML's dict; SandboxError naming the problem."""
    kw: dict[str, Any] = {}
    _check_keys(d, _KEYS, where)
    _check_keys(d.get("compute", {}) or {}, _COMPUTE_KEYS, f"{where} [compute]")
    try:
        for k in ("name", "source"):
            if k in d:
                kw[k] = str(d[k])
        for k in _FLOATS:
            if k in d:
                kw[k] = float(d[k])
                if not 0 <= kw[k] < math.inf:
                    raise ValueError(f"{k} must be finite and >= 0, got {d[k]}")
        comp = d.get("compute", {}) or {}
        for k in ("peak_flops", "memory_bytes_per_s", "kernel_overhead_s"):
            if k in comp and not 0 <= float(comp[k]) < math.inf:
                raise ValueError(f"compute.{k} must be finite and >= 0, got {comp[k]}")
        if "device" in comp:
            kw["device"] = str(comp["device"])
        for k in ("peak_flops", "memory_bytes_per_s"):
            if comp.get(k):
                kw[k] = float(comp[k])
        if comp.get("kernel_overhead_s"):
            kw["kernel_overhead_s"] = float(comp["kernel_overhead_s"])
        if "gemm_tile" in comp:
            tile = tuple(int(x) for x in comp["gemm_tile"])
            if len(tile) != 3 or min(tile) < 1:
                raise ValueError("gemm_tile must be three integers >= 1 (M, N, K)")
            kw["gemm_tile"] = tile
        if "attention_fused" in comp:
            if not isinstance(comp["attention_fused"], bool):
                raise ValueError("attention_fused must be true or false")
            kw["attention_fused"] = comp["attention_fused"]
        if comp.get("block"):
            kw["block"] = tuple(
                BlockPoint(int(b["tp"]), bool(b["sequence_parallel"]), int(b["micro_batch"]),
                           int(b["seq_len"]), int(b["hidden"]), int(b["heads"]),
                           int(b["ffn_hidden"]), float(b["seconds"]), float(b["optimizer_s"]))
                for b in comp["block"])
        for k in ("matmul", "matmul_fp8", "attention"):
            if comp.get(k):
                kw[k] = tuple((float(a), float(b)) for a, b in comp[k])
        if d.get("collective"):
            kw["collective"] = tuple(
                CollectivePoint(str(c["op"]), int(c["group_size"]), float(c["latency_s"]),
                                float(c["busbw_bytes_per_s"]), str(c.get("backend", "")))
                for c in d["collective"])
    except (TypeError, ValueError, KeyError) as e:
        raise SandboxError(f"{where}: bad calibration profile ({e})") from None
    return Profile(**kw)


def load_profile(path: str | Path) -> Profile:
    """Read a profile TOML (keys in the module docstring)."""
    from sandbox.outputs import checked_path

    p = checked_path(path, "cluster.profile")
    text = read_text_file(p, "calibration profile", limit=16 * PLAN_FILE_LIMIT)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SandboxError(f"{p}: cannot read calibration profile ({e})") from None
    except RecursionError:
        raise SandboxError(f"{p}: calibration profile nested too deeply") from None
    return profile_from_dict(data, str(p))


_HEADER = "# Simulator calibration profile (sandbox/profile.py); units: s, FLOP/s, bytes/s.\n"


def dump_profile(profile: Profile, path: str | Path | None = None) -> str:
    """The profile as TOML text (tomli-w; loads back equal): the constants,
    then `[compute]` and the measured points; also written to `path` if given."""
    text = _HEADER + tomli_w.dumps(profile.to_dict())
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
    return text


_CACHE: dict[str, Profile] = {}


def profile_for(cluster: Any) -> Profile:
    """The cluster's profile (`cluster.profile`: absolute, or relative to the
    current directory or the repository root), or `Profile()`."""
    name = getattr(cluster, "profile", "")
    if not name:
        return Profile()
    from sandbox.outputs import checked_path

    path = checked_path(name, "cluster.profile")
    if not path.is_absolute():
        for root in (Path.cwd(), Path(__file__).resolve().parents[1]):
            if (root / path).exists():
                path = root / path
                break
    key = str(path)
    if key not in _CACHE:
        _CACHE[key] = load_profile(path)
    return _CACHE[key]
