"""sandbox demo [--out DIR]: the README's first command, on embedded defaults.

One model, one cluster, three ways to split it: Llama 2 13B on 32 A100s
(4 DGX A100 nodes, 128 sequences of 4,096 tokens per step) with tensor
parallelism, with pipeline parallelism, and with sharded data parallelism
(ZeRO-3 / FSDP), each paying a different cost: activations all-reduced in
every layer, the pipeline's bubble, parameters gathered before every
micro-batch. A strategy search over the same setting adds its best plan.
Prints each plan's facts and where its step goes, then writes the report
(`DIR/report.html` + PNGs, the "why" under each figure) and, to show the
rank layout of a large plan, the facts of Megatron's GPT-3 175B plan.
"""

from __future__ import annotations

import argparse

from sandbox.commands._args import integer

HELP = "run the short end-to-end demo on the embedded defaults"

MODEL = "llama2-13b"
CLUSTER = {"preset": "dgx-a100-80g", "nodes": 4}
GLOBAL_BATCH = 128
THREE_WAYS = {  # name -> [parallel] of the plan
    "tensor parallel": {"tp": 8, "micro_batch": 2},
    "pipeline parallel": {"pp": 8, "micro_batch": 1},
    "sharded data parallel": {"zero": 3, "micro_batch": 1},
}
# the search of the same setting
SEARCH = {"model": MODEL, "cluster": CLUSTER["preset"], "gpus": 32,
          "global_batch": GLOBAL_BATCH}
LARGE = ("gpt3-175b on 1,024 A100s (Megatron's plan)", {
    "model": {"preset": "gpt3-175b"},
    "cluster": {"preset": "dgx-a100-80g", "nodes": 128},
    "parallel": {"tp": 8, "pp": 16, "vpp": 3, "schedule": "interleaved-1f1b",
                 "global_batch": 1536}})


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo", help="folder for the demo's outputs")
    p.add_argument("--max-simulations", type=integer(1), default=16,
                   help="simulation budget of the demo's search")


def three_ways() -> dict:
    """The demo's three plans (name -> Plan) of one model on one cluster."""
    import sandbox

    return {name: sandbox.load({"model": {"preset": MODEL}, "cluster": CLUSTER,
                                "parallel": {"global_batch": GLOBAL_BATCH, **par}})
            for name, par in THREE_WAYS.items()}


def _same_layout(a, b) -> bool:
    keys = ("dp", "tp", "pp", "vpp", "micro_batch", "zero", "recompute", "schedule")
    return all(getattr(a.parallel, k) == getattr(b.parallel, k) for k in keys)


def main(args: argparse.Namespace) -> int:
    import pandas as pd

    import sandbox
    from sandbox import units as u
    from sandbox.calibration import warn_uncalibrated
    from sandbox.outputs import output_dir
    from sandbox.plots import plan_label
    from sandbox.report import report, shown_columns
    from sandbox.report_notes import LABEL, largest_overhead
    from sim.search import plan_of, run_search

    output_dir(args.out, "--out")
    plans = three_ways()
    print(f"== {MODEL} on 32 A100s ({CLUSTER['preset']} x {CLUSTER['nodes']}), "
          f"{GLOBAL_BATCH} sequences per step: three ways to split it")
    for name, plan in plans.items():
        d = sandbox.simulate(plan, timeline=False).to_dict()
        part, s = largest_overhead(d["breakdown_s"])
        cost = f"{u.percent(s / d['step_time_s'])} to {LABEL.get(part, part)}" if part else "-"
        print(f"{name:<22} {plan_label(plan):<30} step {u.seconds(d['step_time_s']):>8}  "
              f"MFU {u.percent(d['mfu']):>6}  memory {u.gib(d['memory_gb_per_gpu']['total'])}"
              f"  loses {cost}")
    print()

    print(f"== search: {SEARCH['model']} on {SEARCH['gpus']} GPUs ({SEARCH['cluster']}), "
          f"global batch {SEARCH['global_batch']}")
    found = run_search(**SEARCH, top=5, max_simulations=args.max_simulations)
    result = found.table
    cols = ["dp", "tp", "pp", "vpp", "micro_batch", "zero", "recompute", "schedule",
            "step_time_s", "tokens_per_s", "mfu", "memory_gb"]
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(shown_columns(result, cols).to_string())
    best = plan_of(found, result.index[0])
    twin = next((n for n, p in plans.items() if _same_layout(p, best)), None)
    if twin:
        print(f"the search's best plan is the {twin} one")
    else:
        plans["search's best"] = best
    print()

    names = [f"{n}: {plan_label(p)}" for n, p in plans.items()]
    rep = report(list(plans.values()), args.out, names=names, scaling=(0.5, 1.0, 2.0))
    print(f"== report: {rep.path} ({len(rep.pngs)} figures)")
    for png in rep.pngs:
        why = rep.notes.get(png.name, "")
        print(f"{png.name}: {why}" if why else png.name)
    print()

    title, plan = LARGE
    print(f"== {title}")
    print(sandbox.info(sandbox.load(plan)))
    warn_uncalibrated([found.base_plan.cluster, *(p.cluster for p in plans.values())])
    return 0
