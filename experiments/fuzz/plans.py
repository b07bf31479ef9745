"""Fuzz cases of plan files: bad numbers and files that are not plans."""

from __future__ import annotations

import os
from pathlib import Path

from experiments.fuzz.case import Case, plan_text

FAST_S = 5.0  # seconds: issue 16 asks bad numbers and files to be refused this fast


def _bad_plan(name: str, section: str, line: str, **kw) -> list[Case]:
    """`info` and `simulate` on a plan with one bad line."""
    text = plan_text(**{section: line}, **kw)
    commands = ("simulate",) if name in SIMULATOR_LIMITS else ("info", "simulate")
    return [Case(f"{cmd} {name}", [cmd, "{dir}/plan.toml"], files={"plan.toml": text},
                 timeout_s=10.0, max_wall_s=FAST_S) for cmd in commands]


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
    out = [Case(f"{cmd} plan is {name}", [cmd, "{dir}/plan.toml"], setup=fn, timeout_s=10.0,
                max_wall_s=FAST_S)
           for name, fn in BAD_FILES for cmd in ("info", "simulate")]
    out.append(Case("info malformed toml", ["info", "{dir}/plan.toml"],
                    files={"plan.toml": "[model\npreset = "}, timeout_s=10.0))
    out.append(Case("info missing file", ["info", "{dir}/nope.toml"], timeout_s=10.0))
    out.append(Case("info empty plan (defaults)", ["info", "{dir}/plan.toml"],
                    files={"plan.toml": ""}, expect="ok", timeout_s=10.0))
    return out


def cases() -> list[Case]:
    out = []
    for name, section, line, kw in BAD_NUMBERS:
        out += _bad_plan(name, section, line, **kw)
    return out + file_cases()


