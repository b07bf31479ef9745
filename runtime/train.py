"""The per-process training loop, run by torchrun (one process per device).

    torchrun --standalone --nproc-per-node N -m runtime.train --plan DIR/plan.toml --out DIR

Each process: init the process group (NCCL on GPUs, gloo on CPU), build the
(pp, dp, cp, tp) mesh, `parallelize` the plan, then per step: this dp rank's
slice of the layout-free global batch -> `runtime.step.train_step`
(forward/backward, unscale, clip, optimizer, after-step sync, LR schedule).
Rank 0 appends one JSON line per step to DIR/metrics.jsonl
(`step, loss, step_time_s, tokens_per_s, mem_gb, lr, grad_norm`, plus
`eval_loss` when evaluated, `aux_loss` for a mixture of experts and, on
plain data parallelism, `dp_comm_bytes`:
the bytes rank 0 sent to synchronise replicas in that step), prints
`@@progress {...}` lines for the launcher's progress bar, and at the end
writes DIR/summary.json. A problem with the input, a loss that diverged
(`runtime.step.Divergence`: the step is logged, no checkpoint of it is saved)
or a file that could not be written (a full disk) prints `@@error <one line>`
and exits 1.

Resuming (`--resume`, or any elastic restart by torchrun): load the newest
complete checkpoint and drop metrics lines after its step.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import json
import os
import resource
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record

from runtime import checkpoint as ckpt
from runtime.data.loader import DataLoader, check_data, dp_slice
from runtime.loss_scale import DynamicLossScale
from runtime.lr import build_scheduler, lr_at
from runtime.observe.summary import max_over_ranks, peak_memory_gb, run_summary
from runtime.observe.train_log import TensorBoard
from runtime.process import compile_blocks, init_process_group, seed_everything, setup_device
from runtime.rundir import (
    RunLock,
    read_metrics,
    refuse_existing_run,
    trim_metrics,
    write_all,
    writing,
)
from runtime.step import Divergence, _no_mark, train_step
from sandbox.errors import SandboxError

PROGRESS, ERROR = "@@progress", "@@error"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="runtime.train", description=__doc__.splitlines()[0])
    p.add_argument("--plan", required=True, help="plan TOML (e.g. DIR/plan.toml)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--steps", type=int, default=None, help="override train.steps")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    p.add_argument("--fail-at-step", type=int, default=0, help="inject a failure at this step")
    p.add_argument("--fail-rank", type=int, default=0, help="rank that fails")
    p.add_argument("--no-final-checkpoint", action="store_true",
                   help="do not checkpoint after the last step")
    p.add_argument("--profile-step", type=int, default=0,
                   help="trace this step with torch.profiler (DIR/profile/)")
    return p.parse_args(argv)


def keep_tokenizer(source: str, out: Path) -> None:
    """Copy a prepared data directory's tokenizer.json into the run (export and
    generate decode with it); byte-level data needs none."""
    from runtime.data.shards import TOKENIZER, is_prepared

    if not is_prepared(source):
        return
    src = Path(source).expanduser() / TOKENIZER
    with writing(out / TOKENIZER):
        data = src.read_bytes()
        if not (out / TOKENIZER).is_file() or (out / TOKENIZER).read_bytes() != data:
            (out / TOKENIZER).write_bytes(data)


class Trainer:
    """State of one training process; `run()` trains and writes the outputs."""

    def __init__(self, args: argparse.Namespace):
        import sandbox
        from runtime.parallel.parallelize import parallelize

        self.args, self.out = args, Path(args.out)
        plan = sandbox.load(args.plan)
        if args.steps:
            plan = plan.replace(steps=args.steps)
        self.plan = plan
        self.device, backend = setup_device()
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        if self.world != plan.world_size:
            raise SandboxError(f"this job has {self.world} processes but the plan needs "
                               f"dp*cp*tp*pp = {plan.world_size}")
        restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0)) > 0
        self.resuming = bool(args.resume or restarted)
        if not self.resuming:  # every rank, before any rank writes anything
            refuse_existing_run(self.out)
        if self.world > 1 and not dist.is_initialized():
            init_process_group(backend, self.device)
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.lock: RunLock | None = None  # ours to release; None under `sandbox run`'s
        if self.rank == 0:
            if RunLock.held_by_launcher(self.out) is None:
                self.lock = RunLock.acquire(self.out)
            try:
                if not self.resuming:  # again under the lock: a launch may have won the race
                    refuse_existing_run(self.out)
            except SandboxError:
                self.release()
                raise
            if not self.resuming or not (self.out / "plan.toml").exists():
                with writing(self.out / "plan.toml"):  # the run describes itself (export)
                    (self.out / "plan.toml").write_text(plan.to_toml())
            keep_tokenizer(plan.train.data, self.out)
        self.backend = backend
        seed_everything(plan.train.seed)
        check_data(plan.train.data, plan.model.seq_len, plan.model.vocab)
        self.data = DataLoader.from_plan(plan)
        mesh = None
        if self.world > 1:
            from runtime.parallel.mesh import build_mesh

            mesh = build_mesh(plan, self.device.type)
        self.base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # bytes
        self.par = parallelize(plan, mesh, self.device)
        self.dp_rank = mesh["dp"].get_local_rank() if mesh is not None else 0
        if plan.train.compile and self.device.type == "cuda":
            compile_blocks(self.par.parts)
        self.optimizer = self.par.build_optimizer()
        self.scheduler = build_scheduler(self.optimizer, plan.train)
        self.metrics_path = self.out / "metrics.jsonl"
        self.scaler = DynamicLossScale() if plan.train.precision == "fp16" else None
        if self.scaler is not None:
            self.par.loss_scale = self.scaler.scale
        self.divergence = Divergence(self.out, self.scaler)

    def release(self) -> None:
        """Give up the run directory's lock if this process took it."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def _meta(self) -> dict[str, Any]:
        """What a checkpoint keeps besides tensors and the scheduler."""
        meta: dict[str, Any] = {"plan": self.plan.model.name}
        if self.scaler is not None:
            meta["loss_scale"] = self.scaler.state_dict()
        return meta

    def _restore(self) -> int:
        """Load the newest complete checkpoint if resuming; returns the first step."""
        if not self.resuming:
            if self.rank == 0:
                with writing(self.metrics_path):
                    self.metrics_path.write_text("")
            return 0
        found, skipped = ckpt.newest_intact(self.out)
        if skipped and found is None:
            raise SandboxError(f"no intact checkpoint to resume from: {skipped[0]}")
        if skipped and self.rank == 0:  # kept for inspection, out of the way of later saves
            ckpt.set_aside(self.out, found)
            print(f"note: resuming from {found.name}; passed over: {'; '.join(skipped)}",
                  flush=True)
        start = 0
        if found is not None:
            meta = ckpt.load(found, self.par.parts, self.optimizer, self.scheduler)
            start = int(meta["step"])
            if self.scaler is not None and "loss_scale" in meta:
                self.scaler.load_state_dict(meta["loss_scale"])
                self.par.loss_scale = self.scaler.scale
            for group in self.optimizer.param_groups:
                group["lr"] = lr_at(start, self.plan.train)
        if self.rank == 0:
            trim_metrics(self.metrics_path, start)
        return start

    def _batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.data.global_batch_at(step)
        dp = self.plan.parallel.dp
        return dp_slice(x, self.dp_rank, dp), dp_slice(y, self.dp_rank, dp)

    def evaluate(self) -> float:
        """Mean held-out loss over the fixed evaluation batches."""
        dp, losses = self.plan.parallel.dp, []
        for x, y in self.data.eval_batches():
            losses.append(self.par.evaluate(dp_slice(x, self.dp_rank, dp),
                                            dp_slice(y, self.dp_rank, dp)))
        return sum(losses) / len(losses)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _maybe_fail(self, step: int) -> None:
        a = self.args
        if a.fail_at_step != step or self.rank != a.fail_rank:
            return
        marker = self.out / f".failed_at_step_{step}"
        if marker.exists():
            return
        marker.write_text(f"rank {self.rank}\n")
        print(f"{ERROR} injected failure at step {step} on rank {self.rank}", flush=True)
        os._exit(17)

    def run(self) -> dict[str, Any]:
        t = self.plan.train
        start = self._restore()
        if self.world > 1:
            dist.barrier()
        times: list[float] = []
        with writing(self.metrics_path):
            log = open(self.metrics_path if self.rank == 0 else os.devnull, "ab", buffering=0)
        tb = TensorBoard(self.out, start) if self.rank == 0 else None
        try:
            with log:
                row, saved = self._train(start, times, log, tb)
        finally:
            if tb is not None:
                tb.close()
        if saved != t.steps and not self.args.no_final_checkpoint and start < t.steps:
            ckpt.save(self.out, t.steps, self.par.parts, self.optimizer, self.scheduler,
                      self._meta())
        summary = self.summary(times, row, start)
        if self.scaler is not None and self.rank == 0:
            logged = read_metrics(self.metrics_path)
            summary.update(loss_scale=self.scaler.scale,
                           skipped_steps=sum(bool(r.get("skipped")) for r in logged))
        if self.rank == 0:
            with writing(self.out / "summary.json"):
                (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary

    def _train(self, start: int, times: list[float], log: Any,
               tb: TensorBoard | None) -> tuple[dict[str, Any], int]:
        """Steps start+1 .. train.steps; returns the last metrics row and the
        last step checkpointed (-1: none)."""
        plan, t = self.plan, self.plan.train
        tokens = plan.tokens_per_step
        row: dict[str, Any] = {}
        saved = -1
        for step in range(start + 1, t.steps + 1):  # `step` = steps done after this one
            self._sync()
            t0 = time.perf_counter()
            x, y = self._batch(step - 1)
            ckpt_now = bool(t.checkpoint_every and step % t.checkpoint_every == 0)
            with self._profiling(step) as mark:
                res = train_step(self.par, self.optimizer, x, y, step, t.grad_clip,
                                 scheduler=self.scheduler, scaler=self.scaler,
                                 sync=ckpt_now or step == t.steps,
                                 after_backward=lambda s=step: self._maybe_fail(s), mark=mark)
                self._sync()
            dt = time.perf_counter() - t0
            row = {"step": step, "loss": res.loss, "step_time_s": dt,
                   "tokens_per_s": tokens / dt,
                   "mem_gb": max_over_ranks(peak_memory_gb(self.device), self.device),
                   "lr": res.lr, "grad_norm": res.grad_norm}
            if step == self.args.profile_step:  # slowed by the profiler: not in the summary
                row["profiled"] = True
            else:
                times.append(dt)
            if self.scaler is not None:
                row.update(loss_scale=res.loss_scale, skipped=not res.updated)
            if res.aux_loss is not None:
                row["aux_loss"] = res.aux_loss  # MoE load balance, not in `loss`
            if (sent := self.par.comm_bytes()) is not None:
                row["dp_comm_bytes"] = sent  # sent by this rank for dp sync
            diverged = self.divergence.why(res)
            if not diverged and (step == t.steps or t.eval_every
                                 and step % t.eval_every == 0):
                row["eval_loss"] = self.evaluate()
            with writing(self.metrics_path):
                write_all(log, (json.dumps(row) + "\n").encode())
            if tb is not None:
                tb.log(row)
            if diverged:  # logged; no checkpoint of what diverged
                raise self.divergence.error(step, diverged)
            if self.rank == 0:
                keep = ("step", "loss", "lr", "grad_norm", "step_time_s", "tokens_per_s",
                        "mem_gb", "eval_loss")
                info = {"steps": t.steps, **{k: row[k] for k in keep if k in row}}
                print(f"{PROGRESS} " + json.dumps(info), flush=True)
            if ckpt_now:
                ckpt.save(self.out, step, self.par.parts, self.optimizer, self.scheduler,
                          self._meta())
                saved = step
        return row, saved

    def _profiling(self, step: int) -> contextlib.AbstractContextManager:
        """Around step `step`: nothing, or with --profile-step that step's
        torch.profiler trace (`runtime.observe.step_trace`)."""
        if step != self.args.profile_step:
            return contextlib.nullcontext(_no_mark)
        from runtime.observe.step_trace import StepTrace

        return StepTrace(self.out, step, self.rank, self.device, self.plan, self.base_rss)

    def summary(self, times: list[float], last: dict[str, Any], start: int) -> dict[str, Any]:
        """summary.json (see `runtime.observe.summary.run_summary`); with nothing left to
        train, from the logged steps."""
        if not times:
            rows = read_metrics(self.metrics_path)
            times = [r["step_time_s"] for r in rows]
            last = rows[-1] if rows else {}
        return run_summary(self.plan, self.device, self.backend, self.world, times, last, start)


@record  # an uncaught exception: torchrun shows the failing rank's error (logs/.../error.json)
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID` prints every thread's stack
    trainer = None
    try:
        trainer = Trainer(args)
        trainer.run()
        code = 0
    except (SandboxError, OSError) as e:  # an OSError with a path: a file we could not write
        if isinstance(e, OSError) and e.filename is None:
            raise
        why = e if isinstance(e, SandboxError) else f"{e.filename}: {e.strerror or e}"
        print(f"{ERROR} {str(why).splitlines()[0]}", flush=True)
        code = 1
    finally:
        if trainer is not None:
            trainer.release()
    if dist.is_initialized():
        if code == 0:
            dist.barrier()  # no rank tears its groups down while a peer still uses them
        dist.destroy_process_group()
    return code


if __name__ == "__main__":
    # Everything is written and closed by now. Skipping the interpreter's teardown
    # avoids an intermittent abort there ("terminate called without an active
    # exception" from a gloo thread, about 1 pp-2 CPU run in 16), which turned a
    # finished run into a failed one.
    exit_code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)
