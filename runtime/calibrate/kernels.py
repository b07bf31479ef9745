"""Kernel micro-benchmarks with the runtime's own modules, on CPU or one GPU.

Every measurement is repeated; `Stat` keeps the median and the spread
(quartiles, min, max) of the per-call time in seconds. Rates derived from a
time use the median: FLOP/s for matmuls and attention (FLOPs counted as
`sandbox.counts` counts them: 2 per multiply-add, attention over the full
s x s square), bytes/s for memory-bound ops (bytes read + written once).

The kernels are the ones `runtime.model` runs: `nn.Linear` layers of a
`Block` (the model's GEMM shapes `(tokens x hidden) @ (hidden x out)`),
`Attention.core` (`F.scaled_dot_product_attention`, causal), the model's norm
(`make_norm`), tanh-GELU, residual add, softmax and the fp32 cross-entropy of
the logits, a large copy for DRAM/HBM bandwidth and AdamW over a flat buffer.
A whole layer (kernels plus framework overhead, plain or tensor-parallel) is
`runtime.calibrate.layer`.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from runtime.model import Attention, make_norm
from sandbox.specs import Model

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# --------------------------------------------------------------------- timing
@dataclass(frozen=True)
class Stat:
    """Distribution of one measurement over repeats, seconds per call."""

    median: float
    q1: float
    q3: float
    min: float
    max: float
    n: int

    @property
    def iqr_rel(self) -> float:
        """Inter-quartile range relative to the median (0.1 = 10% spread)."""
        return (self.q3 - self.q1) / self.median if self.median > 0 else 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(samples: Iterable[float]) -> Stat:
    """Median, quartiles and extremes of `samples` (at least one)."""
    xs = sorted(float(x) for x in samples)
    if not xs:
        raise ValueError("summarize: no samples")
    if len(xs) >= 4:
        q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    else:
        q1, q3 = xs[0], xs[-1]
    return Stat(statistics.median(xs), q1, q3, xs[0], xs[-1], len(xs))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _machine_busy_s() -> float | None:
    """Busy CPU seconds of the whole machine since boot (/proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
    return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class ForeignLoad:
    """Cores kept busy by other processes while a `with` block runs:
    (machine busy CPU seconds - those of this process and its waited-for
    children) / wall seconds. 0.0 on a quiet machine, 1.0 when another job
    kept one core busy throughout; None where /proc/stat is unreadable.
    Run the measured work in this process or in children it waits for."""

    cores: float | None = None

    def start(self) -> ForeignLoad:
        self._t0, self._busy0, self._own0 = time.perf_counter(), _machine_busy_s(), _own_cpu_s()
        return self

    def stop(self) -> float | None:
        """Stop measuring; the foreign cores (also in `.cores`)."""
        wall = time.perf_counter() - self._t0
        busy = _machine_busy_s()
        if busy is not None and self._busy0 is not None and wall > 0:
            foreign = (busy - self._busy0) - (_own_cpu_s() - self._own0)
            self.cores = max(0.0, foreign / wall)
        return self.cores

    def __enter__(self) -> ForeignLoad:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


MAX_POINT_S = 0.6  # stop repeating a point after this long (at least 3 repeats)

# Lockstep with other processes (runtime.calibrate.concurrent): (barrier, max over
# processes); None = this process alone.
_LOCKSTEP: tuple[Callable[[], object], Callable[[float], float]] | None = None


def set_lockstep(barrier: Callable[[], object] | None,
                 agree_max: Callable[[float], float] | None = None) -> None:
    """Time every sample of `time_fn` in lockstep with other processes doing the
    same: `barrier()` before each timed sample and `agree_max(x)` (the largest
    x over the processes) so that all take the same number of calls per sample
    and of samples, and every sample runs while all of them run. `None` ends it."""
    global _LOCKSTEP
    _LOCKSTEP = None if barrier is None or agree_max is None else (barrier, agree_max)


def time_fn(fn: Callable[[], object], device: torch.device, repeats: int = 7,
            min_time_s: float = 0.01, warmup: int = 2) -> Stat:
    """Seconds per call of `fn`: `repeats` timed batches of `inner` calls each.

    `inner` is chosen so one batch lasts about `min_time_s`, which amortises
    the timer (CUDA events on a GPU, perf_counter on CPU) for tiny kernels.
    Repeats stop early (never below 3) once a point has taken MAX_POINT_S, so
    a loaded machine cannot stretch a calibration without bound. Under
    `set_lockstep` every sample starts at a barrier with the other processes.
    """
    for _ in range(warmup):
        fn()
    once = float("inf")
    for _ in range(3):  # the fastest of 3 calls: a descheduled call must not set inner
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        once = min(once, max(time.perf_counter() - t0, 1e-7))
    inner = max(1, min(1000, int(min_time_s / once)))
    lock = _LOCKSTEP
    if lock is not None:
        inner = int(lock[1](inner))
    samples: list[float] = []
    began = time.perf_counter()
    for _ in range(repeats):
        if len(samples) >= 3:
            spent = time.perf_counter() - began
            if (lock[1](spent) if lock is not None else spent) > MAX_POINT_S:
                break
        if lock is not None:
            lock[0]()
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3 / inner)
        else:
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            samples.append((time.perf_counter() - t0) / inner)
    return summarize(samples)


