"""sandbox demo [--out DIR]: the README's first command, on embedded defaults."""

from __future__ import annotations

import argparse

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


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo", help="folder for the demo's outputs")


def main(args: argparse.Namespace) -> int:
    import sandbox

    for title, plan in DEMO_PLANS.items():
        print(f"== {title}")
        print(sandbox.info(sandbox.load(plan)))
        print()
    return 0
