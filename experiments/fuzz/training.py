"""Fuzz cases of training on this machine (issue 24): plans too big for host
memory on CPU, runs that diverge, special files and large corpora as
`train.data`, settings that used to give a NaN loss from step 1."""

from __future__ import annotations

import json
import os
from pathlib import Path

from experiments.fuzz.case import Case, plan_text

BIG_CPU = plan_text(preset="gpt3-1.3b", cluster="gpus_per_node = 8", parallel="dp = 8")
GPU_ON_CPU = plan_text(preset="gpt3-1.3b", cluster_preset="dgx-a100-80g", cluster="nodes = 1",
                       parallel="tp = 2\nglobal_batch = 16")
SMALL = "global_batch = 4\nmicro_batch = 2"
DIVERGES = plan_text(parallel=SMALL, train='lr = 100.0\ngrad_clip = 0.0\noptimizer = "sgd"\n'
                     'lr_schedule = "constant"\nsteps = 12\ncheckpoint_every = 2')
CORPUS_BYTES = 100_000_000
RSS_LIMIT_GB = 1.0  # per rank, on a 100 MB corpus (2.5 GB before tokens stayed uint8)


def _data_plan(path: str, steps: int = 2) -> str:
    return plan_text(parallel=SMALL, train=f'data = "{path}"\nsteps = {steps}')


def _fifo(d: Path) -> None:
    os.mkfifo(d / "corpus.txt")
    (d / "plan.toml").write_text(_data_plan(str(d / "corpus.txt")))


def _devzero(d: Path) -> None:
    (d / "corpus.txt").symlink_to("/dev/zero")
    (d / "plan.toml").write_text(_data_plan(str(d / "corpus.txt")))


def _fifo_in_dir(d: Path) -> None:
    (d / "data").mkdir()
    (d / "data" / "a.txt").write_text("some text\n" * 1000)
    os.mkfifo(d / "data" / "b.txt")
    (d / "plan.toml").write_text(_data_plan(str(d / "data")))


def _big_corpus(d: Path) -> None:
    """100 MB of Python source (os.py, repeated)."""
    chunk = Path(os.__file__).read_bytes()
    with open(d / "corpus.txt", "wb") as f:
        for _ in range(CORPUS_BYTES // len(chunk)):
            f.write(chunk)
        f.write(chunk[:CORPUS_BYTES % len(chunk)])
    (d / "plan.toml").write_text(_data_plan(str(d / "corpus.txt"), steps=3))


def _stopped_at_the_nan(d: Path, results: list) -> str:
    """One line naming the first non-finite step; the checkpoints before it kept."""
    r, run = results[0], d / "run"
    if r["rc"] in (0, None):
        return f"exit code {r['rc']}: want a refusal"
    from runtime.observe.train_log import is_step_line  # progress lines, not problems

    err = [ln for ln in r["stderr"].splitlines() if ln.strip() and not is_step_line(ln)]
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    step = rows[-1]["step"]
    if len(err) != 1 or f"step {step}: loss is" not in err[0]:
        return f"want one line naming step {step}: {err[-3:]}"
    kept = sorted(int(p.name.split("_")[1]) for p in (run / "checkpoints").glob("step_*"))
    return "" if kept == list(range(2, step, 2)) else f"checkpoints {kept} before step {step}"


def _small_rss(d: Path, results: list) -> str:
    if results[0]["rc"] != 0:
        return f"exit code {results[0]['rc']}"
    peak = json.loads((d / "run" / "summary.json").read_text())["peak_mem_gb"]
    return "" if peak < RSS_LIMIT_GB else f"peak RSS {peak:.2f} GB >= {RSS_LIMIT_GB} GB"


def _nothing_written(d: Path, results: list) -> str:
    return "--out was created" if (d / "run").exists() else ""


def cases() -> list[Case]:
    run = ["run", "{dir}/plan.toml", "--out", "{dir}/run"]
    refused = {"check": _nothing_written, "timeout_s": 30.0}
    return [
        Case("run on CPU, 8 gpt3-1.3b ranks > host memory", run,
             files={"plan.toml": BIG_CPU}, **refused),
        Case("compare on CPU, 8 gpt3-1.3b ranks > host memory",  # imports sim and torch
             ["compare", "{dir}/plan.toml", "--out", "{dir}/run"],
             files={"plan.toml": BIG_CPU}, cheap=False, **refused),
        Case("run a dgx-a100 tp 2 plan on CPU > host memory", run,
             files={"plan.toml": GPU_ON_CPU}, **refused),
        Case("run train.data is a fifo", run, setup=_fifo, **refused),
        Case("run train.data is /dev/zero", run, setup=_devzero, **refused),
        Case("run train.data dir holds a fifo", run, setup=_fifo_in_dir, **refused),
        Case("run norm_eps -1", run, files={"plan.toml": plan_text(model="norm_eps = -1.0")},
             **refused),
        Case("info rope_theta 0", ["info", "{dir}/plan.toml"],
             files={"plan.toml": plan_text(model="rope_theta = 0.0")}, timeout_s=10.0),
        Case("run diverging to NaN (lr 100, sgd, no clip)", run,
             files={"plan.toml": DIVERGES}, expect="custom", check=_stopped_at_the_nan,
             cheap=False, timeout_s=180),
        Case(f"run on a 100 MB corpus, peak RSS < {RSS_LIMIT_GB:g} GB", run, setup=_big_corpus,
             expect="custom", check=_small_rss, cheap=False, timeout_s=300),
    ]
