"""Display formatting, the same everywhere: pure functions from numbers to text.

Contract fields keep their units (seconds, GB = 1e9 bytes, fractions); only
what is shown to a person goes through here:
- shares (MFU, HFU, fractions of the step) as percent: `percent(0.4744)` -> "47.4%";
- times SI-scaled: "15.7 s", "312 ms", "4.10 us"; a part below 1e-12 of the
  whole it belongs to (rounding noise of a sum) as "0 s";
- memory in GiB (2**30 bytes), from GB: an 80 GiB GPU, 85.9 GB, is "80.0 GiB";
- parameter counts with SI-style prefixes: "4.20 k", "124 M", "1.30 B", "175 B", "1.00 T";
- rates with SI prefixes: "3.10 GFLOP/s", "312 TFLOP/s", "45.2 k tokens/s".
Three significant digits unless said otherwise.
"""

from __future__ import annotations

import math
from typing import Any

GIB = 2**30  # bytes
GB = 1e9  # bytes: the unit of every `*_gb` contract field
NOISE = 1e-12  # a part smaller than this fraction of its whole is shown as 0

_TIME = ((1.0, ""), (1e-3, "m"), (1e-6, "u"), (1e-9, "n"), (1e-12, "p"))
_COUNT = ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k"), (1.0, ""))
_SI = ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, ""))


def _sig(x: float, digits: int = 3) -> str:
    """`x` to `digits` significant digits, never in exponent notation
    (999.7 -> "1000", 4.1 -> "4.10")."""
    if x == 0:
        return "0"
    r = float(f"{x:.{digits - 1}e}")
    places = max(0, digits - 1 - math.floor(math.log10(abs(r))))
    return f"{r:.{places}f}"


def _scaled(x: float, scales: tuple[tuple[float, str], ...], unit: str, digits: int = 3
            ) -> str:
    """`x` divided by the largest scale not above |x| (scales largest first), with its prefix."""
    if not math.isfinite(x):
        return f"{x} {unit}".rstrip()
    if x == 0:
        return f"0 {scales[-1][1]}{unit}".rstrip()
    mag = abs(x)
    for i, (factor, prefix) in enumerate(scales):
        if mag >= factor or i == len(scales) - 1:
            text = _sig(x / factor, digits)
            # 999.7 rounds to "1000": say "1.00" of the next larger prefix instead
            if i > 0 and abs(float(text)) >= 1000:
                factor, prefix = scales[i - 1]
                text = _sig(x / factor, digits)
            return f"{text} {prefix}{unit}".rstrip()
    raise AssertionError("unreachable")


def percent(fraction: float, digits: int = 1) -> str:
    """A fraction (0.4744) as percent with `digits` decimals ("47.4%")."""
    if not math.isfinite(fraction):
        return f"{fraction}"
    return f"{100 * fraction:.{digits}f}%"


def seconds(s: float, of: float | None = None) -> str:
    """A time in seconds, SI-scaled ("15.7 s", "312 ms", "4.10 us"); "0 s" when
    below `NOISE` of `of` (the step it is part of) or below 1e-15 s."""
    if s == 0 or abs(s) < 1e-15 or (of is not None and abs(s) <= NOISE * abs(of)):
        return "0 s"
    if abs(s) >= 1000:
        return f"{s:,.0f} s"
    return _scaled(s, _TIME, "s")


def to_gib(gb: float) -> float:
    """GB (1e9 bytes) -> GiB (2**30 bytes)."""
    return gb * GB / GIB


def gib(gb: float, digits: int = 1) -> str:
    """Memory given in GB (1e9 bytes), shown in GiB: 85.9 -> "80.0 GiB";
    below 1 GiB in MiB ("312 MiB"), below 1 MiB in KiB."""
    g = to_gib(gb)
    if not math.isfinite(g) or g == 0 or abs(g) >= 1:
        return f"{g:.{digits}f} GiB"
    if abs(g) * 1024 >= 1:
        return f"{_sig(g * 1024)} MiB"
    return f"{_sig(g * 1024 * 1024)} KiB"


