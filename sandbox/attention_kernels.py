"""Flash-attention kernels' published throughput as a function of their work shape.

`train.attention_kernel` names the kernel a plan's `attention = "flash"` core runs:
- "fa2": FlashAttention-2 (flash-attn 2.x; PyTorch SDPA's flash backend is its port, the
  kernel torchtitan and this repository's runtime run), on every GPU; the default;
- "fa3": FlashAttention-3 (Hopper only);
- "cudnn": cuDNN fused attention, Transformer Engine's FusedAttention backend (what
  Megatron-Core and NeMo run on H100; Hopper only: no other GPU's curve is published).

The curves are the kernels' own H100 benchmarks (`sandbox/profiles/flash_kernels.toml`,
sources there): TFLOP/s against sequence length (512-16K), head dimension (64 / 128 /
256), causal or not, forward and backward, counted as the benchmarks count them (causal:
half the s x s square). `efficiency` is that rate over the benchmark GPU's dense peak,
interpolated linearly in log2(sequence) and log2(head_dim) between published points and
held at the end points outside them (at 16K every curve has levelled off). Where a point
is not published it is derived, and said so:
- FlashAttention-2's causal backward: from its forward + backward (FlashAttention-2
  paper) and forward (FlashAttention-3 paper) at the same shape,
  2.5 / bwd = 3.5 / fwd_bwd - 1 / fwd (the two papers' non-causal FA2 numbers agree
  this way within 1.3% at head dim 64 and 5.4% at 128, least at 4K-16K);
- FlashAttention-3's and cuDNN's causal backward (not published): the non-causal
  backward times the kernel's own causal / non-causal forward ratio at that shape;
- backward at head_dim > 128: the head-dim-128 backward (none published above).

`sim.flash_kernels` prices a plan's kernel with these curves (and its SM fill).
Units: TFLOP/s, fractions of peak.
"""

from __future__ import annotations

import functools
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path

DATA = Path(__file__).resolve().parent / "profiles" / "flash_kernels.toml"
KERNELS = ("fa2", "fa3", "cudnn")
KERNEL_NAMES = {"fa2": "FlashAttention-2", "fa3": "FlashAttention-3",
                "cudnn": "cuDNN fused attention"}


@dataclass(frozen=True)
class KernelData:
    """The data file: per (kernel, direction, causal, head_dim) TFLOP/s at `seq_len`."""

    seq_len: tuple[int, ...]
    peak_tflops: float
    tokens: int
    hidden: int
    curves: dict[tuple[str, str, bool, int], tuple[float, ...]]
    gpus: dict[str, tuple[int, tuple[str, ...]]]  # name -> (SMs, kernels)


@functools.cache
def load(path: str = str(DATA)) -> KernelData:
    """Read the committed data file (once)."""
    d = tomllib.loads(Path(path).read_text())
    seq = tuple(int(s) for s in d["seq_len"])
    curves = {}
    for c in d["curve"]:
        vals = tuple(float(v) for v in c["tflops"])
        assert len(vals) == len(seq), c
        curves[(c["kernel"], c["direction"], bool(c["causal"]), int(c["head_dim"]))] = vals
    gpus = {k: (int(v["sms"]), tuple(v["kernels"])) for k, v in d["gpus"].items()}
    return KernelData(seq, float(d["benchmark_peak_tflops"]), int(d["benchmark_tokens"]),
                      int(d["benchmark_hidden"]), curves, gpus)


def available(kernel: str, gpu: str) -> bool:
    """Whether `kernel` runs on the GPU preset `gpu` ("fa2" runs everywhere)."""
    if kernel == "fa2":
        return True
    entry = load().gpus.get(gpu)
    return entry is not None and kernel in entry[1]


def has_curves(gpu: str) -> bool:
    """Whether the data file describes `gpu` (else the profile's legacy curve is used)."""
    return gpu in load().gpus


def _series(kernel: str, direction: str, causal: bool, hd: int) -> tuple[float, ...] | None:
    """TFLOP/s at the data's sequence lengths, published or derived (module doc)."""
    data = load()
    got = data.curves.get((kernel, direction, causal, hd))
    if got is not None:
        return got
    if direction == "bwd" and causal:
        fb = data.curves.get((kernel, "fwd_bwd", True, hd))
        fwd = data.curves.get((kernel, "fwd", True, hd))
        if fb and fwd:
            return tuple(2.5 / (3.5 / a - 1.0 / b) for a, b in zip(fb, fwd, strict=True))
        nc = data.curves.get((kernel, "bwd", False, hd))
        fc, fn = (data.curves.get((kernel, "fwd", c, hd)) for c in (True, False))
        if nc and fc and fn:
            return tuple(b * c / n for b, c, n in zip(nc, fc, fn, strict=True))
    return None


def _head_dims(kernel: str, direction: str, causal: bool) -> list[int]:
    """Head dims with a (published or derived) curve of this kind."""
    return sorted({hd for (k, _dr, _c, hd) in load().curves
                   if k == kernel and _series(kernel, direction, causal, hd) is not None})


def _interp(xs: list[float], ys: list[float], x: float) -> float:
    """Linear in log2(x) between points, held at the ends."""
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1]
    for (x0, y0), (x1, y1) in zip(zip(xs, ys, strict=True), zip(xs[1:], ys[1:], strict=True),
                                  strict=True):
        if x0 <= x <= x1:
            t = (math.log2(x) - math.log2(x0)) / (math.log2(x1) - math.log2(x0))
            return y0 + t * (y1 - y0)
    return ys[-1]


def tflops(kernel: str, seq_len: float, head_dim: float, causal: bool, direction: str) -> float:
    """The kernel's benchmark TFLOP/s (benchmark FLOP counting) at this shape on H100."""
    hds = _head_dims(kernel, direction, causal)
    if not hds:
        raise KeyError(f"no {direction} curve for {kernel}")
    seq = [float(s) for s in load().seq_len]
    per_hd = [_interp(seq, list(_series(kernel, direction, causal, hd)), seq_len) for hd in hds]
    return _interp([float(h) for h in hds], per_hd, head_dim)


def efficiency(kernel: str, seq_len: float, head_dim: float, causal: bool,
               direction: str) -> float:
    """`tflops` as a fraction of the benchmark GPU's dense BF16 peak."""
    return tflops(kernel, seq_len, head_dim, causal, direction) / load().peak_tflops


def sms(gpu: str) -> int:
    """Streaming multiprocessors of `gpu` (0: not in the data file)."""
    entry = load().gpus.get(gpu)
    return entry[0] if entry else 0
