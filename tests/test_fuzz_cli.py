"""The cheap cases of `experiments/fuzz_cli.py` (bad numbers, bad plan files, a
foreign run folder): each one clean line and a non-zero exit, quickly, with no
file of a run changed. The expensive cases (trained runs, planted pickles,
concurrent launches) run in `python -m experiments.fuzz_cli`."""

from __future__ import annotations

import pytest

from experiments.fuzz import all_cases
from experiments.fuzz_cli import run_case

CHEAP = [c for c in all_cases() if c.cheap]


def test_the_probe_set_covers_the_issue() -> None:
    names = " ".join(c.name for c in all_cases())
    for probe in ("nan", "inf", "layers 10**7", "vpp 10**6", "micro_batch 10**9", "seq_len 0",
                  "fifo", "/dev/zero", "planted rng pickle", "planted .metadata pickle",
                  "two runs into one fresh folder", "torchrun"):
        assert probe in names, probe


@pytest.mark.parametrize("case", CHEAP, ids=[c.name for c in CHEAP])
def test_cheap_case_is_clean(case) -> None:
    row = run_case(case)
    assert row["class"] in ("clean error", "ok"), row
