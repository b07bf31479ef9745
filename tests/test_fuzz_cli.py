"""The cheap cases of `experiments/fuzz_cli.py` (bad numbers, bad plan files, a
foreign run folder): each one clean line and a non-zero exit, quickly, with no
file of a run changed. The expensive cases (trained runs, planted pickles,
concurrent launches) run in `python -m experiments.fuzz_cli`."""

from __future__ import annotations

import pytest

from experiments.fuzz import Case, all_cases
from experiments.fuzz.case import plan_text
from experiments.fuzz_cli import run_case

CHEAP = [c for c in all_cases() if c.cheap]


def test_the_probe_set_covers_the_issue() -> None:
    names = " ".join(c.name for c in all_cases())
    for probe in ("nan", "inf", "layers 10**7", "vpp 10**6", "micro_batch 10**9", "seq_len 0",
                  "fifo", "/dev/zero", "planted rng pickle", "planted .metadata pickle",
                  "two runs into one fresh folder", "torchrun", "262,144 GPUs",
                  "nodes 10**5", "global_batch 10**9", "search --global-batch 10**12",
                  "report --scaling 1e6", "--failures, 10**9 steps"):
        assert probe in names, probe


@pytest.mark.parametrize("case", CHEAP, ids=[c.name for c in CHEAP])
def test_cheap_case_is_clean(case) -> None:
    row = run_case(case)
    assert row["class"] in ("clean error", "ok"), row


def test_a_case_past_its_rss_limit_is_killed_as_unbounded_memory() -> None:
    plan = plan_text(preset="gpt-mini", cluster_preset="dgx-a100-80g",
                     parallel="global_batch = 1024")
    case = Case("simulate under 30 MB", ["simulate", "{dir}/plan.toml"],
                files={"plan.toml": plan}, expect="ok", max_rss_mb=30)
    row = run_case(case)
    assert row["class"] == "unbounded memory" and row["rc"] == [None], row
    fine = run_case(Case("the same under 1.5 GB", case.argv, files=case.files, expect="ok"))
    assert fine["class"] == "ok" and fine["peak_rss_mb"] > 30, fine
    # killed on the way up: past the limit, short of what the whole run takes (sampling
    # every 50 ms may overshoot the limit on a loaded machine, never the full peak; the
    # row rounds to whole MB, so a kill just past 30 MB reads 30)
    assert 30 <= row["peak_rss_mb"] <= fine["peak_rss_mb"], (row, fine)
