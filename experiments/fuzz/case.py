"""A fuzz case as plain data, and the helpers cases share (plan text, a trained
run, a planted pickle).

A `Case` is the `sandbox` arguments to run (in a scratch folder, `{dir}`
standing for it), the files to write there first, a setup step that needs more
than files (a FIFO, a finished run, a planted pickle), what it expects
(`"error"`: a non-zero exit with one clean line; `"ok"`: exit 0; `"custom"`:
`check` decides), the paths whose bytes must not change (data loss), and
whether it is cheap (seconds: the test suite runs those), and the peak resident
memory its process tree may reach (`max_rss_mb`). Concurrent cases run
their commands at once and are checked together.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_RSS_MB = 1536.0  # a case's process tree past this resident memory is "unbounded memory"
MARKER = "PWNED"  # a planted pickle creates this file when it is unpickled


@dataclass(frozen=True)
class Case:
    """One probe. argv: `sandbox` arguments, or a list of such lists run at
    once; files: name -> text written into the scratch folder; setup: called
    with the scratch folder after the files; expect: "error" | "ok" | "custom"
    (then `check` decides); protect: globs (in the folder) that must keep their
    bytes; entry: "sandbox" (the CLI) or "torchrun" (`torchrun -m runtime.train`,
    whose own failure report is not held to the one-line rule); max_rss_mb:
    the whole process tree's peak resident memory limit, MB."""

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
    entry: str = "sandbox"
    max_wall_s: float | None = None  # a clean error must also come this fast
    max_rss_mb: float = DEFAULT_RSS_MB  # peak RSS of the whole process tree, MB


def plan_text(model: str = "", cluster: str = "", parallel: str = "", train: str = "",
              preset: str = "tiny", cluster_preset: str = "localhost") -> str:
    """A small plan with extra lines in each section."""
    return (f'[model]\npreset = "{preset}"\n{model}\n'
            f'[cluster]\npreset = "{cluster_preset}"\n{cluster}\n'
            f"[parallel]\n{parallel}\n[train]\n{train}\n")


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


# what a run, report or comparison writes: none may appear in the checkout (the cases' cwd)
ROOT_OUTPUTS = ("metrics.jsonl", "summary.json", "train.log", "checkpoints", "report.html",
                "compare.json", "breakdown.png", "plan.toml")


def unchanged_root(d: Path, results: list) -> str:
    """`--out ''` must not write into the current directory (the checkout root)."""
    root = Path(__file__).resolve().parents[2]
    found = [n for n in ROOT_OUTPUTS if (root / n).exists()]
    return f"wrote {', '.join(found)} into the current directory" if found else ""


def newest_ckpt(run: Path) -> Path:
    return max((run / "checkpoints").glob("step_*"))


