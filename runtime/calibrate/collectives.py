"""Collective micro-benchmarks with torch.distributed: gloo on CPU, NCCL on GPU.

`bench_collectives(group_size, sizes, ...)` spawns `group_size` processes
(torch.multiprocessing, file:// rendezvous in a temporary directory), and in
each times all-reduce, all-gather, reduce-scatter and send/recv for every
message size. One sample = barrier, then `inner` back-to-back calls, timed on
each rank; the sample is the slowest rank's time per call (all-reduce MAX of
the elapsed times, outside the timed region). Sizes are the full buffer in
bytes (NCCL-tests convention: the all-reduce buffer, the gathered output of
all-gather, the input of reduce-scatter, the message of send/recv, timed as
half a ping-pong round trip).

Bandwidths follow nccl-tests: algorithm bandwidth `algbw = bytes / time`;
bus bandwidth `busbw = algbw * factor` with factor `2(p-1)/p` for all-reduce,
`(p-1)/p` for all-gather and reduce-scatter, 1 for send/recv; the latency
and bus bandwidth of the alpha-beta model `time = latency + factor * bytes /
busbw` are fitted by least squares over the sizes (weighted by 1/time so
small messages count).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch
import torch.distributed as dist

from runtime.calibrate.kernels import Stat, summarize
from runtime.spawn import Worker, spawn
from sandbox.profile import bus_factor

OPS = ("all_reduce", "all_gather", "reduce_scatter", "send_recv")


@dataclass(frozen=True)
class CollectivePoint:
    """One (op, size): time per call in seconds over repeats; bytes as above."""

    op: str
    bytes: int
    time: Stat

    def busbw(self, p: int) -> float:
        """Bus bandwidth at the median time, bytes/s."""
        return self.bytes * bus_factor(self.op, p) / self.time.median

    def to_dict(self, p: int) -> dict:
        return {"op": self.op, "bytes": self.bytes, "time": self.time.to_dict(),
                "algbw_bytes_per_s": self.bytes / self.time.median,
                "busbw_bytes_per_s": self.busbw(p), "spread": self.time.iqr_rel}


@dataclass(frozen=True)
class CollectiveFit:
    """alpha-beta fit of one op: latency (s) and bus bandwidth (bytes/s)."""

    op: str
    latency_s: float
    busbw_bytes_per_s: float

    def predict(self, nbytes: float, p: int) -> float:
        return self.latency_s + bus_factor(self.op, p) * nbytes / self.busbw_bytes_per_s


@dataclass
class CollectiveResult:
    """All points and fits of one backend and group size."""

    backend: str
    group_size: int
    device: str
    points: list[CollectivePoint] = field(default_factory=list)

    def fit(self, op: str) -> CollectiveFit:
        pts = [q for q in self.points if q.op == op]
        return fit_alpha_beta(op, [q.bytes for q in pts], [q.time.median for q in pts],
                              self.group_size)

    def to_dict(self) -> dict:
        return {"backend": self.backend, "group_size": self.group_size, "device": self.device,
                "points": [q.to_dict(self.group_size) for q in self.points],
                "fits": {op: asdict(self.fit(op)) for op in OPS
                         if any(q.op == op for q in self.points)}}


def fit_alpha_beta(op: str, sizes: list[int], times: list[float], p: int) -> CollectiveFit:
    """Weighted least squares of `time = a + b * factor * bytes` (weights 1/time).

    Latency is clamped to at least 1e-7 s (and at most the smallest time);
    bandwidth 1/b is clamped positive (if the slope is not positive, the
    largest message's bus bandwidth is used).
    """
    xs = [bus_factor(op, p) * s for s in sizes]
    ws = [1.0 / max(t, 1e-9) ** 2 for t in times]
    sw = sum(ws)
    mx = sum(w * x for w, x in zip(ws, xs, strict=True)) / sw
    my = sum(w * y for w, y in zip(ws, times, strict=True)) / sw
    sxx = sum(w * (x - mx) ** 2 for w, x in zip(ws, xs, strict=True))
    sxy = sum(w * (x - mx) * (y - my) for w, x, y in zip(ws, xs, times, strict=True))
    slope = sxy / sxx if sxx > 0 else 0.0
    i = max(range(len(sizes)), key=lambda j: sizes[j])
    if slope <= 0:
        slope = times[i] / max(xs[i], 1.0)
    latency = min(max(my - slope * mx, 1e-7), min(times))
    return CollectiveFit(op, latency, 1.0 / slope)


def _run_op(op: str, nbytes: int, rank: int, world: int, device: torch.device):
    """A closure running `op` once on a buffer of `nbytes` (see module doc)."""
    n = max(world, nbytes // 4 // world * world)
    if op == "all_reduce":
        buf = torch.ones(n, device=device)
        return lambda: dist.all_reduce(buf)
    if op == "all_gather":
        out, part = torch.empty(n, device=device), torch.ones(n // world, device=device)
        return lambda: dist.all_gather_into_tensor(out, part)
    if op == "reduce_scatter":
        inp, part = torch.ones(n, device=device), torch.empty(n // world, device=device)
        return lambda: dist.reduce_scatter_tensor(part, inp)
    buf = torch.ones(n, device=device)  # send/recv: ping-pong 0 <-> 1, timed as 2 calls
    if rank == 0:
        def ping():
            dist.send(buf, 1)
            dist.recv(buf, 1)
        return ping
    if rank == 1:
        def pong():
            dist.recv(buf, 0)
            dist.send(buf, 0)
        return pong
    return lambda: None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _measure(op: str, nbytes: int, rank: int, world: int, device: torch.device, repeats: int,
             min_time_s: float) -> Stat:
    fn = _run_op(op, nbytes, rank, world, device)
    fn()
    _sync(device)
    dist.barrier()
    t0 = time.perf_counter()
    fn()
    _sync(device)
    once = torch.tensor([time.perf_counter() - t0], dtype=torch.float64, device=device)
    dist.all_reduce(once, op=dist.ReduceOp.MAX)  # every rank picks the same inner
    inner = max(1, min(200, int(min_time_s / max(once.item(), 1e-6))))
    samples = []
    for _ in range(repeats):
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        _sync(device)
        per = (time.perf_counter() - t0) / inner / (2 if op == "send_recv" else 1)
        el = torch.tensor([per], dtype=torch.float64, device=device)  # NCCL: device tensors
        dist.all_reduce(el, op=dist.ReduceOp.MAX)
        samples.append(el.item())
    return summarize(samples)


def _worker(w: Worker, device_type: str, ops: list[str], sizes: list[int], repeats: int,
            min_time_s: float) -> list[dict]:
    import warnings

    # torch 2.13 deprecates the *_into_tensor names; they are what FSDP2 calls.
    warnings.filterwarnings("ignore", message=".*is deprecated.*", category=FutureWarning)
    if device_type == "cuda":
        device = torch.device("cuda", w.rank % torch.cuda.device_count())
    else:
        device = torch.device("cpu")
    points = []
    for op in ops:
        for s in sizes:
            st = _measure(op, s, w.rank, w.world, device, repeats, min_time_s)
            points.append({"op": op, "bytes": s, "time": st.to_dict()})
            w.tick()
    return points


def default_sizes(quick: bool = False) -> list[int]:
    """Message sizes in bytes: 4 KiB .. 64 MiB by 4x (quick: 4 KiB .. 1 MiB by 16x)."""
    if quick:
        return [4 << 10, 64 << 10, 1 << 20]
    return [4 << (10 + 2 * i) for i in range(8)]


def bench_collectives(group_size: int = 2, sizes: list[int] | None = None,
                      device: str = "cpu", ops: tuple[str, ...] = OPS, repeats: int = 7,
                      min_time_s: float = 0.005, on_point=None) -> CollectiveResult:
    """Spawn `group_size` processes and time every op at every size.

    Backend: NCCL for device "cuda", gloo for "cpu". `on_point()` is called
    once per finished (op, size) (for a progress bar; polled from this process).
    """
    backend = "nccl" if device == "cuda" else "gloo"
    sizes = sizes or default_sizes()
    raw = spawn(_worker, group_size, device, list(ops), sizes, repeats, min_time_s,
                backend=backend, timeout_s=120, on_tick=on_point)[0]
    pts = [CollectivePoint(r["op"], r["bytes"], Stat(**r["time"])) for r in raw]
    return CollectiveResult(backend, group_size, device, pts)
