"""sandbox compare PLAN --out DIR [--steps N] [--json] [--set SECTION.KEY=VALUE ...]"""

from __future__ import annotations

import argparse
import json

from sandbox.commands._args import add_set, integer

HELP = ("run a plan for real and simulate it: compare.json (predicted, measured, relative "
        "error) and a timeline plot of one step")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("plan", help="plan TOML file")
    p.add_argument("--out", required=True, help="directory for compare.json, the plot and the run")
    p.add_argument("--steps", type=integer(1), default=None,
                   help="training steps to measure (default: train.steps, at most 8)")
    p.add_argument("--json", action="store_true", help="print compare.json")
    add_set(p)


def main(args: argparse.Namespace) -> int:
    import sandbox
    from sandbox.outputs import check_input_paths, output_dir

    output_dir(args.out, "--out")
    plan = sandbox.load(args.plan, overrides=args.set)
    check_input_paths(plan)
    result = sandbox.compare(plan, out=args.out, steps=args.steps)
    print(json.dumps(result.to_dict(), indent=2) if args.json else str(result))
    from sandbox.calibration import warn_uncalibrated

    warn_uncalibrated([plan.cluster])  # the prediction beside the measurement rests on it
    return 0
