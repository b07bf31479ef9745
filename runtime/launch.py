"""`sandbox run`: check a plan on this machine, then launch it with torchrun.

    run(plan, out, steps=None, resume=False) -> RunResult

Before anything starts (and before anything in `out` changes) it checks: the
runtime implements the plan's synchronisation (`sandbox.validate.validate_runtime`), the
plan fits in memory (`sandbox.memory.fits`), this machine can give its world
size (GPUs: at most `torch.cuda.device_count()`; CPU: at most 4 processes
per core), the data is readable, `out` holds no earlier run unless resuming,
and the checkpoint to resume from is complete and intact. Each problem is a
`SandboxError` (one line). Then it writes `out/plan.toml` and runs

    python -m torch.distributed.run --standalone --nproc-per-node N
        [--max-restarts K] -m runtime.train --plan out/plan.toml --out out

streaming the workers' output to `out/train.log` with one plain line per
step (`runtime.observe.train_log`), shown as a progress bar on a terminal and as
the same lines on a stderr that is not one (Slurm, nohup, a pipe). Each
rank that fails with an exception leaves its error in `out/logs/`
(torchelastic's `record`).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from runtime.result import RunResult
from runtime.rundir import (
    LOCK_ENV,
    RunLock,
    refuse_existing_run,
    release_reserve,
    reserve,
    write_error,
    writing,
)
from sandbox.errors import SandboxError
from sandbox.runtime_rules import validate_runtime
from sandbox.specs import Plan

CPU_OVERSUBSCRIPTION = 4  # at most this many CPU processes per core
LOG_RESERVE = 1 << 20  # bytes set aside for train.log: a run that fills the disk still logs
ROOT = Path(__file__).resolve().parents[1]
PROGRESS, ERROR = "@@progress", "@@error"  # must match runtime.train
RANK_LOGS = "logs"  # torchrun's --log-dir inside the run directory


def device_capacity() -> tuple[str, int]:
    """("cuda", GPUs) on a GPU machine, else ("cpu", cores)."""
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.cuda.device_count()
    return "cpu", os.cpu_count() or 1


def check_world_size(plan: Plan) -> str | None:
    """Raise unless this machine can run the plan's world size; returns a note
    to show (or None)."""
    world = plan.world_size
    if plan.cluster.nodes > 1:
        raise SandboxError(f"the plan spans {plan.cluster.nodes} nodes; `sandbox run` uses this "
                           f"machine only (see README 'Running on a cluster' for torchrun)")
    kind, n = device_capacity()
    if kind == "cuda" and world > n:
        raise SandboxError(f"the plan needs {world} GPUs (dp*cp*tp*pp) but this machine has {n}")
    if kind == "cpu":
        if world > CPU_OVERSUBSCRIPTION * n:
            raise SandboxError(f"the plan needs {world} processes (dp*cp*tp*pp) but this machine "
                               f"has {n} CPU cores (at most {CPU_OVERSUBSCRIPTION * n} processes)")
        if world > n:
            return (f"note: {world} CPU processes on {n} cores (oversubscribed: slower, "
                    "same results)")
    return None


def host_memory_gb() -> float:
    """RAM this machine can give now, GB: /proc/meminfo's MemAvailable (else
    MemTotal, else the physical pages), capped by a cgroup v2 memory limit."""
    fields: dict[str, int] = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if rest.split():
                    fields[name] = int(rest.split()[0]) * 1024
    except (OSError, ValueError):
        pass
    avail = fields.get("MemAvailable") or fields.get("MemTotal")
    if not avail:
        avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:  # a container's limit, when it has one
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        if limit != "max":
            avail = min(avail, max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return avail / 1e9


def cpu_rank_memory_gb(plan: Plan) -> list[float]:
    """`sandbox.memory`'s estimate of each local rank of a CPU run, GB, in rank
    order of stages (every rank of stage s: dp*cp*tp of them). CPU ranks train in
    fp32 whatever `train.precision` says, so the estimate is for fp32."""
    from sandbox.memory import memory_per_gpu

    fp32 = plan if plan.train.precision == "fp32" else plan.replace(
        **{"train.precision": "fp32"})
    p = plan.parallel
    return [memory_per_gpu(fp32, stage)["total"] for stage in range(p.pp)
            for _ in range(p.dp * p.cp * p.tp)]


def check_memory(plan: Plan, kind: str | None = None,
                 available_gb: float | None = None) -> None:
    """Raise (one line) unless the plan fits where its ranks will run.

    kind: "cuda" (default on a GPU machine): each rank against the plan's GPU
    memory; "cpu": the ranks are processes sharing this host's RAM, so their
    sum (fp32, `cpu_rank_memory_gb`) is checked against `available_gb`
    (default `host_memory_gb()`)."""
    from sandbox.memory import fits, memory_per_gpu, usable_gb

    if (kind or device_capacity()[0]) == "cpu":
        ranks = cpu_rank_memory_gb(plan)
        need, most = sum(ranks), max(ranks)
        have = host_memory_gb() if available_gb is None else available_gb
        if need > have:
            each = (f"{len(ranks)} ranks x {most:.3g} GB" if min(ranks) == most else
                    f"{len(ranks)} ranks (up to {most:.3g} GB each)")
            raise SandboxError(f"the plan does not fit in memory on CPU: {each} = "
                               f"{need:.3g} GB (fp32) > {have:.3g} GB of host memory "
                               "available")
        return
    if not fits(plan):
        need, c = memory_per_gpu(plan)["total"], plan.cluster
        raise SandboxError(f"the plan does not fit in memory: {need:.3g} GB per device > "
                           f"{usable_gb(c.gpu.hbm_gb, c.memory_reserve):.3g} GB "
                           f"({c.gpu.hbm_gb:g} GB {c.gpu.name} less the "
                           f"{c.memory_reserve:.0%} cluster.memory_reserve)")


def check_out_dir(plan: Plan, out: Path, resume: bool) -> Path | None:
    """Refuse to overwrite a run; when resuming, return the intact checkpoint."""
    from runtime import checkpoint as ckpt

    if not resume:
        refuse_existing_run(out)
        return None
    if out.exists() and not out.is_dir():
        raise SandboxError(f"{out}: exists and is not a directory")
    found, skipped = ckpt.newest_intact(out)
    if skipped and found is None:
        raise SandboxError(f"no intact checkpoint to resume from: {skipped[0]}")
    if found is None:
        return None
    if skipped:
        print(f"note: resuming from {found.name}, the newest checkpoint that verifies; "
              f"passed over: {'; '.join(skipped)}", file=sys.stderr)
    if (out / "plan.toml").is_file():
        import sandbox

        before = sandbox.load(out / "plan.toml")
        if before.model != plan.model:
            raise SandboxError(f"{out}: --resume with a different model than the run's "
                               f"plan.toml ({before.model.name} vs {plan.model.name})")
    return found


def _last_error(log_lines: list[str]) -> str | None:
    """The workers' one-line error, or the last exception line in the log."""
    for line in reversed(log_lines):
        if ERROR in line:
            return line.split(ERROR, 1)[1].strip()
    pattern = re.compile(r"\b([A-Za-z_.]*(Error|Exception)): (.+)$")
    found = [m for m in map(pattern.search, log_lines)
             if m and "ChildFailedError" not in m.group(1)]
    # a crash on one rank makes the others fail on broken connections: prefer the cause
    causes = [m for m in found if not re.search(r"Connection (closed|reset)|gloo/transport",
                                                 m.group(3))]
    for m in causes[:1] or found[-1:]:
        return f"{m.group(1)}: {m.group(3).strip()}"[:300]
    return None


