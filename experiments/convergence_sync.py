"""Do gradient compression, parameter averaging and a parameter server converge?

The runtime's synchronisation variants (issue 8) trained side by side with
plain all-reduce DDP, each one a real `sandbox run` (torchrun, 2 gloo CPU
processes):

- model gpt-mini (6 layers, hidden 384, 10.8M parameters) with seq_len 64
  instead of 256 so that the whole comparison takes minutes on 2 CPU cores;
- dp 2, ZeRO 0, global batch 16 sequences (8 per replica), the builtin corpus;
- AdamW, lr 1e-3, cosine with 10 warm-up steps down to 10%, clipping at 1.0,
  fp32, seed 0, `--steps` steps (default 120), held-out loss every 20 steps.

Variants: allreduce; the fp16 / bf16 / int8 / topk:0.01 / powersgd:4 /
powersgd:32 compression hooks; local SGD averaging every 4 and every 8 steps; the
parameter server; asynchronous SGD (staleness 1).

Converged (criterion fixed before the runs): the final held-out loss is
within 3% (relative) of plain all-reduce's.

Bytes per step: what rank 0 sent to synchronise replicas, from the metrics'
`dp_comm_bytes` (`runtime.sync.traffic`: the tensors handed to
torch.distributed priced with bandwidth-optimal algorithms; for dp 2 that is
exactly the payload a rank gives away). Step time: the run's median after
warm-up; on a shared 2-core machine it is noisy and says little about a
cluster (gloo over loopback is fast next to CPU compute), so the table
records the load average around each run.

    flock /tmp/cpu.lock .venv/bin/python -m experiments.convergence_sync --only fp16
    .venv/bin/python -m experiments.convergence_sync             # all missing, then report

A finished run in WORKDIR/NAME (same plan) is reused, so variants can be run
one locked command at a time; the report is written from every finished run.
Writes experiments/results/convergence_sync.md, .json and .png (with `--name N`:
N.md, .json, .png, e.g. a longer run of a few variants:
`--steps 360 --only allreduce "local-sgd k=4" --workdir /tmp/cs360 --name convergence_sync_360`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import sandbox
from experiments import provenance

RESULTS = provenance.ROOT / "experiments" / "results"
MARGIN = 0.03  # converged: final held-out loss within 3% of all-reduce's
SMOOTH = 10  # steps in the moving average of the plotted training loss
VARIANTS = {  # name -> parallel overrides
    "allreduce": {},
    "fp16": {"grad_compression": "fp16"},
    "bf16": {"grad_compression": "bf16"},
    "int8": {"grad_compression": "int8"},
    "topk:0.01": {"grad_compression": "topk:0.01"},
    "powersgd:4": {"grad_compression": "powersgd:4"},
    "powersgd:32": {"grad_compression": "powersgd:32"},
    "local-sgd k=4": {"dp_mode": "local-sgd", "sync_every": 4},
    "local-sgd k=8": {"dp_mode": "local-sgd", "sync_every": 8},
    "parameter-server": {"dp_mode": "parameter-server"},
    "async": {"dp_mode": "async"},
}


def plan_for(name: str, steps: int) -> sandbox.specs.Plan:
    return sandbox.load({
        "model": {"preset": "gpt-mini", "seq_len": 64},
        "cluster": {"preset": "localhost"},
        "parallel": {"dp": 2, "zero": 0, "global_batch": 16, "micro_batch": 8,
                     **VARIANTS[name]},
        "train": {"precision": "fp32", "lr": 1e-3, "lr_schedule": "cosine", "warmup_steps": 10,
                  "min_lr_ratio": 0.1, "grad_clip": 1.0, "seed": 0, "steps": steps,
                  "eval_every": 20, "checkpoint_every": 0},
    })


def run_dir(workdir: Path, name: str) -> Path:
    return workdir / name.replace(":", "_").replace(" ", "_").replace("=", "")


def finished(out: Path, plan: sandbox.specs.Plan) -> bool:
    if not (out / "summary.json").is_file() or not (out / "plan.toml").is_file():
        return False
    return sandbox.load(out / "plan.toml") == plan


def train(name: str, steps: int, workdir: Path) -> None:
    """One `sandbox run` of the variant (skipped when already finished)."""
    from runtime.launch import run

    plan, out = plan_for(name, steps), run_dir(workdir, name)
    if finished(out, plan):
        print(f"{name}: reusing {out}")
        return
    if out.exists():  # an unfinished or different run of this script's scratch folder
        shutil.rmtree(out)
    load_before = provenance.load_average()[0]
    t0 = time.perf_counter()
    run(plan, out, progress=False, no_final_checkpoint=True)
    wall = provenance.wall_s(t0)
    (out / "provenance.json").write_text(json.dumps({
        "wall_s": wall, "load_before": load_before, "load_after": provenance.load_average()[0],
        "command": provenance.command("convergence_sync")}) + "\n")
    print(f"{name}: {wall:.0f} s")


def collect(name: str, steps: int, workdir: Path) -> dict | None:
    from runtime.rundir import read_metrics

    out = run_dir(workdir, name)
    if not finished(out, plan_for(name, steps)):
        return None
    rows = read_metrics(out / "metrics.jsonl")
    summary = json.loads((out / "summary.json").read_text())
    prov = json.loads((out / "provenance.json").read_text())
    losses = [r["loss"] for r in rows]
    sent = [r.get("dp_comm_bytes", 0.0) for r in rows]
    return {
        "variant": name, "parallel": VARIANTS[name],
        "loss": losses,
        "eval": [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r],
        "final_eval_loss": summary["eval_loss"],
        "final_train_loss_last10": statistics.fmean(losses[-10:]),
        "step_time_s": summary["step_time_s"],
        "bytes_per_step": statistics.fmean(sent),
        "bytes_per_step_by_step": sent,
        "device": summary["device"], "torch": summary["torch"], **prov,
    }


def smooth(values: list[float], k: int = SMOOTH) -> list[float]:
    return [statistics.fmean(values[max(0, i - k + 1):i + 1]) for i in range(len(values))]


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = results[0]
    fig = plt.figure(figsize=(15, 10))
    grid = fig.add_gridspec(2, 2, height_ratios=(1.2, 1))
    ax_loss, ax_gap = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])
    ax_bytes, ax_eval = fig.add_subplot(grid[1, 0]), fig.add_subplot(grid[1, 1])
    colors = plt.get_cmap("tab10").colors
    ref_s = smooth(ref["loss"])
    for i, r in enumerate(results):
        style = dict(color=colors[i % 10], lw=2.6 if i == 0 else 1.4,
                     ls="-" if i < 6 else "--", label=r["variant"])
        s = smooth(r["loss"])
        steps = range(1, len(s) + 1)
        ax_loss.plot(steps, s, **style)
        ax_gap.plot(steps, [a - b for a, b in zip(s, ref_s, strict=True)], **style)
        ev = r["eval"]
        ax_eval.plot([e[0] for e in ev], [e[1] for e in ev], marker="o", **style)
    ax_loss.set(title=f"training loss ({SMOOTH}-step moving average)", xlabel="step",
                ylabel="cross-entropy (nats/char)")
    ax_loss.set_ylim(top=min(ax_loss.get_ylim()[1], ref_s[0] + 0.3))
    ax_gap.axhline(0, color="black", lw=0.8)
    ax_gap.set(title="difference from all-reduce (smoothed training loss)", xlabel="step",
               ylabel="nats")
    ax_eval.set(title=f"held-out loss (converged: final within {MARGIN:.0%} of all-reduce)",
                xlabel="step", ylabel="nats/char")
    band = ref["final_eval_loss"] * MARGIN
    ax_eval.axhspan(ref["final_eval_loss"] - band, ref["final_eval_loss"] + band,
                    color="grey", alpha=0.2, label=f"all-reduce final ±{MARGIN:.0%}")
    names = [r["variant"] for r in results]
    mb = [r["bytes_per_step"] / 1e6 for r in results]
    bars = ax_bytes.barh(names, mb, color=[colors[i % 10] for i in range(len(results))])
    ax_bytes.invert_yaxis()
    ax_bytes.set_xscale("log")
    ax_bytes.bar_label(bars, labels=[f"{m:.2f} MB" for m in mb], padding=3, fontsize=9)
    ax_bytes.set(title="bytes sent per rank per step (mean over steps)", xlabel="MB (log)")
    ax_bytes.set_xlim(right=max(mb) * 8)
    for ax in (ax_loss, ax_gap, ax_eval):
        ax.grid(alpha=0.3)
    ax_loss.legend(fontsize=9, ncol=2)
    ax_eval.legend(fontsize=8, ncol=2)
    fig.suptitle("gpt-mini (seq 64), dp 2 on 2 gloo CPU processes: synchronisation variants "
                 "vs plain all-reduce", fontsize=13)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(results: list[dict], steps: int, machine: dict, command: str) -> str:
    ref = results[0]
    lines = [
        "# Synchronisation variants in the runtime: convergence against plain all-reduce",
        "",
        f"gpt-mini with seq_len 64, dp 2 (ZeRO 0) on 2 gloo CPU processes, global batch 16, "
        f"AdamW lr 1e-3 cosine (10 warm-up steps), clip 1.0, fp32, seed 0, {steps} steps. "
        f"Converged = final held-out loss within {MARGIN:.0%} of all-reduce's "
        "(criterion fixed before the runs). Bytes: sent by one rank per step for "
        "synchronisation (`dp_comm_bytes`, bandwidth-optimal algorithms; for dp 2 exactly the "
        "payload a rank gives away), mean over the run. Step time: median after warm-up "
        "on a shared 2-core machine (load average at start and end of each run given).",
        "",
        "| variant | final held-out loss | vs all-reduce | converged | train loss (last 10) "
        "| bytes / step | vs all-reduce | step time (s) | load |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        gap = (r["final_eval_loss"] - ref["final_eval_loss"]) / ref["final_eval_loss"]
        r["eval_gap"], r["converged"] = gap, abs(gap) <= MARGIN
        ratio = r["bytes_per_step"] / ref["bytes_per_step"]
        lines.append(
            f"| {r['variant']} | {r['final_eval_loss']:.4f} | {gap:+.2%} | "
            f"{'yes' if r['converged'] else 'NO'} | {r['final_train_loss_last10']:.4f} | "
            f"{r['bytes_per_step'] / 1e6:.2f} MB | {ratio:.3f} | {r['step_time_s']:.3f} | "
            f"{r['load_before']:.1f}-{r['load_after']:.1f} |")
    lines += [
        "",
        "Notes:",
        "- fp16 / bf16 / int8 / topk:0.01 / powersgd:4 / powersgd:32 are DDP communication "
        "hooks (`runtime/sync/grad_compression.py`); int8 (one scale per 1,024 entries) and top-k "
        "keep an error-feedback residual; PowerSGD (PyTorch's hook, with its error feedback) "
        "all-reduces plainly for its first 2 steps and leaves vectors and matrices that the "
        "rank would not halve uncompressed.",
        "- int8 with one scale per 25 MB bucket (the first version) ended 19% above all-reduce: "
        "a few large entries set the scale and most others rounded to zero.",
        "- local SGD averages parameters every k steps (PyTorch's PeriodicModelAverager) and "
        "after the last step; each replica steps AdamW on its own 8 sequences in between.",
        "- the parameter server (`runtime/sync/parameter_server.py`) computes the same update as "
        "all-reduce; its bytes equal all-reduce's at dp 2 (reduce + broadcast of each shard).",
        "- async applies each gradient one step late (staleness 1): its first step applies "
        "nothing.",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['platform']}; Python "
        f"{machine['python']}, torch {machine['versions'].get('torch')}; commit "
        f"{machine['git_commit']}. Device: {ref['device']}.",
        "",
        f"Command: {command}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--only", nargs="*", choices=list(VARIANTS), help="train only these")
    ap.add_argument("--report", action="store_true", help="do not train; report finished runs")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/convergence_sync"))
    ap.add_argument("--name", default="convergence_sync", help="results file name (no suffix)")
    args = ap.parse_args(argv)
    if not args.report:
        for name in args.only or VARIANTS:
            train(name, args.steps, args.workdir)
    names = args.only if args.only and args.name != "convergence_sync" else VARIANTS
    results = [r for name in names if (r := collect(name, args.steps, args.workdir))]
    if not results or results[0]["variant"] != "allreduce":
        print("no finished all-reduce run to compare with yet")
        return 0 if args.only else 1
    machine = provenance.machine(("torch", "numpy", "matplotlib"))
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.name == "convergence_sync":
        each, last = (provenance.command("convergence_sync", [a]) for a in ("--only", "--report"))
        command = f"`flock /tmp/cpu.lock {each} NAME` per variant, then `{last}`"
    else:
        command = f"`flock /tmp/cpu.lock {provenance.command('convergence_sync', argv)}`"
    md = report(results, args.steps, machine, command)
    (RESULTS / f"{args.name}.md").write_text(md)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(
        {"steps": args.steps, "margin": MARGIN, "machine": machine, "results": results},
        indent=1) + "\n")
    plot(results, RESULTS / f"{args.name}.png")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
