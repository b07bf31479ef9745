"""Fuzz cases of unbounded work: values that pass every per-field bound but ask
for hours of simulation or gigabytes of memory (many GPUs, many micro-batches,
a search over a huge world, a scaling sweep to a million times the GPUs, a
failure Monte Carlo of millions of failures). Each must be refused in one line
with the estimate, before the work starts, within the case's RSS limit; the
plans at the limits must finish (not cheap: a minute each)."""

from __future__ import annotations

from experiments.fuzz.case import Case, plan_text


def _llama(nodes: int, train: str = "") -> str:
    """A Llama 3 405B-like plan (experiments/plans/llama3-405b-16k.toml) on `nodes` DGX H100s."""
    dp = nodes * 8 // 128
    return plan_text(preset="llama3-405b", model="layers = 128", cluster_preset="dgx-h100",
                     cluster=f"nodes = {nodes}",
                     parallel=f'tp = 8\npp = 16\nvpp = 2\nschedule = "interleaved-1f1b"\n'
                              f'micro_batch = 1\nglobal_batch = {dp * 16}\nzero = 1\n'
                              'recompute = "full"', train=train)


GPT3 = plan_text(preset="gpt3-175b", cluster_preset="dgx-a100-80g", cluster="nodes = 32",
                 parallel="tp = 8\npp = 8\nglobal_batch = 1536", train="steps = 1000000000")
SMALL = plan_text(cluster_preset="dgx-a100-80g", preset="gpt-mini",
                  parallel="global_batch = 1024")
# 2**16 micro-batches on 4 pipeline stages: simulated in seconds, too many for a timeline
TIMELINE = plan_text(cluster_preset="dgx-a100-80g", preset="gpt3-1.3b", cluster="nodes = 1",
                     parallel="tp = 2\npp = 4\nglobal_batch = 65536\nmicro_batch = 1")
SEARCH = ["search", "--model", "gpt3-1.3b", "--cluster", "dgx-a100-80g", "--quiet"]


def simulate_cases() -> list[Case]:
    sim = ["simulate", "{dir}/plan.toml"]
    return [
        Case("simulate 405B on 262,144 GPUs", sim, files={"plan.toml": _llama(32768)},
             timeout_s=20, max_rss_mb=512),
        Case("simulate nodes 10**5 (800,000 GPUs)", sim,
             files={"plan.toml": plan_text(cluster_preset="dgx-a100-80g", preset="gpt-mini",
                                           cluster="nodes = 100000",
                                           parallel="tp = 2\nglobal_batch = 400000")},
             timeout_s=20, max_rss_mb=512),
        Case("simulate global_batch 10**9", sim,
             files={"plan.toml": plan_text(parallel="global_batch = 1000000000")},
             timeout_s=20, max_rss_mb=512),
        Case("simulate --trace, 2**16 micro-batches", [*sim, "--trace", "{dir}/t.json"],
             files={"plan.toml": TIMELINE}, timeout_s=20, max_rss_mb=512),
        Case("simulate --failures, 10**9 steps of 175B", [*sim, "--failures"],
             files={"plan.toml": GPT3}, timeout_s=30, max_rss_mb=1024),
        Case("simulate --failures --seed -1", [*sim, "--failures", "--seed", "-1"],
             files={"plan.toml": SMALL}, timeout_s=20, max_rss_mb=512),
        Case("simulate 405B on 131,072 GPUs (the limit)", sim,
             files={"plan.toml": _llama(16384)}, expect="ok", cheap=False, timeout_s=300,
             max_rss_mb=3072),
    ]


def search_cases() -> list[Case]:
    def s(*extra: str) -> list[str]:
        return [*SEARCH, *extra]
    return [
        Case("search --global-batch 10**12", s("--gpus", "16", "--global-batch", str(10**12)),
             timeout_s=20, max_rss_mb=512),
        Case("search --gpus 2**20", s("--gpus", str(2**20), "--global-batch", "1024"),
             timeout_s=20, max_rss_mb=512),
        Case("search --gpus 65536 with 128 simulations",
             s("--gpus", "65536", "--global-batch", "65536"), timeout_s=20, max_rss_mb=512),
        Case("search --workers 10**6", s("--gpus", "16", "--global-batch", "64", "--workers",
                                         str(10**6)), timeout_s=20, max_rss_mb=512),
        Case("search --fix micro_batch=1..5000",
             s("--gpus", "16", "--global-batch", "64", "--fix",
               "micro_batch=" + ",".join(map(str, range(1, 5001)))), timeout_s=20,
             max_rss_mb=512),
        Case("search --seq-len 0", s("--gpus", "16", "--global-batch", "64", "--seq-len", "0"),
             timeout_s=20, max_rss_mb=512),
        Case("search --max-memory-gb nan", s("--gpus", "16", "--global-batch", "64",
                                             "--max-memory-gb", "nan"),
             timeout_s=20, max_rss_mb=512),
    ]


def report_cases() -> list[Case]:
    rep = ["report", "{dir}/plan.toml", "--out", "{dir}/rep", "--scaling"]
    files = {"plan.toml": SMALL}
    return [
        Case("report of a plan of 2**16 micro-batches (timeline)",
             ["report", "{dir}/a.toml", "{dir}/plan.toml", "--out", "{dir}/rep"],
             files={"a.toml": SMALL, "plan.toml": TIMELINE}, timeout_s=20, max_rss_mb=512),
        Case("report --scaling 1e6", [*rep, "1e6"], files=files, timeout_s=20, max_rss_mb=512),
        Case("report --scaling nan", [*rep, "nan"], files=files, timeout_s=20, max_rss_mb=512),
        Case("report --scaling inf", [*rep, "1,inf"], files=files, timeout_s=20,
             max_rss_mb=512),
        Case("report --scaling with 1,000 points", [*rep, ",".join(["1"] * 1000)],
             files=files, timeout_s=20, max_rss_mb=512),
    ]


def info_cases() -> list[Case]:
    big = plan_text(cluster_preset="dgx-a100-80g", preset="gpt3-1.3b", cluster="nodes = 131072",
                    model="layers = 8192",
                    parallel="tp = 8\npp = 8192\nglobal_batch = 1048576\nmicro_batch = 1")
    return [Case("info 1M GPUs, pp 8,192, 65,536 micro-batches", ["info", "{dir}/plan.toml"],
                 files={"plan.toml": big}, expect="ok", timeout_s=20, max_rss_mb=512)]


def cases() -> list[Case]:
    return [*simulate_cases(), *search_cases(), *report_cases(), *info_cases()]
