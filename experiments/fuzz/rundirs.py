"""Fuzz cases that train a tiny run first: planted pickles, corrupt checkpoints,
launches into finished or busy folders, bad generation arguments, concurrent searches."""

from __future__ import annotations

import json
from pathlib import Path

from experiments.fuzz.case import MARKER, RUN_PLAN, Case, finished_run, newest_ckpt, planted_pickle


def _plant_rng(d: Path) -> None:
    run = finished_run(d)
    (newest_ckpt(run) / "rng_rank0.pt").write_bytes(planted_pickle(d / MARKER))


def _plant_metadata(d: Path) -> None:
    run = finished_run(d)
    for ck in (run / "checkpoints").glob("step_*"):
        (ck / ".metadata").write_bytes(planted_pickle(d / MARKER))


def _corrupt_newest(d: Path) -> None:
    run = finished_run(d)
    for f in newest_ckpt(run).glob("*.distcp"):
        f.write_bytes(b"garbage")


def _summary_only(d: Path) -> None:
    (d / "run").mkdir()
    (d / "run" / "summary.json").write_text('{"final_loss": 1.0}\n')
    (d / "plan.toml").write_text(RUN_PLAN)


def _steps_logged_once(d: Path, results: list) -> str:
    """Two launches into one folder: one ran, one refused, each step logged once."""
    codes = sorted(r["rc"] for r in results)
    if codes[0] != 0 or codes[1] == 0:
        return f"exit codes {codes}: want one run and one refusal"
    steps = [line.split('"step": ')[1].split(",")[0]
             for line in (d / "run" / "metrics.jsonl").read_text().splitlines()]
    return "" if len(steps) == len(set(steps)) else f"steps logged twice: {steps}"


def _no_marker(d: Path, results: list) -> str:
    return "planted pickle executed" if (d / MARKER).exists() else ""


def run_cases() -> list[Case]:
    """Cases that train a tiny run first (tens of seconds each)."""
    run = ["run", "{dir}/plan.toml", "--out", "{dir}/run"]
    return [
        Case("run --resume, planted rng pickle", [*run, "--resume", "--steps", "6"],
             setup=_plant_rng, expect="custom", check=_no_marker, cheap=False, timeout_s=120),
        Case("export, planted .metadata pickle",
             ["export", "{dir}/run", "--out", "{dir}/m.onnx"], setup=_plant_metadata,
             expect="custom", check=_no_marker, cheap=False, timeout_s=120),
        Case("run --resume, corrupt newest checkpoint", [*run, "--resume", "--steps", "6"],
             setup=_corrupt_newest, expect="ok", cheap=False, timeout_s=120),
        Case("run without --resume into a finished run", run, setup=lambda d: finished_run(d),
             protect=("run/**/*",), cheap=False, timeout_s=120),
        Case("torchrun runtime.train without --resume into a finished run",
             ["--plan", "{dir}/run/plan.toml", "--out", "{dir}/run"],
             setup=lambda d: finished_run(d), protect=("run/**/*",), cheap=False,
             timeout_s=120, entry="torchrun"),
        Case("run into a folder holding summary.json", run, setup=_summary_only,
             protect=("run/**/*",), timeout_s=30),
        Case("two runs into one fresh folder", [run, run], files={"plan.toml": RUN_PLAN},
             expect="custom", check=_steps_logged_once, concurrent=True, cheap=False,
             timeout_s=180),
    ]


def _exported(d: Path) -> None:
    import subprocess
    import sys

    run = finished_run(d)
    subprocess.run([sys.executable, "-m", "sandbox", "export", str(run), "--out",
                    str(d / "m.onnx")], check=True, capture_output=True)


def _without_wall_time(text: str) -> str:
    """The search's JSON rows less `sim_wall_s` (how long each simulation took
    to run here: a measurement, the one field that may differ)."""
    rows = json.loads(text)
    return json.dumps([{k: v for k, v in r.items() if k != "sim_wall_s"} for r in rows])


def _same_output(d: Path, results: list) -> str:
    if not all(r["rc"] == 0 for r in results):
        return "a search failed"
    outs = {_without_wall_time(r["stdout"]) for r in results}
    return "" if len(outs) == 1 else "concurrent identical searches gave different results"


def generate_cases() -> list[Case]:
    gen = ["generate", "{dir}/m.onnx", "--prompt"]
    return [
        Case("generate --temperature nan", [*gen, "ab", "--temperature", "nan"],
             setup=_exported, cheap=False, timeout_s=120),
        Case("generate --max-new-tokens 10**9", [*gen, "ab", "--max-new-tokens", "1000000000"],
             setup=_exported, cheap=False, timeout_s=120),
        Case("generate empty prompt", [*gen, ""], setup=_exported, cheap=False, timeout_s=120),
    ]


SEARCH = ["search", "--model", "gpt3-1.3b", "--cluster", "dgx-a100-80g", "--gpus", "16",
          "--global-batch", "64", "--top", "5", "--json"]


def cases() -> list[Case]:
    return [*run_cases(), *generate_cases(),
            Case("two identical searches at once", [SEARCH, SEARCH], expect="custom",
                 check=_same_output, concurrent=True, cheap=False, timeout_s=120)]
