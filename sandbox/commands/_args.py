"""Argument types shared by the subcommands: numbers refused at parse time
(negative, zero, NaN, inf, out of range) with one line naming the flag.

    p.add_argument("--steps", type=integer(1))      # 1, 2, ...
    p.add_argument("--seed", type=integer(0, SEED_MAX))
    p.add_argument("--prune", type=number(0.0, 1.0, high_open=True))
    add_set(p)                                      # --set SECTION.KEY=VALUE ...
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from sandbox.errors import SandboxError
from sandbox.overrides import FLAG, parse_override

SEED_MAX = 2**32 - 1  # numpy's and onnxruntime's seeds are 32-bit


def _range(low: float | None, high: float | None, low_open: bool = False,
           high_open: bool = False) -> str:
    """"in [low, high)", ">= low", "positive", ...: the words of an error."""
    if low is not None and high is not None:
        if isinstance(low, int) and isinstance(high, int) and not (low_open or high_open):
            return f"in {low:,}..{high:,}"
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        if low == 1 and not low_open and isinstance(low, int):
            return "positive"
        return f"{'>' if low_open else '>='} {low:g}"
    return f"{'<' if high_open else '<='} {high:g}"


def integer(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in low..high (either bound may be None)."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got '{text}'") from None
        if (low is not None and v < low) or (high is not None and v > high):
            raise argparse.ArgumentTypeError(f"must be {_range(low, high)}, got {v:,}")
        return v

    parse.__name__ = "integer"
    return parse


def number(low: float | None = None, high: float | None = None, low_open: bool = False,
           high_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite float in [low, high] (`*_open`: that end excluded)."""

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
        bad = not math.isfinite(v) or (low is not None and (v < low or low_open and v == low)) \
            or (high is not None and (v > high or high_open and v == high))
        if bad:
            what = "" if low is None and high is None else " " + _range(low, high, low_open,
                                                                         high_open)
            raise argparse.ArgumentTypeError(f"must be a finite number{what}, got {text}")
        return v

    parse.__name__ = "number"
    return parse


def text(value: str) -> str:
    """An argparse type: text that can be encoded as UTF-8 (no lone surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise argparse.ArgumentTypeError(
            f"not valid text (position {e.start}: {value[e.start:e.end]!a}, bytes that are "
            "not UTF-8)") from None
    return value


_SUFFIXES = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}


def count(value: str) -> float:
    """An argparse type: a positive finite count such as 15T, 300B, 1M, 2.5e12
    (suffixes K, M, B or G, T: 1e3, 1e6, 1e9, 1e12; any case)."""
    s = value.strip()
    scale = _SUFFIXES.get(s[-1:].upper(), 1.0)
    try:
        v = float(s[:-1] if scale != 1.0 else s) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a count like 15T, 300B, 1M or 2.5e12, got '{value}'") from None
    if not math.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got '{value}'")
    return v


def override(value: str) -> str:
    """An argparse type: one `--set SECTION.KEY=VALUE` (`sandbox.overrides`),
    its syntax, section and key checked at parse time."""
    try:
        parse_override(text(value))
    except SandboxError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix(f"{FLAG} ")) from None
    return value


def add_set(p: argparse.ArgumentParser) -> None:
    """`--set SECTION.KEY=VALUE` (repeatable) on a command that reads plan files:
    `sandbox.load(path, overrides=args.set)`."""
    p.add_argument("--set", action="append", default=[], type=override,
                   metavar="SECTION.KEY=VALUE",
                   help="change one plan field, e.g. parallel.micro_batch=4 or "
                        "train.attention_kernel=fa3 (a TOML value; bare words are strings; "
                        "beats the file and its presets; repeatable)")
