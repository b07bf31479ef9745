"""One sweep trial: the plan with the trial's values, run for real (`sandbox run`) or
simulated (`sandbox simulate --json`) in its own folder, and its objective value.

A trial is a child process (`python -m sandbox.sweep_trial PLAN DIR`, which is
`sandbox.run` without the final checkpoint, or `python -m sandbox simulate`) so
that trials run side by side, a pruned one can be stopped (its whole process
group), and a failure is
that trial's and not the sweep's. A real run's per-step training loss is read
from `metrics.jsonl` as it grows and reported to Optuna's pruner.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sandbox.errors import SandboxError
from sandbox.sweep_spec import LOSSES, SweepSpec

ROOT = Path(__file__).resolve().parents[1]
POLL_S = 0.5  # seconds between looks at a running trial's metrics.jsonl
STOP_GRACE_S = 10.0  # seconds a pruned trial gets to exit before SIGKILL


class TrialFailed(SandboxError):
    """A trial that could not produce its objective (one line: why)."""


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def _last_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines()
                 if ln.strip()]
    except OSError:
        return "no output"
    errors = [ln for ln in lines if "error" in ln.lower()]
    return (errors or lines or ["no output"])[-1][:300]


def _stop(proc: subprocess.Popen) -> None:
    """Stop a trial's process group (the child and, for a run, torchrun's workers)."""
    for sig, wait in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def read_losses(metrics: Path, seen: int) -> tuple[list[tuple[int, float]], int]:
    """New (step, loss) rows of a growing metrics.jsonl after byte offset `seen` ->
    (rows, new offset); a torn last line waits for the next look."""
    try:
        with open(metrics, "rb") as f:
            f.seek(seen)
            data = f.read()
    except OSError:
        return [], seen
    rows, used = [], 0
    for line in data.split(b"\n")[:-1]:
        used += len(line) + 1
        try:
            row = json.loads(line)
            loss = float(row["loss"])
            step = int(row["step"])
        except (ValueError, KeyError, TypeError):
            continue
        if math.isfinite(loss):
            rows.append((step, loss))
    return rows, seen + used


def field_value(result: dict, name: str) -> float:
    """A (dotted) numeric field of a result dict; val_loss is eval_loss, else final_loss."""
    if name == "val_loss":
        name = "eval_loss" if result.get("eval_loss") is not None else "final_loss"
    node: Any = result
    for part in name.split("."):
        if not isinstance(node, dict) or part not in node:
            raise TrialFailed(f"the result has no field '{name}'")
        node = node[part]
    if isinstance(node, bool) or not isinstance(node, (int, float)) or not math.isfinite(node):
        raise TrialFailed(f"{name} = {node!r} is not a finite number")
    return float(node)


def _launch(cmd: list[str], log: Path) -> subprocess.Popen:
    """Start a trial's child in its own process group, output to `log`."""
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def watch(proc: subprocess.Popen, metrics: Path, trial: Any = None) -> None:
    """Wait for a trial's process; with a `trial` (optuna.Trial) report each new step's
    training loss in `metrics` (metrics.jsonl) and, when the pruner says so, stop the
    process group and raise optuna.TrialPruned."""
    seen, reported = 0, set()
    try:
        while proc.poll() is None:
            time.sleep(POLL_S)
            if trial is None:
                continue
            rows, seen = read_losses(metrics, seen)
            for step, loss in rows:
                if step not in reported:
                    trial.report(loss, step)
                    reported.add(step)
            if reported and trial.should_prune():
                import optuna

                _stop(proc)
                raise optuna.TrialPruned(f"pruned at step {max(reported)}")
    except BaseException:
        if proc.poll() is None:
            _stop(proc)
        raise


def run_trial(spec: SweepSpec, plan_toml: Path, folder: Path, trial: Any = None) -> dict:
    """Run the trial's plan into `folder` -> its summary.json. With a `trial` and a loss
    objective each step's loss feeds the pruner (`watch`)."""
    cmd = [sys.executable, "-m", "sandbox.sweep_trial", str(plan_toml), str(folder)]
    proc = _launch(cmd, folder / "sweep.log")
    prune = trial is not None and spec.pruner != "none" and spec.objective in LOSSES
    watch(proc, folder / "metrics.jsonl", trial if prune else None)
    if proc.returncode:
        raise TrialFailed(_last_line(folder / "sweep.log"))
    try:
        return json.loads((folder / "summary.json").read_text())
    except (OSError, ValueError) as e:
        raise TrialFailed(f"summary.json unreadable: {e}") from None


def simulate_trial(plan_toml: Path, folder: Path) -> dict:
    """`sandbox simulate --json` the trial's plan -> the result, also kept as
    `folder/simulate.json`; adds usd_per_million_tokens (GPU rental per 1e6 tokens)."""
    cmd = [sys.executable, "-m", "sandbox", "simulate", str(plan_toml), "--json"]
    r = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True,
                       stdin=subprocess.DEVNULL)
    (folder / "sweep.log").write_text(r.stderr)
    if r.returncode:
        raise TrialFailed(_last_line(folder / "sweep.log"))
    try:
        result = json.loads(r.stdout)
    except ValueError:
        raise TrialFailed("simulate printed no JSON") from None
    (folder / "simulate.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def evaluate(spec: SweepSpec, params: dict, folder: Path, trial: Any = None) -> float:
    """Build, write and execute one trial in `folder` -> its objective value."""
    from sandbox.errors import PlanError

    folder.mkdir(parents=True, exist_ok=True)
    try:
        plan = spec.plan_for(params)
    except PlanError as e:
        raise TrialFailed(f"invalid plan: {e.problems[0] if e.problems else e}") from None
    plan_toml = folder / "trial.toml"
    plan_toml.write_text(plan.to_toml())
    if spec.mode == "run":
        return field_value(run_trial(spec, plan_toml, folder, trial), spec.objective)
    result = simulate_trial(plan_toml, folder)
    if spec.objective == "usd_per_million_tokens":
        gpu_h = result["step_time_s"] * plan.world_size / 3600.0
        result["usd_per_million_tokens"] = (gpu_h * plan.cluster.usd_per_gpu_hour
                                            / plan.tokens_per_step * 1e6)
    return field_value(result, spec.objective)


def _child(argv: list[str]) -> int:
    """`python -m sandbox.sweep_trial PLAN DIR`: `sandbox run` without a final checkpoint
    (a trial is judged, not resumed); a problem is one line on stderr, exit 1."""
    import sandbox

    try:
        sandbox.run(sandbox.load(argv[0]), argv[1], progress=False, no_final_checkpoint=True)
    except SandboxError as e:
        print(f"sandbox sweep: error: {str(e).splitlines()[0] if str(e) else e}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
