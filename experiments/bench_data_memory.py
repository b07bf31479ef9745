"""Memory of memory-mapped token shards: a 1 GB token file trains on 2 ranks
without either rank's resident set growing by the file size.

    .venv/bin/python -m experiments.bench_data_memory [--gb 1.0] [--steps 20]

Writes two prepared data directories (`runtime.data.shards` layout, byte
tokenizer, uint16 ids, random tokens made by numpy in 64 MiB pieces): a big
one of `--gb` GB of tokens and a small one of 16 MiB. Trains the same tiny
plan (dp = 2 CPU processes, `--steps` steps) on each with `sandbox run`
while polling every rank's /proc/PID/status: VmHWM is the peak resident
set, RssFile the part of it that is mapped file pages (the shards' pages in
the page cache, shared by the ranks and given back under pressure), RssAnon
the process's own memory. The claim holds when each rank's peak resident
set with the big file exceeds the small file's by less than `--margin` of
the file size. Writes OUT/data_memory.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from experiments import provenance
from runtime.data.prepare import ShardWriter
from runtime.data.shards import FORMAT, META, TOKENIZER
from runtime.data.tokenizer import byte_tokenizer

ROOT = provenance.ROOT
PIECE = 32 << 20  # tokens written at a time (64 MiB of uint16)

PLAN = """[model]
preset = "tiny"
[cluster]
preset = "localhost"
[parallel]
dp = 2
global_batch = 8
micro_batch = 4
[train]
steps = {steps}
eval_every = {steps}
checkpoint_every = 0
data = "{data}"
"""


def make_data(out: Path, tokens: int, seed: int = 0) -> int:
    """A prepared directory of `tokens` random byte ids; returns the file bytes."""
    out.mkdir(parents=True, exist_ok=True)
    byte_tokenizer().save(out / TOKENIZER)
    w = ShardWriter(out, "uint16", 1 << 30)  # one shard: the "1 GB token file"
    rng = np.random.default_rng(seed)
    left = tokens
    while left:
        n = min(PIECE, left)
        w.write(rng.integers(0, 256, n, dtype=np.uint16))
        left -= n
    w.close()
    cut = tokens - tokens // 20
    meta = {"format": FORMAT, "tokenizer": "byte", "vocab": 256, "eot": None,
            "dtype": "uint16", "tokens": tokens, "shards": w.shards,
            "split": {"val_fraction": 0.05, "train": [0, cut], "val": [cut, tokens]},
            "documents": 1, "sources": [{"path": "numpy random", "bytes": 0, "sha256": ""}],
            "created_by": "experiments.bench_data_memory"}
    (out / META).write_text(json.dumps(meta, indent=2))
    return sum((out / s["file"]).stat().st_size for s in w.shards)


def _status(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                out[k] = int(v.split()[0]) * 1024
    except OSError:
        pass
    return out


def _workers(root: int) -> list[int]:
    """The `runtime.train` processes descending from process `root` (this
    run's, not another job's on the same machine)."""
    parent, cmds = {}, {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
                cmds[int(d.name)] = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            parent[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    mine, grew = {root}, True
    while grew:
        more = {p for p, pp in parent.items() if pp in mine} - mine
        mine |= more
        grew = bool(more)
    return [p for p in mine if b"runtime.train" in cmds.get(p, [])
            and b"torch.distributed.run" not in cmds.get(p, [])]


def train_and_poll(plan: Path, out: Path) -> dict:
    """`sandbox run` while polling each worker's memory; peak per worker (bytes)."""
    cmd = [sys.executable, "-m", "sandbox", "run", str(plan), "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT)
    peak: dict[int, dict[str, int]] = {}
    while proc.poll() is None:
        for pid in _workers(proc.pid):
            st = _status(pid)
            cur = peak.setdefault(pid, {})
            for k, v in st.items():
                cur[k] = max(cur.get(k, 0), v)
        time.sleep(0.1)
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        sys.exit(f"bench_data_memory: sandbox run failed: {stderr[-800:]}")
    summary = json.loads((out / "summary.json").read_text())
    ranks = [peak[p] for p in sorted(peak)]
    return {"command": " ".join(["sandbox", *cmd[3:]]), "wall_s": time.perf_counter() - t0,
            "ranks": ranks, "summary_peak_mem_gb": summary["peak_mem_gb"],
            "step_time_s": summary["step_time_s"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=1.0, help="size of the big token file, GB")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--margin", type=float, default=0.10,
                    help="allowed growth of a rank's peak resident set, share of the file")
    ap.add_argument("--work", default="/tmp/bench_data_memory")
    ap.add_argument("--out", default=str(ROOT / "experiments" / "results"))
    args = ap.parse_args()
    work = Path(args.work)
    if work.exists():
        sys.exit(f"bench_data_memory: {work} exists; remove it or give another --work")
    sizes = {"small": 16 << 20, "big": int(args.gb * 1e9)}
    res: dict = {"machine": provenance.machine(("torch", "numpy")),
                 "git_commit": provenance.git_commit(), "date_utc": provenance.utc_now(),
                 "command": provenance.command("bench_data_memory"), "steps": args.steps}
    for name, nbytes in sizes.items():
        data = work / f"data_{name}"
        file_bytes = make_data(data, nbytes // 2)
        plan = work / f"plan_{name}.toml"
        plan.write_text(PLAN.format(steps=args.steps, data=data))
        os.sync()
        res[name] = {"file_bytes": file_bytes, **train_and_poll(plan, work / f"run_{name}")}
        print(name, json.dumps(res[name]), flush=True)
    big, small = res["big"], res["small"]
    growth = [b["VmHWM"] - s["VmHWM"] for b, s in zip(big["ranks"], small["ranks"], strict=True)]
    res["growth_bytes"] = growth
    res["growth_share_of_file"] = [g / big["file_bytes"] for g in growth]
    res["met"] = all(g < args.margin * big["file_bytes"] for g in growth)
    res["margin"] = args.margin
    out = Path(args.out)
    (out / "data_memory.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / "data_memory.md").write_text(render(res))
    print(render(res))
    return 0 if res["met"] else 1


def render(r: dict) -> str:
    mb = 1 / 2**20
    lines = ["# Memory-mapped token shards: a 1 GB token file on 2 CPU ranks", "",
             f"- machine: {r['machine']['cpu']}, {r['machine']['cores']} cores (shared); commit "
             f"{r['git_commit']}, {r['date_utc']}; made by `{r['command']}`",
             f"- the same tiny plan, dp = 2, {r['steps']} steps, on a {r['big']['file_bytes']:,}"
             f"-byte and a {r['small']['file_bytes']:,}-byte token file (uint16); peak "
             "resident set (VmHWM) of each rank, polled every 0.1 s from /proc", "",
             "| data | rank | peak RSS MiB | peak RssAnon MiB | peak RssFile MiB |",
             "|---|---|---|---|---|"]
    for name in ("small", "big"):
        for i, x in enumerate(r[name]["ranks"]):
            lines.append(f"| {r[name]['file_bytes'] * mb:,.0f} MiB | {i} | "
                         f"{x['VmHWM'] * mb:,.0f} | {x.get('RssAnon', 0) * mb:,.0f} | "
                         f"{x.get('RssFile', 0) * mb:,.0f} |")
    lines += ["", "Growth of each rank's peak resident set, big file vs small: "
              + ", ".join(f"{g * mb:,.1f} MiB ({s:.2%} of the file)"
                          for g, s in zip(r["growth_bytes"], r["growth_share_of_file"],
                                          strict=True))
              + f"; the claim (< {r['margin']:.0%} of the file size): "
              f"**{'met' if r['met'] else 'missed'}**", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
