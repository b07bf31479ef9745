"""sandbox search --model M --cluster C --gpus N --global-batch B [--top K]
[--objective time|cost] [--max-memory-gb X] [--fix key=value ...] [--executor local|ray
[--ray-address A]] [--json|--csv]

sandbox search PLAN [--set SECTION.KEY=VALUE ...] [the flags above]: a search
around a plan file (its model, cluster, GPUs, global batch, training options;
the flags override them), with the plan's own rank (`sim.search.around`)."""

from __future__ import annotations

import argparse
import json
import sys

from sandbox.commands._args import add_set, integer, text
from sandbox.errors import SandboxError

HELP = ("rank feasible parallel plans by simulated step time or cost per token (for a model, "
        "cluster and GPU budget, or around a plan file)")

COLUMNS = ("dp", "tp", "pp", "vpp", "micro_batch", "zero", "recompute", "sequence_parallel",
           "schedule", "step_time_s", "tokens_per_s", "mfu", "memory_gb",
           "usd_per_million_tokens", "same_cost", "pareto_time_memory")
_BOOLS = {"true": True, "false": False, "yes": True, "no": False, "on": True, "off": False}


REQUIRED = ("model", "cluster", "gpus", "global_batch")  # without a PLAN


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("plan", nargs="?", default=None, metavar="PLAN",
                   help="plan TOML file to search around: model, cluster, GPUs, global batch "
                        "and training options from it (the flags below override them); the "
                        "output says where the plan itself ranks")
    p.add_argument("--model", help="model preset (see `sandbox presets`; needed without PLAN)")
    p.add_argument("--cluster", help="cluster preset (needed without PLAN)")
    p.add_argument("--gpus", type=integer(1), help="number of GPUs (world size; needed "
                                                   "without PLAN)")
    p.add_argument("--global-batch", type=integer(1),
                   help="sequences per step (needed without PLAN)")
    p.add_argument("--top", type=integer(1), default=10, help="rows to show (default 10)")
    p.add_argument("--objective", default="time", choices=("time", "cost"),
                   help="rank by step time or by USD per token (default time)")
    p.add_argument("--max-memory-gb", type=float, default=None,
                   help="cap on memory per GPU, GB (default: the GPU's memory)")
    p.add_argument("--fix", action="append", default=[], metavar="KEY=VALUE",
                   help="fix a searched field, e.g. tp=8 or pp=8,16 (repeatable)")
    p.add_argument("--seq-len", type=integer(1), default=None, help="override the model's sequence")
    p.add_argument("--workers", type=integer(1), default=None,
                   help="simulation processes (default: cores)")
    p.add_argument("--max-simulations", type=integer(1), default=None,
                   help="simulation budget (plans simulated at most; default: none, every "
                        "candidate the lower bound cannot rule out is simulated)")
    p.add_argument("--executor", default="local", choices=("local", "ray"),
                   help="where simulations run: local processes (default) or Ray tasks "
                        "(optional extra [ray])")
    p.add_argument("--ray-address", type=text, default=None, metavar="ADDRESS",
                   help="Ray cluster to join (default: a local Ray instance)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary on stderr")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print a JSON list of plans")
    out.add_argument("--csv", action="store_true", help="print CSV")
    add_set(p)


def _value(text: str):
    low = text.lower()
    if low in _BOOLS:
        return _BOOLS[low]
    try:
        return int(text)
    except ValueError:
        return text


def parse_fix(items: list[str]) -> dict:
    """["tp=8", "pp=8,16"] -> {"tp": 8, "pp": [8, 16]}."""
    fix: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise SandboxError(f"--fix: expected KEY=VALUE, got '{item}'")
        values = [_value(v.strip()) for v in value.split(",")]
        fix[key.strip().replace("-", "_")] = values if len(values) > 1 else values[0]
    return fix


def _options(args: argparse.Namespace):
    """run_search's model, cluster, gpus, global_batch (and plan overrides), and
    the plan when one is searched around (else None)."""
    if args.plan is None:
        missing = [f"--{k.replace('_', '-')}" for k in REQUIRED if getattr(args, k) is None]
        if missing:
            raise SandboxError(f"give a PLAN file, or {', '.join(missing)} (the model, "
                               "cluster, GPUs and global batch to search)")
        if args.set:
            raise SandboxError("--set: changes a PLAN file's fields; give a PLAN")
        return {k: getattr(args, k) for k in REQUIRED}, None
    import sandbox
    from sim.search.around import search_options

    plan = sandbox.load(args.plan, overrides=args.set)
    options = search_options(plan, args.gpus)
    options.update({k: getattr(args, k) for k in REQUIRED if getattr(args, k) is not None})
    return options, plan


def _same_space(args: argparse.Namespace, plan) -> bool:
    """True when no flag moved the search away from the plan's own model,
    cluster, GPUs, global batch and sequence length."""
    return (args.model is None and args.cluster is None
            and args.gpus in (None, plan.world_size)
            and args.global_batch in (None, plan.parallel.global_batch)
            and args.seq_len in (None, plan.model.seq_len))


def main(args: argparse.Namespace) -> int:
    from sandbox.calibration import warn_uncalibrated
    from sim.search import run_search, to_records

    options, plan = _options(args)
    found = run_search(**options, top=args.top,
                       objective=args.objective, max_memory_gb=args.max_memory_gb,
                       fix=parse_fix(args.fix), seq_len=args.seq_len, workers=args.workers,
                       max_simulations=args.max_simulations, progress=not args.quiet,
                       executor=args.executor, ray_address=args.ray_address)
    result = found.table
    note = None
    if plan is not None:
        from sim.search.around import describe, dropped_fields, locate, search_key

        if _same_space(args, plan):
            dropped = dropped_fields(plan)
            note = describe(locate(found, plan, exact=not dropped))
            if dropped:
                note += f" ({', '.join(dropped)}: kept in your plan, not in the search)"
            mine = search_key(plan, found.base_plan)
            result = result.assign(your_plan=[
                not dropped and all(row[k] == v for k, v in mine.items())
                for _, row in result.iterrows()])
        else:
            note = ("your plan: not ranked (--model, --cluster, --gpus, --global-batch or "
                    "--seq-len changed what is searched)")
    warn_uncalibrated([found.base_plan.cluster])
    if args.json:
        print(json.dumps(to_records(result), indent=2))
    elif args.csv:
        result.to_csv(sys.stdout)
    elif len(result) == 0:
        print("no feasible plan: see the reasons above (or drop --quiet)")
    else:
        import pandas as pd

        from sandbox.report import shown_columns

        cols = list(COLUMNS)
        if "cp" in result and (result["cp"] > 1).any():  # long context: its degree and traffic
            cols[cols.index("schedule") + 1:cols.index("schedule") + 1] = [
                "cp", "cp_method", *[c for c in ("breakdown_s.cp_comm",) if c in result]]
        shown = shown_columns(result, cols)
        if "your_plan" in result and result["your_plan"].any():
            shown = shown.assign(**{"": result["your_plan"].map({True: "<- your plan",
                                                                 False: ""})})
        with pd.option_context("display.width", 200, "display.max_columns", 40):
            print(shown.to_string())
    if note is not None:
        print(note, file=sys.stderr if args.json or args.csv else sys.stdout)
    return 0
