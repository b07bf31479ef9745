"""What every experiment records beside its numbers: the machine, the versions,
the commit, the command that made them, the load around them and the time.

One place for all scripts, so that every result file says the same things
the same way:

    from experiments import provenance
    t0 = time.perf_counter()
    ...
    meta = {"command": provenance.command("validate_vtrain", argv),
            "machine": provenance.machine(("simpy", "networkx")),
            "wall_s": provenance.wall_s(t0)}
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the checkout: experiments/..
# A published run fit on its GPUs, so the validations reproduce it without the planning
# margin of `cluster.memory_reserve` (memory kept free for a plan not yet run): every
# published row's cluster gets reserve 0.
AS_PUBLISHED = {"memory_reserve": 0.0}


def package_version(package: str) -> str:
    """The installed version of `package`, or 'not installed'."""
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def git_commit() -> str:
    """Short hash of the checkout's HEAD ('' outside a git checkout)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else the platform's word)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> tuple[float, float, float]:
    """The 1-, 5- and 15-minute load averages (processes waiting for a core)."""
    return os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)


def utc_now(fmt: str = "%Y-%m-%dT%H:%M:%SZ") -> str:
    """The current time in UTC, formatted with `fmt`."""
    return time.strftime(fmt, time.gmtime())


def wall_s(t0: float) -> float:
    """Seconds of wall time since `t0` (a `time.perf_counter()` reading)."""
    return time.perf_counter() - t0


def command(script: str, argv: Sequence[str] | None = None) -> str:
    """The command line that reruns `experiments/<script>.py` with `argv`
    (default: this process's arguments), from the checkout root."""
    args = sys.argv[1:] if argv is None else list(argv)
    return shlex.join(["python", "-m", f"experiments.{script}", *args])


def gpu_info() -> dict[str, str]:
    """Name of the first CUDA device and the CUDA / NCCL versions (imports torch)."""
    import torch

    return {"gpu": torch.cuda.get_device_name(0), "cuda": str(torch.version.cuda),
            "nccl": ".".join(map(str, torch.cuda.nccl.version()))}


def machine(packages: tuple[str, ...] = ("numpy",), device: str = "cpu") -> dict:
    """Host, CPU model, cores, platform, Python, git commit, 1-minute load average
    and the versions of `packages`; with `device="cuda"` also the GPU, CUDA and
    NCCL (`gpu_info`)."""
    info = {"host": platform.node(), "cpu": cpu_model(), "cores": os.cpu_count() or 1,
            "platform": platform.platform(), "python": platform.python_version(),
            "git_commit": git_commit(), "loadavg_1m": load_average()[0],
            "versions": {p: package_version(p) for p in packages}}
    if device == "cuda":
        info.update(gpu_info())
    return info