def torchrun_command(plan: Plan, out: Path, resume: bool = False, fail_at_step: int = 0,
                     fail_rank: int = 0, max_restarts: int = 0,
                     no_final_checkpoint: bool = False, profile_step: int = 0) -> list[str]:
    """The torchrun command line that trains `out/plan.toml` on this machine.
    A rank that fails with an exception leaves its error and traceback in
    out/logs/RUN/attempt_K/RANK/error.json (torchrun's --log-dir and
    torchelastic's `record`), which torchrun prints as the root cause. The
    ranks' output is not redirected to files there: it streams to train.log,
    which keeps a reserve for a full disk (`_Log`)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc-per-node", str(plan.world_size), "--max-restarts", str(max_restarts),
           "--log-dir", str(out / RANK_LOGS),
           "-m", "runtime.train", "--plan", str(out / "plan.toml"), "--out", str(out)]
    if resume:
        cmd.append("--resume")
    if fail_at_step:
        cmd += ["--fail-at-step", str(fail_at_step), "--fail-rank", str(fail_rank)]
    if no_final_checkpoint:
        cmd.append("--no-final-checkpoint")
    if profile_step:
        cmd += ["--profile-step", str(profile_step)]
    return cmd


class _Log:
    """train.log, appended line by line (unbuffered). A failed write (a full
    disk) stops nothing: the unwritten bytes are kept and tried again with each
    line and at the end (a failed checkpoint gives its space back); `problem`
    says what could not be written."""

    def __init__(self, path: Path):
        self.path, self.pending, self.problem = path, b"", ""
        with writing(path):
            self.f = open(path, "ab", buffering=0)
        reserve(self.f, LOG_RESERVE)

    def write(self, line: str) -> None:
        self.pending += line.encode("utf-8", errors="replace")
        try:
            while self.pending:  # what was written is dropped at once: no line twice
                self.pending = self.pending[os.write(self.f.fileno(), self.pending):]
            self.problem = ""
        except OSError as e:
            self.problem = str(write_error(self.path, e))

    def close(self) -> None:
        self.write("")
        release_reserve(self.f)
        self.f.close()


def _progress(line: str) -> dict | None:
    """The workers' progress record in a line, or None (also for a torn one)."""
    import json

    if PROGRESS not in line:
        return None
    try:
        info = json.loads(line.split(PROGRESS, 1)[1])
    except json.JSONDecodeError:
        return None
    return info if isinstance(info, dict) and {"step", "steps", "loss"} <= info.keys() else None


