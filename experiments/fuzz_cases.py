"""The probe set of `experiments/fuzz_cli.py`: bad numbers, bad files, foreign run
directories, concurrent launches, bad generation arguments.

A `Case` is plain data: the `sandbox` arguments to run (in a scratch folder,
`{dir}` standing for it), the files to write there first, a setup step that
needs more than files (a FIFO, a finished run, a planted pickle), what it
expects (`"error"`: a non-zero exit with one clean line; `"ok"`: exit 0), the
paths whose bytes must not change (data loss), and whether it is cheap
(seconds: the test suite runs those). Concurrent cases run their commands at
once and check them together (`check`).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

MARKER = "PWNED"  # a planted pickle creates this file when it is unpickled


@dataclass(frozen=True)
class Case:
    """One probe. argv: `sandbox` arguments, or a list of such lists run at
    once; files: name -> text written into the scratch folder; setup: called
    with the scratch folder after the files; expect: "error" | "ok" | "custom"
    (then `check` decides); protect: globs (in the folder) that must keep their
    bytes; torchrun: run `torchrun ... -m runtime.train` instead of `sandbox`."""

    name: str
    argv: list
    files: dict[str, str] = field(default_factory=dict)
    setup: Callable[[Path], None] | None = None
    expect: str = "error"
    protect: tuple[str, ...] = ()
    cheap: bool = True
    timeout_s: float = 30.0
    check: Callable[[Path, list], str] | None = None  # returns "" when fine, else the problem
    concurrent: bool = False


def plan_text(model: str = "", cluster: str = "", parallel: str = "", train: str = "",
              preset: str = "tiny", cluster_preset: str = "localhost") -> str:
    """A small plan with extra lines in each section."""
    return (f'[model]\npreset = "{preset}"\n{model}\n'
            f'[cluster]\npreset = "{cluster_preset}"\n{cluster}\n'
            f"[parallel]\n{parallel}\n[train]\n{train}\n")


def _bad_plan(name: str, section: str, line: str, **kw) -> list[Case]:
    """`info` and `simulate` on a plan with one bad line."""
    text = plan_text(**{section: line}, **kw)
    commands = ("simulate",) if name in SIMULATOR_LIMITS else ("info", "simulate")
    return [Case(f"{cmd} {name}", [cmd, "{dir}/plan.toml"], files={"plan.toml": text},
                 timeout_s=10.0) for cmd in commands]


SIMULATOR_LIMITS = {"2**28 micro-batches"}  # a valid plan; only simulating it is too much


A100 = {"cluster_preset": "dgx-a100-80g", "preset": "gpt-mini", "parallel": "global_batch = 1024"}
BAD_NUMBERS = [
    ("nic nan", "cluster", "nodes = 2\nnic_gbit_per_s = nan", A100),
    ("intra-node inf", "cluster", "intra_node_gb_per_s = inf", A100),
    ("nic negative", "cluster", "nic_gbit_per_s = -1.0", A100),
    ("slowdown inf", "cluster", "slow_gpus = [0]\nslow_gpu_slowdown = inf", A100),
    ("slowdown nan", "cluster", "slow_gpus = [0]\nslow_gpu_slowdown = nan", A100),
    ("latency nan", "cluster", "intra_node_latency_us = nan", A100),
    ("nodes 10**9", "cluster", "nodes = 1000000000", {**A100, "parallel": "tp = 8"}),
    ("layers 10**7", "model", "layers = 10000000", {}),
    ("hidden 10**9", "model", "hidden = 1000000000", {}),
    ("seq_len 0", "model", "seq_len = 0", {}),
    ("seq_len 10**9", "model", "seq_len = 1000000000", {}),
    ("vocab 10**12", "model", "vocab = 1000000000000", {}),
    ("layers float", "model", "layers = 2.5", {}),
    ("layers bool", "model", "layers = true", {}),
    ("layers string", "model", 'layers = "six"', {}),
    ("vpp 10**6", "parallel", 'pp = 2\nvpp = 1000000\nschedule = "interleaved-1f1b"', {}),
    ("micro_batch 10**9", "parallel", "micro_batch = 1000000000", {}),
    ("global_batch 10**15", "parallel", "global_batch = 1000000000000000", {}),
    ("2**28 micro-batches", "parallel", "global_batch = 268435456", {}),
    ("lr nan", "train", "lr = nan", {}),
    ("lr inf", "train", "lr = inf", {}),
    ("steps -1", "train", "steps = -1", {}),
]


def _fifo(d: Path) -> None:
    os.mkfifo(d / "plan.toml")


def _devzero(d: Path) -> None:
    (d / "plan.toml").symlink_to("/dev/zero")


def _big(d: Path) -> None:
    with open(d / "plan.toml", "wb") as f:
        f.truncate(200 * 2**20)  # 200 MiB of zeros, sparse


def _binary(d: Path) -> None:
    (d / "plan.toml").write_bytes(b"\xff\xfe\x00[model]\x00\x9c")


def _dir(d: Path) -> None:
    (d / "plan.toml").mkdir()


BAD_FILES = [("fifo", _fifo), ("/dev/zero", _devzero), ("200 MiB file", _big),
             ("binary bytes", _binary), ("a directory", _dir)]


def file_cases() -> list[Case]:
    out = [Case(f"{cmd} plan is {name}", [cmd, "{dir}/plan.toml"], setup=fn, timeout_s=10.0)
           for name, fn in BAD_FILES for cmd in ("info", "simulate")]
    out.append(Case("info malformed toml", ["info", "{dir}/plan.toml"],
                    files={"plan.toml": "[model\npreset = "}, timeout_s=10.0))
    out.append(Case("info missing file", ["info", "{dir}/nope.toml"], timeout_s=10.0))
    out.append(Case("info empty plan (defaults)", ["info", "{dir}/plan.toml"],
                    files={"plan.toml": ""}, expect="ok", timeout_s=10.0))
    return out


def plan_cases() -> list[Case]:
    out = []
    for name, section, line, kw in BAD_NUMBERS:
        out += _bad_plan(name, section, line, **kw)
    return out + file_cases()


# --- run directories -----------------------------------------------------------------

RUN_PLAN = plan_text(parallel="global_batch = 4\nmicro_batch = 2",
                     train='lr = 1e-3\nlr_schedule = "constant"\nsteps = 4\ncheckpoint_every = 2')


class _Planted:
    """Unpickling this creates the marker file: proof that code ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def planted_pickle(marker: Path) -> bytes:
    return pickle.dumps(_Planted(str(marker)))


def finished_run(d: Path, steps: int = 4) -> Path:
    """A finished tiny run in d/run (trained here, once per case)."""
    import subprocess
    import sys

    (d / "plan.toml").write_text(RUN_PLAN)
    subprocess.run([sys.executable, "-m", "sandbox", "run", str(d / "plan.toml"), "--out",
                    str(d / "run"), "--steps", str(steps)], check=True, capture_output=True)
    return d / "run"


def newest_ckpt(run: Path) -> Path:
    return max((run / "checkpoints").glob("step_*"))


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
             timeout_s=120),
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


def _same_output(d: Path, results: list) -> str:
    outs = {r["stdout"] for r in results}
    return "" if len(outs) == 1 and all(r["rc"] == 0 for r in results) else \
        "concurrent identical searches gave different results"


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


def all_cases() -> list[Case]:
    return [*plan_cases(), *run_cases(), *generate_cases(),
            Case("two identical searches at once", [SEARCH, SEARCH], expect="custom",
                 check=_same_output, concurrent=True, cheap=False, timeout_s=120)]