# ----------------------------------------------------------------- results
@dataclass(frozen=True)
class KernelResult:
    """One benchmarked kernel: what, its shape, the work it does and its time.

    kind: "gemm" | "attention" | "block" | "memory" | "copy" | "optimizer".
    pass_: "fwd" (forward only) or "fwd+bwd".
    flops: FLOPs per call (0 for memory-bound ops); bytes: bytes moved per call.
    rate: flops / median seconds (FLOP/s) for compute kernels, bytes / median
    seconds (bytes/s) for memory-bound ones.
    """

    kind: str
    name: str
    shape: tuple[int, ...]
    dtype: str
    pass_: str
    threads: int
    flops: float
    bytes: float
    time: Stat

    @property
    def rate(self) -> float:
        work = self.flops if self.flops > 0 else self.bytes
        return work / self.time.median

    def to_dict(self) -> dict:
        d = asdict(self)
        d["pass"] = d.pop("pass_")
        d["shape"] = list(self.shape)
        d["rate"] = self.rate
        d["spread"] = self.time.iqr_rel
        return d


# ----------------------------------------------------------------- kernels
def gemm_shapes(spec: Model, micro_batch: int = 1, tp: int = 1) -> list[tuple[str, int, int, int]]:
    """The model's linears as (name, tokens, in, out): `(tokens x in) @ (in x out)`."""
    t = micro_batch * spec.seq_len
    mlp = [("fc1", t, spec.hidden, spec.ffn_hidden // tp), ("fc2", t, spec.ffn_hidden // tp,
                                                              spec.hidden)]
    if spec.activation == "swiglu":
        mlp = [("w1", t, spec.hidden, spec.ffn_hidden // tp), ("w2", t, spec.ffn_hidden // tp,
                                                               spec.hidden)]
    return [("wq", t, spec.hidden, spec.q_dim // tp), ("wo", t, spec.q_dim // tp, spec.hidden),
            *mlp, ("output", t, spec.hidden, spec.vocab // tp)]


def bench_linear(tokens: int, k: int, n: int, device: torch.device, dtype: str = "fp32",
                 backward: bool = False, repeats: int = 7, min_time_s: float = 0.01,
                 name: str = "linear") -> KernelResult:
    """`nn.Linear(k, n)` on a (tokens, k) input, as the model's projections run.

    Forward: 2*tokens*k*n FLOPs; forward + backward (input and weight
    gradients): 3x that.
    """
    dt = DTYPES[dtype]
    lin = torch.nn.Linear(k, n, device=device, dtype=dt)
    x = torch.randn(tokens, k, device=device, dtype=dt, requires_grad=backward)
    g = torch.randn(tokens, n, device=device, dtype=dt)
    if backward:
        def fn():
            lin(x).backward(g)
    else:
        def fn():
            with torch.no_grad():
                lin(x)
    flops = 2.0 * tokens * k * n * (3 if backward else 1)
    size = torch.finfo(dt).bits // 8
    moved = size * (tokens * k + k * n + tokens * n) * (3 if backward else 1)
    st = time_fn(fn, device, repeats, min_time_s)
    return KernelResult("gemm", name, (tokens, k, n), dtype, "fwd+bwd" if backward else "fwd",
                        torch.get_num_threads(), flops, float(moved), st)


def bench_attention(spec: Model, micro_batch: int, device: torch.device, dtype: str = "fp32",
                    backward: bool = False, tp: int = 1, repeats: int = 7,
                    min_time_s: float = 0.01) -> KernelResult:
    """`Attention.core` (causal SDPA) on (b, heads/tp, s, head_dim) tensors.

    FLOPs as `sandbox.counts`: 4*s*q_dim per token forward, full square
    (the causal kernel may do about half of it); backward 2x forward.
    """
    dt = DTYPES[dtype]
    attn = Attention(spec).to(device)
    heads = spec.heads // tp
    shape = (micro_batch, heads, spec.seq_len, spec.head_dim)
    q, k, v = (torch.randn(shape, device=device, dtype=dt, requires_grad=backward)
               for _ in range(3))
    if backward:
        g = torch.randn(shape, device=device, dtype=dt)

        def fn():
            attn.core(q, k, v).backward(g)
    else:
        def fn():
            with torch.no_grad():
                attn.core(q, k, v)
    tokens = micro_batch * spec.seq_len
    flops = 4.0 * spec.seq_len * heads * spec.head_dim * tokens * (3 if backward else 1)
    moved = 4 * q.numel() * q.element_size() * (3 if backward else 1)
    st = time_fn(fn, device, repeats, min_time_s)
    return KernelResult("attention", "sdpa", shape, dtype, "fwd+bwd" if backward else "fwd",
                        torch.get_num_threads(), flops, float(moved), st)


def bench_memory_ops(spec: Model, micro_batch: int, device: torch.device, dtype: str = "fp32",
                     repeats: int = 7, min_time_s: float = 0.01) -> list[KernelResult]:
    """Forward memory-bound ops of one block at the model's activation shape.

    Bytes = elements read + written once: norm 2x, gelu 2x, add 3x, softmax
    2x (over the vocabulary), cross-entropy 1x the fp32 logits.
    """
    dt = DTYPES[dtype]
    t = micro_batch * spec.seq_len
    x = torch.randn(micro_batch, spec.seq_len, spec.hidden, device=device, dtype=dt)
    y = torch.randn_like(x)
    f = torch.randn(micro_batch, spec.seq_len, spec.ffn_hidden, device=device, dtype=dt)
    logits = torch.randn(t, spec.vocab, device=device, dtype=dt)
    targets = torch.randint(0, spec.vocab, (t,), device=device)
    norm = make_norm(spec).to(device=device, dtype=dt)
    e = x.element_size()
    ops = [
        (spec.norm, lambda: norm(x), 2 * x.numel() * e, tuple(x.shape)),
        ("gelu", lambda: F.gelu(f, approximate="tanh"), 2 * f.numel() * e, tuple(f.shape)),
        ("add", lambda: x + y, 3 * x.numel() * e, tuple(x.shape)),
        ("softmax", lambda: torch.softmax(logits, dim=-1), 2 * logits.numel() * e,
         tuple(logits.shape)),
        ("cross_entropy", lambda: F.cross_entropy(logits.float(), targets),
         logits.numel() * 4, tuple(logits.shape)),
    ]
    out = []
    with torch.no_grad():
        for name, fn, moved, shape in ops:
            st = time_fn(fn, device, repeats, min_time_s)
            out.append(KernelResult("memory", name, shape, dtype, "fwd", torch.get_num_threads(),
                                    0.0, float(moved), st))
    return out


def bench_copy(nbytes: int, device: torch.device, repeats: int = 7,
               min_time_s: float = 0.01) -> KernelResult:
    """`dst.copy_(src)` of `nbytes`: DRAM/HBM bandwidth (bytes read + written)."""
    n = nbytes // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    st = time_fn(lambda: dst.copy_(src), device, repeats, min_time_s)
    return KernelResult("copy", "copy", (n,), "fp32", "fwd", torch.get_num_threads(), 0.0,
                        float(2 * n * 4), st)


def bench_adamw(params: int, device: torch.device, repeats: int = 5,
                min_time_s: float = 0.01) -> KernelResult:
    """One `torch.optim.AdamW` step (foreach) over `params` fp32 parameters in
    16 tensors; bytes = 4 fp32 arrays read + 3 written per parameter (28 B)."""
    chunks = [torch.nn.Parameter(torch.randn(params // 16, device=device)) for _ in range(16)]
    for p in chunks:
        p.grad = torch.randn_like(p)
    opt = torch.optim.AdamW(chunks, lr=1e-4, foreach=True)
    st = time_fn(opt.step, device, repeats, min_time_s)
    n = (params // 16) * 16
    return KernelResult("optimizer", "adamw", (n,), "fp32", "fwd", torch.get_num_threads(), 0.0,
                        float(28 * n), st)
