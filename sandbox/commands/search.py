"""sandbox search --model M --cluster C --gpus N --global-batch B [--top K]
[--objective time|cost] [--max-memory-gb X] [--fix key=value ...] [--executor local|ray
[--ray-address A]] [--json|--csv]"""

from __future__ import annotations

import argparse
import json
import sys

from sandbox.commands._args import integer, text
from sandbox.errors import SandboxError

HELP = "rank feasible parallel plans by simulated step time or cost per token"

COLUMNS = ("dp", "tp", "pp", "vpp", "micro_batch", "zero", "recompute", "sequence_parallel",
           "schedule", "step_time_s", "tokens_per_s", "mfu", "memory_gb",
           "usd_per_million_tokens", "same_cost", "pareto_time_memory")
_BOOLS = {"true": True, "false": False, "yes": True, "no": False, "on": True, "off": False}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model preset (see `sandbox presets`)")
    p.add_argument("--cluster", required=True, help="cluster preset")
    p.add_argument("--gpus", required=True, type=integer(1), help="number of GPUs (world size)")
    p.add_argument("--global-batch", required=True, type=integer(1), help="sequences per step")
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


def main(args: argparse.Namespace) -> int:
    from sim.search import run_search, to_records

    result = run_search(model=args.model, cluster=args.cluster, gpus=args.gpus,
                        global_batch=args.global_batch, top=args.top,
                        objective=args.objective, max_memory_gb=args.max_memory_gb,
                        fix=parse_fix(args.fix), seq_len=args.seq_len, workers=args.workers,
                        max_simulations=args.max_simulations, progress=not args.quiet,
                        executor=args.executor, ray_address=args.ray_address).table
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
        with pd.option_context("display.width", 200, "display.max_columns", 40):
            print(shown_columns(result, cols).to_string())
    return 0
