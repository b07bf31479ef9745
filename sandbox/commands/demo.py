"""sandbox demo [--out DIR]: the README's first command, on embedded defaults.

Prints the analytic facts of three plans, then runs a short version of the
planning workflow: a small strategy search, the top plans simulated side by
side with a hand-written plan, and a report (`DIR/report.html` + PNGs).
"""

from __future__ import annotations

import argparse

from sandbox.commands._args import integer

HELP = "run the short end-to-end demo on the embedded defaults"

DEMO_PLANS = {
    "gpt-mini on this machine": {"model": {"preset": "gpt-mini"}},
    "gpt3-175b on 1,024 A100s (Megatron's plan)": {
        "model": {"preset": "gpt3-175b"},
        "cluster": {"preset": "dgx-a100-80g", "nodes": 128},
        "parallel": {"tp": 8, "pp": 16, "vpp": 3, "schedule": "interleaved-1f1b",
                     "global_batch": 1536}},
    "llama3-70b on 64 H100s": {
        "model": {"preset": "llama3-70b"},
        "cluster": {"preset": "dgx-h100", "nodes": 8},
        "parallel": {"tp": 8, "pp": 4, "global_batch": 256, "zero": 1}},
}
# The short search: GPT-3 1.3B on 4 DGX A100 nodes, 128 sequences per step.
SEARCH = {"model": "gpt3-1.3b", "cluster": "dgx-a100-80g", "gpus": 32, "global_batch": 128}
HAND_WRITTEN = {"model": {"preset": "gpt3-1.3b"},
                "cluster": {"preset": "dgx-a100-80g", "nodes": 4},
                "parallel": {"tp": 8, "pp": 2, "global_batch": 128, "micro_batch": 1,
                             "zero": 0, "recompute": "full"}}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo", help="folder for the demo's outputs")
    p.add_argument("--max-simulations", type=integer(1), default=16,
                   help="simulation budget of the demo's search")


def main(args: argparse.Namespace) -> int:
    import pandas as pd

    import sandbox
    from sandbox.calibration import warn_uncalibrated
    from sandbox.outputs import output_dir
    from sandbox.plots import plan_label
    from sandbox.report import report, shown_columns
    from sim.search import plan_of, run_search

    output_dir(args.out, "--out")
    for title, plan in DEMO_PLANS.items():
        print(f"== {title}")
        print(sandbox.info(sandbox.load(plan)))
        print()

    print(f"== search: {SEARCH['model']} on {SEARCH['gpus']} GPUs ({SEARCH['cluster']}), "
          f"global batch {SEARCH['global_batch']}")
    found = run_search(**SEARCH, top=5, max_simulations=args.max_simulations)
    result = found.table
    cols = ["dp", "tp", "pp", "vpp", "micro_batch", "zero", "recompute", "schedule",
            "step_time_s", "tokens_per_s", "mfu", "memory_gb"]
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(shown_columns(result, cols).to_string())
    print()

    plans = [plan_of(found, r) for r in result.index[:3]] + [sandbox.load(HAND_WRITTEN)]
    names = [f"#{i + 1} {plan_label(p)}" for i, p in enumerate(plans[:-1])]
    names.append(f"hand-written {plan_label(plans[-1])}")
    rep = report(plans, args.out, names=names, scaling=(0.5, 1.0, 2.0))
    print(f"== report: {rep.path} ({len(rep.pngs)} figures: "
          f"{', '.join(p.name for p in rep.pngs)})")
    warn_uncalibrated([found.base_plan.cluster, *(p.cluster for p in plans)])  # once each
    return 0
