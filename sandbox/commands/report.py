"""sandbox report PLAN... --out DIR [--names A,B] [--scaling 0.5,1,2]
[--set SECTION.KEY=VALUE ...]"""

from __future__ import annotations

import argparse
import math

from sandbox.commands._args import add_set, text
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
    add_set(p)


MAX_SCALING_POINTS = 16  # points of one scaling curve (each is a simulation)


def _factors(text: str) -> list[float]:
    if text.strip().lower() in ("", "none", "0"):
        return []
    try:
        factors = [float(x) for x in text.split(",")]
    except ValueError:
        raise SandboxError(f"--scaling: expected numbers like 0.5,1,2, got '{text}'") from None
    if not all(math.isfinite(f) and f > 0 for f in factors):
        raise SandboxError(f"--scaling: factors must be positive finite numbers, got '{text}'")
    if len(factors) > MAX_SCALING_POINTS:
        raise SandboxError(f"--scaling: {len(factors):,} factors, more than the limit of "
                           f"{MAX_SCALING_POINTS} points per curve")
    return factors


def _check_budget(paths: list[str], factors: list[float], overrides: list[str]) -> list:
    """Every plan and every scaled plan within the simulator's limits (with a
    timeline: the report simulates with one), before any simulation -> the plans."""
    import sandbox
    from sandbox.report import scaled
    from sim.budget import MAX_GPUS, check_budget

    plans = []
    for path in paths:
        plan = sandbox.load(path, overrides=overrides)
        plans.append(plan)
        check_budget(plan, timeline=True)
        p = plan.parallel
        for f in factors:
            gpus = p.dp * f * p.tp * p.pp * p.cp
            if gpus > MAX_GPUS:
                raise SandboxError(f"--scaling: {f:g} x dp {p.dp} of {path} is {gpus:,.0f} "
                                   f"GPUs, more than the simulator's limit of {MAX_GPUS:,}")
            q = scaled(plan, f)
            if q is not None:
                check_budget(q, timeline=True)
    return plans


def main(args: argparse.Namespace) -> int:
    from sandbox.calibration import warn_uncalibrated
    from sandbox.outputs import output_dir
    from sandbox.report import report

    output_dir(args.out, "--out")
    factors = _factors(args.scaling)
    names = [n.strip() for n in args.names.split(",")] if args.names else None
    plans = _check_budget(args.plans, factors, args.set)
    result = report(args.plans, args.out, names=names, scaling=factors, overrides=args.set)
    warn_uncalibrated(p.cluster for p in plans)
    print(f"wrote {result.path} with {len(result.pngs)} figures: "
          + ", ".join(p.name for p in result.pngs))
    return 0