def params(n: float) -> str:
    """A parameter count with a prefix: 4.2e3 -> "4.20 k", 124e6 -> "124 M",
    1.3e9 -> "1.30 B" (billion), 175e9 -> "175 B", 1e12 -> "1.00 T"; below 1000 as is."""
    if abs(n) < 1000:
        return f"{n:,.0f}"
    return _scaled(float(n), _COUNT, "")


def flops_rate(flop_per_s: float) -> str:
    """FLOP/s with an SI prefix: 3.1e9 -> "3.10 GFLOP/s", 3.12e14 -> "312 TFLOP/s"."""
    return _scaled(flop_per_s, _SI, "FLOP/s")


def flops(flop: float) -> str:
    """A FLOP count (per step) with an SI prefix: 3.1e18 -> "3.10 EFLOP";
    beyond exa in exponent notation ("3.14e+21 FLOP")."""
    if abs(flop) >= 1e21:
        return f"{flop:.3g} FLOP"
    return _scaled(flop, _SI, "FLOP")


def rate(per_s: float, what: str = "tokens/s") -> str:
    """A rate with an SI prefix: 45_200 -> "45.2 k tokens/s"."""
    return f"{_scaled(per_s, _SI, '')} {what}".replace("  ", " ")


def share(fraction: float) -> str:
    """A fraction as percent, at most two significant digits: 0.121 -> "12%",
    0.05 -> "5%", 0.038 -> "3.8%"."""
    text = _sig(100 * fraction, 2)
    return (text.rstrip("0").rstrip(".") if "." in text else text) + "%"


def memory_fit(total_gb: float, capacity_gb: float, reserve: float, fits: bool) -> str:
    """The "fits" line: memory per GPU against its capacity (GB in, GiB shown)
    and the reserved fraction, e.g. "yes (70.3 of 80.0 GiB, 12% free; 5% reserved)";
    "NO, tight: ..." inside the reserve, "NO: ..." beyond the capacity."""
    if capacity_gb <= 0:
        return "yes" if fits else "NO"
    cap, usable = gib(capacity_gb), gib((1.0 - reserve) * capacity_gb)
    used = gib(total_gb)
    of = f"{used.removesuffix(' GiB')} of {cap}" if used.endswith(" GiB") else f"{used} of {cap}"
    free = 1.0 - total_gb / capacity_gb
    if fits:
        return f"yes ({of}, {share(free)} free; {share(reserve)} reserved)"
    if total_gb <= capacity_gb:
        return (f"NO, tight (does not fit: {of} leaves {share(free)} free, within the "
                f"{share(reserve)} reserve; {usable} usable)")
    return f"NO (does not fit: {used} needed > {cap}; {share(reserve)} reserved)"


def by_name(key: str, v: Any, step_s: float | None = None) -> Any:
    """A contract or table value shown by its field name's unit: mfu / hfu in percent,
    params, FLOPs and FLOP/s with SI prefixes, tokens/s, `*_gb` in GiB, `*_s`,
    `* (s)` and `breakdown_s.*` in seconds (below 1e-12 of `step_s`: 0), the
    memory reserve as a share; other numbers to 4 digits, the rest unchanged."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return v
    if key in ("mfu", "hfu") or key.startswith("mfu_"):
        return percent(v)
    if key == "params":
        return params(v)
    if key in ("flops_per_step", "hw_flops_per_step"):
        return flops(v)
    if key in ("tflops_per_gpu", "hw_tflops_per_gpu"):
        return flops_rate(v * 1e12)
    if key == "tokens_per_s":
        return rate(v)
    if key.endswith("_gb"):
        return gib(v)
    if key.endswith(("_s", " (s)")) or key.startswith("breakdown_s."):
        return seconds(v, of=step_s if key != "sim_wall_s" else None)
    if key == "memory_reserve":
        return share(v)
    return f"{v:.4g}" if isinstance(v, float) else v


__all__ = ["GB", "GIB", "NOISE", "by_name", "flops", "flops_rate", "gib", "memory_fit",
           "params", "percent", "rate", "seconds", "share", "to_gib"]
