"""Single-device runtime benchmark: tokens/s, MFU and peak memory, eager vs compiled.

    python -m experiments.bench_runtime                     # GPU: the three GPT sizes
    python -m experiments.bench_runtime --models tiny --steps 3 --modes eager   # CPU check

Each (model, mode) trains `--steps` steps through `sandbox run`'s own path
(`runtime.launch.run`: torchrun, one process, bf16 autocast on GPU, fp32 on
CPU; compiled = `train.compile`, GPU only) and reads its summary.json: the
median step time after warm-up, MFU by the shared definition
(`sandbox.counts.model_flops_per_step` / (step time x peak dense FLOP/s)).
Results go to experiments/results/bench_runtime.json and .md with the
machine, versions and command. On a machine without a GPU the table says so:
CPU numbers are a smoke test, not a measurement of the GPU runtime.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from experiments import provenance

ROOT = provenance.ROOT

MODELS = ("gpt2-124m", "gpt2-350m", "gpt3-1.3b")
MICRO_BATCH = {"gpt2-124m": 16, "gpt2-350m": 8, "gpt3-1.3b": 4, "tiny": 8}


def bench_one(model: str, compiled: bool, steps: int, micro_batch: int, gpu: bool) -> dict:
    import sandbox
    from runtime.launch import run

    plan = sandbox.load({
        "model": {"preset": model},
        "cluster": {"preset": "localhost", "gpus_per_node": 1},
        "parallel": {"dp": 1, "micro_batch": micro_batch, "global_batch": micro_batch,
                     "recompute": "none"},
        "train": {"steps": steps, "compile": compiled, "lr_schedule": "constant",
                  "precision": "bf16" if gpu else "fp32", "checkpoint_every": 0},
    })
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        s = run(plan, Path(tmp) / "run", progress=False, no_final_checkpoint=True).to_dict()
        wall = time.perf_counter() - t0
    return {"model": model, "mode": "compiled" if compiled else "eager",
            "micro_batch": micro_batch, "seq_len": plan.model.seq_len, "steps": steps,
            "step_time_s": s["step_time_s"], "tokens_per_s": s["tokens_per_s"],
            "mfu": s["mfu"], "peak_mem_gb": s["peak_mem_gb"], "final_loss": s["final_loss"],
            "device": s["device"], "precision": s["precision"], "compiled": s["compiled"],
            "wall_s": wall}


def markdown(rows: list[dict], meta: dict) -> str:
    where = meta["machine"].get("gpu") or "CPU (no GPU on this machine: smoke test only)"
    lines = [f"# Runtime benchmark on {where}", "",
             f"`{meta['command']}`  ", f"torch {meta['machine']['versions']['torch']}, "
             f"python {meta['machine']['python']}, {meta['date']}", "",
             "| model | mode | micro batch | step (s) | tokens/s | MFU | peak mem (GB) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['mode']} | | error: {r['error']} | | | |")
            continue
        lines.append(f"| {r['model']} | {r['mode']} | {r['micro_batch']} | "
                     f"{r['step_time_s']:.4g} | {r['tokens_per_s']:,.0f} | "
                     f"{100 * r['mfu']:.1f}% | {r['peak_mem_gb']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import torch

    from sandbox.errors import SandboxError

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--modes", default="eager,compiled", help="eager, compiled or both")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--micro-batch", type=int, default=0, help="0: a per-model default")
    ap.add_argument("--out", default=str(ROOT / "experiments" / "results"))
    args = ap.parse_args(argv)
    gpu = torch.cuda.is_available()
    rows = []
    for model in args.models.split(","):
        for mode in args.modes.split(","):
            compiled = mode == "compiled"
            if compiled and not gpu:
                print(f"{model} compiled: skipped (torch.compile runs on GPU only)")
                continue
            mb = args.micro_batch or MICRO_BATCH.get(model, 4)
            try:
                row = bench_one(model, compiled, args.steps, mb, gpu)
            except SandboxError as e:
                row = {"model": model, "mode": mode, "error": str(e).splitlines()[0]}
            rows.append(row)
            print(json.dumps(row))
    meta = {"machine": provenance.machine(("torch",), "cuda" if gpu else "cpu"),
            "date": provenance.utc_now("%Y-%m-%d %H:%M UTC"),
            "command": provenance.command("bench_runtime", argv),
            "note": None if gpu else "ran on CPU: no GPU on this machine; not GPU numbers"}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_runtime.json").write_text(json.dumps({**meta, "results": rows}, indent=2))
    table = markdown(rows, meta)
    (out / "bench_runtime.md").write_text(table)
    print(table)
    if not gpu:
        print("note: ran on CPU (no GPU on this machine); these are not GPU measurements")
    return 0


if __name__ == "__main__":
    sys.exit(main())