def _stream(cmd: list[str], out: Path, steps: int, progress: bool,
            env_extra: dict[str, str]) -> tuple[int, list[str], str]:
    """Run the workers; log their output and one line per step (train.log),
    and show progress on stderr: a bar on a terminal, else the same per-step
    lines (`runtime.observe.train_log`). Returns (exit code, log lines, what could
    not be written to train.log or "")."""

    from tqdm import tqdm

    from runtime.observe.train_log import bar_postfix, step_line

    env = {**os.environ, **env_extra, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                       os.environ.get("PYTHONPATH")]))}
    # one thread per CPU process unless told otherwise: OpenMP thread pools
    # spin badly when processes share cores (10-100x slower on a loaded machine)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    lines: list[str] = []
    times: list[float] = []
    tty = progress and sys.stderr.isatty()
    bar = tqdm(total=steps, unit="step", disable=not tty, file=sys.stderr,
               dynamic_ncols=True, leave=True,
               bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}, {postfix}]")
    log = _Log(out / "train.log")
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          bufsize=1, env=env, cwd=ROOT) as proc:
        try:
            for line in proc.stdout:
                info = _progress(line)
                if info is not None:
                    if "step_time_s" in info:
                        times.append(info["step_time_s"])
                    text = step_line(info)
                    log.write(text + "\n")
                    if tty:
                        bar.n = info["step"]
                        bar.set_postfix_str(bar_postfix(info, times), refresh=False)
                        bar.refresh()
                    elif progress:
                        print(text, file=sys.stderr, flush=True)
                    continue
                lines.append(line.rstrip("\n"))
                log.write(line)
            code = proc.wait()
        except KeyboardInterrupt:
            proc.terminate()
            proc.wait()
            raise
        finally:
            bar.close()
            log.close()
    return code, lines, log.problem


def check_runnable(plan: Plan) -> str | None:
    """Every check of the plan against this machine that `run` makes before it
    touches `out` (callers that run later, like `sandbox compare`, make them
    first): what the runtime implements, memory, world size, data. Raises
    SandboxError (one line); returns a note to show (or None)."""
    from runtime.data.loader import check_data

    validate_runtime(plan)  # what only the simulator models is refused here
    check_memory(plan)
    note = check_world_size(plan)
    check_data(plan.train.data, plan.model.seq_len, plan.model.vocab)
    return note


def run(plan: Plan, out: str | Path, steps: int | None = None, resume: bool = False,
        fail_at_step: int = 0, fail_rank: int = 0, max_restarts: int = 0,
        progress: bool = True, no_final_checkpoint: bool = False,
        profile_step: int = 0) -> RunResult:
    """Train `plan` on this machine into `out`; returns the RunResult.

    steps: override train.steps. resume: continue from the newest complete
    checkpoint in `out` (appending to metrics.jsonl). fail_at_step / fail_rank:
    make that rank exit at that step once (failure injection); max_restarts:
    torchrun elastic restarts, each resuming from the newest checkpoint.
    profile_step: trace that step with torch.profiler (`runtime.observe.step_trace`).
    Raises SandboxError (one line) on bad input or a failed run; never
    deletes checkpoints or metrics.
    """
    out = Path(out).resolve()  # the workers run from the checkout (cwd=ROOT)
    if steps is not None:
        if steps <= 0:
            raise SandboxError(f"--steps: must be positive, got {steps}")
        plan = plan.replace(steps=steps)
    if fail_at_step and not 0 <= fail_rank < plan.world_size:
        raise SandboxError(f"--fail-rank: {fail_rank} is not a rank of a world of "
                           f"{plan.world_size}")
    if max_restarts < 0:
        raise SandboxError(f"--max-restarts: must not be negative, got {max_restarts}")
    if not 0 <= profile_step <= plan.train.steps:
        raise SandboxError(f"--profile-step: {profile_step} is not a step of this run "
                           f"(1..{plan.train.steps})")
    if not resume:  # the cheapest refusal first: before torch is imported
        refuse_existing_run(out)
    note = check_runnable(plan)
    if plan.train.data != "builtin":  # the workers' cwd is the checkout, not ours
        plan = plan.replace(**{"train.data": str(Path(plan.train.data).resolve())})
    check_out_dir(plan, out, resume)
    if note and progress:
        print(note, file=sys.stderr)
    with RunLock.acquire(out) as lock:  # one launch per directory; nothing written before
        check_out_dir(plan, out, resume)  # again under the lock: another launch may have won
        with writing(out / "plan.toml"):
            (out / "plan.toml").write_text(plan.to_toml())
        cmd = torchrun_command(plan, out, resume, fail_at_step, fail_rank, max_restarts,
                               no_final_checkpoint, profile_step)
        code, lines, unlogged = _stream(cmd, out, plan.train.steps, progress,
                                        {LOCK_ENV: lock.token})
    log = f"log: {out / 'train.log'}" if not unlogged else f"and {unlogged}"
    if code != 0:
        why = _last_error(lines) or f"the workers exited with code {code}"
        raise SandboxError(f"run failed: {why} ({log})")
    if unlogged:
        print(f"warning: {unlogged}", file=sys.stderr)
    return RunResult.load(out)
