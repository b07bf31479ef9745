"""sandbox report PLAN... --out DIR [--names A,B] [--scaling 0.5,1,2]"""

from __future__ import annotations

import argparse
import math

from sandbox.commands._args import text
from sandbox.errors import SandboxError

HELP = "compare plans side by side: simulate them and write DIR/report.html with plots"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("plans", nargs="+", metavar="PLAN", help="plan TOML files")
    p.add_argument("--out", required=True, help="output folder (report.html and PNGs)")
    p.add_argument("--names", default=None, type=text,
                   help="comma-separated plan names for the plots")
    p.add_argument("--scaling", default="0.25,0.5,1,2,4",
                   help="data-parallel sizes of the scaling curves, relative to each plan's "
                        "(comma-separated; 'none' for no scaling plot)")


def _factors(text: str) -> list[float]:
    if text.strip().lower() in ("", "none", "0"):
        return []
    try:
        factors = [float(x) for x in text.split(",")]
    except ValueError:
        raise SandboxError(f"--scaling: expected numbers like 0.5,1,2, got '{text}'") from None
    if not all(math.isfinite(f) and f > 0 for f in factors):
        raise SandboxError(f"--scaling: factors must be finite and positive, got '{text}'")
    return factors


def main(args: argparse.Namespace) -> int:
    from sandbox.outputs import output_dir
    from sandbox.report import report

    output_dir(args.out, "--out")
    factors = _factors(args.scaling)
    names = [n.strip() for n in args.names.split(",")] if args.names else None
    result = report(args.plans, args.out, names=names, scaling=factors)
    print(f"wrote {result.path} with {len(result.pngs)} figures: "
          + ", ".join(p.name for p in result.pngs))
    return 0
