"""The real data path end to end on CPU: prepare-data (BPE 8192), then gpt-mini on it.

    .venv/bin/python -m experiments.data_path [--work /tmp/data_path]

1. `sandbox prepare-data builtin --out WORK/bpe8192 --tokenizer bpe --vocab 8192`;
2. `sandbox run` of a gpt-mini plan with `vocab = 8192`, `data = WORK/bpe8192`,
   dp = 2 CPU processes, 40 steps, with stdout and stderr piped (not a
   terminal), into WORK/run.

Checks (issue 20's "It must show"): the loss falls by at least 20% (first
step's loss vs the mean of the last 5), the run holds TensorBoard events
and train.log holds one line per step. Writes OUT/data_path.json and
OUT/data_path.md with the commands, the machine and the numbers. The run
directory is then the input of `experiments.bench_export --vocab-run`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from experiments import provenance

ROOT = provenance.ROOT
STEPS = 40


def plan_text(data: Path) -> str:
    return f"""[model]
preset = "gpt-mini"
vocab = 8192
[cluster]
preset = "localhost"
[parallel]
dp = 2
micro_batch = 8
global_batch = 16
recompute = "none"
[train]
steps = {STEPS}
lr = 2e-3
warmup_steps = 4
precision = "fp32"
eval_every = 20
checkpoint_every = {STEPS}
data = "{data}"
"""


def _cli(*args: str) -> tuple[list[str], subprocess.CompletedProcess, float]:
    cmd = [sys.executable, "-m", "sandbox", *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        sys.exit(f"data_path: {shlex.join(['sandbox', *args])} failed: {proc.stderr[-800:]}")
    return cmd, proc, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/data_path")
    ap.add_argument("--out", default=str(ROOT / "experiments" / "results"))
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data, run_dir = work / "bpe8192", work / "run"
    load0, commit = provenance.load_average(), provenance.git_commit()  # the code that runs
    prep_args = ("prepare-data", "builtin", "--out", str(data), "--tokenizer", "bpe",
                 "--vocab", "8192")
    _, prep, prep_s = _cli(*prep_args)
    meta = json.loads((data / "meta.json").read_text())
    plan = work / "gpt-mini-bpe8192.toml"
    plan.write_text(plan_text(data))
    run_args = ("run", str(plan), "--out", str(run_dir))
    _, run, run_s = _cli(*run_args)
    rows = [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows]
    last5 = sum(losses[-5:]) / 5
    fall = 1 - last5 / losses[0]
    log_lines = [s for s in (run_dir / "train.log").read_text().splitlines()
                 if s.startswith("step ")]
    stderr_lines = [s for s in run.stderr.splitlines() if s.startswith("step ")]
    events = sorted(p.name for p in (run_dir / "tb").glob("events.out.tfevents.*"))
    summary = json.loads((run_dir / "summary.json").read_text())
    checks = {"loss falls >= 20%": fall >= 0.20,
              "TensorBoard events in the run": bool(events),
              "train.log: one line per step (output piped)": len(log_lines) == STEPS,
              "stderr: one line per step (not a terminal)": len(stderr_lines) == STEPS}
    result = {
        "commands": [shlex.join(["sandbox", *prep_args]), shlex.join(["sandbox", *run_args])],
        "plan": plan.read_text(), "machine": provenance.machine(("torch", "tokenizers",
                                                                  "tensorboard", "numpy")),
        "git_commit": commit, "date_utc": provenance.utc_now(),
        "load_before": load0, "load_after": provenance.load_average(),
        "prepare": {"wall_s": prep_s, "vocab": meta["vocab"], "tokens": meta["tokens"],
                    "bytes_per_token": meta["bytes_per_token"], "split": meta["split"],
                    "dtype": meta["dtype"], "shards": len(meta["shards"])},
        "run": {"wall_s": run_s, "first_loss": losses[0], "last_loss": losses[-1],
                "mean_last5_loss": last5, "loss_fall": fall,
                "eval_loss": summary.get("eval_loss"), "step_time_s": summary["step_time_s"],
                "tokens_per_s": summary["tokens_per_s"], "device": summary["device"],
                "peak_mem_gb": summary["peak_mem_gb"], "tb_events": events,
                "train_log_step_lines": len(log_lines), "stderr_step_lines": len(stderr_lines),
                "first_lines": log_lines[:2], "last_line": log_lines[-1:]},
        "run_dir": str(run_dir), "checks": checks}
    out = Path(args.out)
    (out / "data_path.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "data_path.md").write_text(render(result))
    print(render(result))
    return 0 if all(checks.values()) else 1


def render(r: dict) -> str:
    m, p, run = r["machine"], r["prepare"], r["run"]
    lines = [
        "# The real data path: prepare-data BPE 8192, gpt-mini on 2 CPU processes", "",
        f"- machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores (shared), "
        f"{m.get('platform', '')}; commit {r['git_commit']}, {r['date_utc']}; load average "
        f"before {'/'.join(f'{x:.1f}' for x in r['load_before'])}",
        f"- versions: {', '.join(f'{k} {v}' for k, v in m.get('versions', {}).items())}",
        "- commands (made by `python -m experiments.data_path`):",
        *[f"  - `{c}`" for c in r["commands"]],
        f"- prepare-data: {p['wall_s']:.0f} s; byte-level BPE of {p['vocab']:,} ids, "
        f"{p['tokens']:,} tokens ({p['bytes_per_token']:.2f} bytes/token, {p['dtype']}, "
        f"{p['shards']} shard), train {p['split']['train'][1]:,} / held out "
        f"{p['split']['val'][1] - p['split']['val'][0]:,}",
        f"- run: {run['device']}, {run['wall_s']:.0f} s wall, median step "
        f"{run['step_time_s']:.2f} s, {run['tokens_per_s']:,.0f} tokens/s, peak memory "
        f"{run['peak_mem_gb']:.2f} GB per rank",
        f"- loss: first step {run['first_loss']:.3f}, last {run['last_loss']:.3f}, mean of "
        f"the last 5 {run['mean_last5_loss']:.3f}: **{run['loss_fall']:.1%} lower**; "
        f"held-out loss {run['eval_loss']:.3f}",
        f"- TensorBoard: {', '.join(run['tb_events'])} in run/tb/",
        f"- train.log: {run['train_log_step_lines']} step lines; stderr (piped): "
        f"{run['stderr_step_lines']}; e.g. `{run['first_lines'][0]}`", "",
        "| check | result |", "|---|---|",
        *[f"| {k} | {'met' if v else 'missed'} |" for k, v in r["checks"].items()], ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
