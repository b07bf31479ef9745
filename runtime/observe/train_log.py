"""What a run tells people while it trains: per-step lines, the bar, TensorBoard.

- `step_line(info)` (`is_step_line` tells one apart): one plain line per
  step (train.log always; stderr when stderr is not a terminal: Slurm,
  nohup, a pipe), e.g.

      step 12/40 loss 6.1234 lr 1.00e-03 grad_norm 1.234 step 0.186 s 5,504 tokens/s mem 0.36 GB

- `bar_postfix(info, times)`: the terminal bar's text, whose rate is the
  median of the step times the workers measured (the same numbers as
  metrics.jsonl and the summary), not the wall time between bar updates
  (which counts start-up, evaluation and checkpoints);
- `TensorBoard(out, start)`: rank 0's event files in DIR/tb/
  (`torch.utils.tensorboard`): train/loss, train/lr, train/grad_norm,
  perf/step_time_s, perf/tokens_per_s, perf/mem_gb and eval/loss, by step.
  `tensorboard --logdir DIR/tb` shows them; `wandb sync DIR/tb` uploads them.
  A resumed run purges the steps after its checkpoint.
"""

from __future__ import annotations

import re
import statistics
from pathlib import Path
from typing import Any

TB_DIR = "tb"
STEP_LINE = re.compile(r"^step \d+/\d+ loss ")


def is_step_line(line: str) -> bool:
    """Whether a line of `sandbox run`'s stderr is a progress line (`step_line`),
    not a problem: a failed run's stderr is its step lines, then one error line."""
    return bool(STEP_LINE.match(line))


def step_line(info: dict[str, Any]) -> str:
    """One step's progress line (no newline) from the workers' progress record."""
    parts = [f"step {info['step']}/{info['steps']}", f"loss {info['loss']:.4f}"]
    if "lr" in info:
        parts.append(f"lr {info['lr']:.2e}")
    if "grad_norm" in info:
        parts.append(f"grad_norm {info['grad_norm']:.3g}")
    if "step_time_s" in info:
        parts.append(f"step {info['step_time_s']:.3f} s")
    if "tokens_per_s" in info:
        parts.append(f"{info['tokens_per_s']:,.0f} tokens/s")
    if "mem_gb" in info:
        parts.append(f"mem {info['mem_gb']:.3g} GB")
    if "eval_loss" in info:
        parts.append(f"eval_loss {info['eval_loss']:.4f}")
    return " ".join(parts)


def bar_postfix(info: dict[str, Any], times: list[float]) -> str:
    """The bar's text: loss, the median measured step time and the time left."""
    text = f"loss {info['loss']:.4f}"
    if times:
        med = statistics.median(times)
        left = med * max(0, info["steps"] - info["step"])
        text += f", {med:.3f} s/step, {left:.0f} s left"
    return text


class TensorBoard:
    """Rank 0's scalars for TensorBoard (and W&B's `sync`), in DIR/tb/."""

    TAGS = {"loss": "train/loss", "lr": "train/lr", "grad_norm": "train/grad_norm",
            "step_time_s": "perf/step_time_s", "tokens_per_s": "perf/tokens_per_s",
            "mem_gb": "perf/mem_gb", "eval_loss": "eval/loss", "aux_loss": "train/aux_loss"}

    def __init__(self, out: Path, start: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        self.path = Path(out) / TB_DIR
        self.writer = None
        try:
            self.writer = SummaryWriter(log_dir=str(self.path),
                                        purge_step=start + 1 if start else None)
        except OSError as e:
            self._failed(e)

    def _failed(self, e: OSError) -> None:
        """Events are a view of metrics.jsonl: a write that fails (a full disk)
        stops them with a note, never the run or the error that matters."""
        print(f"note: {self.path}: cannot write TensorBoard events "
              f"({e.strerror or e}); metrics.jsonl has every step", flush=True)
        self.writer = None

    def log(self, row: dict[str, Any]) -> None:
        if self.writer is None:
            return
        try:
            for key, tag in self.TAGS.items():
                v = row.get(key)
                if isinstance(v, (int, float)) and v == v and abs(v) != float("inf"):
                    self.writer.add_scalar(tag, float(v), int(row["step"]))
        except OSError as e:
            self._failed(e)

    def close(self) -> None:
        if self.writer is None:
            return
        try:
            self.writer.flush()
            self.writer.close()
        except OSError as e:
            self._failed(e)
