"""sandbox sweep SWEEP.toml --out DIR [--trials N] [--workers K] [--storage URL] [--json]"""

from __future__ import annotations

import argparse
import json

from sandbox.commands._args import integer, text

HELP = ("tune a plan's fields (lr, batch, micro-batch, ...) with Optuna over real runs or "
        "simulations; the study resumes from DIR/study.db")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sweep", help="SWEEP.toml: base plan, objective, sampler and [space]")
    p.add_argument("--out", required=True, help="sweep folder (study.db, trials/, outputs)")
    p.add_argument("--trials", type=integer(0), default=None,
                   help="trials to run now (default: the file's `trials`; grid: what is left)")
    p.add_argument("--workers", type=integer(1, 64), default=1,
                   help="trials at a time on the one study (default 1)")
    p.add_argument("--storage", type=text, default=None, metavar="URL",
                   help="Optuna RDB URL shared by workers on many machines "
                        "(default sqlite:///DIR/study.db)")
    p.add_argument("--quiet", action="store_true", help="no line per trial on stderr")
    p.add_argument("--json", action="store_true", help="print the sweep's summary as JSON")


def main(args: argparse.Namespace) -> int:
    from sandbox.outputs import output_dir
    from sandbox.sweep_run import sweep
    from sandbox.sweep_spec import load_sweep

    output_dir(args.out, "--out")
    spec = load_sweep(args.sweep)
    result = sweep(spec, args.out, trials=args.trials, workers=args.workers,
                   storage=args.storage, progress=not args.quiet)
    print(json.dumps(result.to_dict(), indent=2) if args.json else str(result))
    return 0
