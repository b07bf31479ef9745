"""sandbox info PLAN [--json] [--set SECTION.KEY=VALUE ...]"""

from __future__ import annotations

import argparse
import json

from sandbox.commands._args import add_set

HELP = ("print the analytic facts of a plan (parameters, FLOPs, memory per GPU, the rank "
        "layout)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("plan", help="plan TOML file")
    p.add_argument("--json", action="store_true", help="print the JSON contract")
    add_set(p)


def main(args: argparse.Namespace) -> int:
    import sandbox
    from sandbox.profile import profile_for

    plan = sandbox.load(args.plan, overrides=args.set)
    profile_for(plan.cluster)  # a broken cluster.profile is refused here too, not ignored
    facts = sandbox.info(plan)
    print(json.dumps(facts.to_dict(), indent=2) if args.json else str(facts))
    return 0
