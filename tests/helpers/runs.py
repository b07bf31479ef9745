"""Tiny-plan helpers shared by the `sandbox run` tests."""

import json
from pathlib import Path

PLAN = """
[model]
preset = "tiny"
[cluster]
preset = "localhost"
[parallel]
dp = {dp}
global_batch = 8
micro_batch = {mb}
[train]
lr = 1e-3
lr_schedule = "constant"
steps = 12
checkpoint_every = 3
eval_every = 6
seed = 1
{extra}
"""


def write_plan(path: Path, dp: int = 1, mb: int = 2, extra: str = "", pp: int = 1) -> Path:
    text = PLAN.format(dp=dp, mb=mb, extra=extra)
    path.write_text(text.replace("[train]", f"pp = {pp}\n[train]"))
    return path


def losses(out: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows]
