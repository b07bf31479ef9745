"""sandbox run PLAN --out DIR [--steps N] [--resume] [--fail-at-step N --fail-rank R
--max-restarts K] [--profile-step N] [--json] [--set SECTION.KEY=VALUE ...]

With --set, DIR/plan.toml is the plan with the overrides (what was trained)."""

from __future__ import annotations

import argparse
import json

from sandbox.commands._args import add_set, integer

HELP = "train a plan for real with torchrun on this machine (GPUs with NCCL, or CPU with gloo)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("plan", help="plan TOML file")
    p.add_argument("--out", required=True, help="run directory (metrics, checkpoints, summary)")
    p.add_argument("--steps", type=integer(1), default=None, help="override train.steps")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest complete checkpoint in --out")
    p.add_argument("--fail-at-step", type=integer(0), default=0, metavar="N",
                   help="failure injection: rank --fail-rank exits at step N (once)")
    p.add_argument("--fail-rank", type=integer(0), default=0, metavar="R", help="rank that fails")
    p.add_argument("--max-restarts", type=integer(0), default=0, metavar="K",
                   help="torchrun elastic restarts (each resumes from the newest checkpoint)")
    p.add_argument("--profile-step", type=integer(1), default=0, metavar="N",
                   help="trace step N with torch.profiler: Chrome-trace JSON and the measured "
                        "breakdown in DIR/profile/")
    p.add_argument("--json", action="store_true", help="print summary.json")
    add_set(p)


def main(args: argparse.Namespace) -> int:
    import sandbox
    from sandbox.outputs import check_input_paths, output_dir

    output_dir(args.out, "--out")
    plan = sandbox.load(args.plan, overrides=args.set)  # DIR/plan.toml: with them
    check_input_paths(plan)
    result = sandbox.run(plan, args.out, steps=args.steps,
                         resume=args.resume, fail_at_step=args.fail_at_step,
                         fail_rank=args.fail_rank, max_restarts=args.max_restarts,
                         profile_step=args.profile_step)
    print(json.dumps(result.to_dict(), indent=2) if args.json else str(result))
    return 0
