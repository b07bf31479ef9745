"""Probe every entry point with bad input as a tester would; a table of what happened.

    python -m experiments.fuzz_cli [--cheap] [--only SUBSTRING] [--name fuzz]

Each case of `experiments.fuzz` runs in a fresh scratch folder, under a
time limit, and is classed:

- clean error: non-zero exit, no traceback, one `sandbox CMD: error: ...` line
  per problem on stderr and nothing else (torchrun's own report aside), within
  the case's `max_wall_s` (5 s for the bad numbers and files);
- ok: exit 0 where that is right (an empty plan, a resume that falls back);
- hang: the time limit ran out;
- unbounded memory: the process tree's resident memory passed the case's
  `max_rss_mb` (default 1,536 MB; sampled every 50 ms, summed over the child
  and every process of its session); it is killed then;
- traceback: a Python traceback or "internal error" reached the user;
- data loss: a protected file changed or vanished;
- code ran: a planted pickle was unpickled (its marker file appeared).

Writes `experiments/results/<name>.md` and `.json` (cases, counts, machine).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from experiments import provenance
from experiments.fuzz import Case, all_cases
from experiments.fuzz.case import DEFAULT_RSS_MB
from runtime.observe.train_log import is_step_line

ROOT = provenance.ROOT
RESULTS = ROOT / "experiments" / "results"
SAMPLE_S = 0.05  # how often the process trees' RSS is read


def _command(case: Case, argv: list[str], d: Path) -> list[str]:
    args = [a.replace("{dir}", str(d)) for a in argv]
    if case.entry == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", "1", "-m", "runtime.train", *args]
    return [sys.executable, "-m", "sandbox", *args]


def _hashes(d: Path, globs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for g in globs:
        for p in d.glob(g):
            if p.is_file():
                out[str(p.relative_to(d))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _start(cmd: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            errors="replace", start_new_session=True)


def _tree_rss_mb(sid: int) -> float:
    """Resident memory (MB) of every process in session `sid` (the child and its
    descendants, which `_start` puts in a session of their own)."""
    total_kb = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[3]) != sid:  # fields[3] is the session id (field 6 of stat)
                continue
            with open(f"/proc/{entry.name}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total_kb += int(line.split()[1])
                        break
        except (OSError, ValueError, IndexError):
            continue  # the process ended while we looked
    return total_kb / 1024


def _finish(procs: list[subprocess.Popen], deadline: float, max_rss_mb: float
            ) -> tuple[list[dict], float]:
    """Wait for every process, sampling the trees' summed RSS every SAMPLE_S;
    kill them all past the deadline (hang) or past max_rss_mb (unbounded memory).
    Returns one result per process and the peak summed RSS, MB."""
    outs: dict[int, tuple[str, str]] = {}
    peak, why = 0.0, ""
    while len(outs) < len(procs):
        for p in procs:
            if p.pid in outs:
                continue
            try:
                outs[p.pid] = p.communicate(timeout=SAMPLE_S / len(procs))
            except subprocess.TimeoutExpired:
                pass
        rss = sum(_tree_rss_mb(p.pid) for p in procs if p.pid not in outs)
        peak = max(peak, rss)
        if rss > max_rss_mb:
            why = "memory"
        elif time.monotonic() > deadline:
            why = "hang"
        if why:
            break
    for p in procs:
        if p.pid not in outs:
            try:
                os.killpg(p.pid, 9)
            except ProcessLookupError:
                pass
            outs[p.pid] = p.communicate()
    results = []
    for p in procs:
        out, err = outs[p.pid]
        killed = why and p.returncode is not None and p.returncode < 0
        results.append({"rc": None if killed else p.returncode, "stdout": out, "stderr": err,
                        "hang": bool(killed) and why == "hang",
                        "memory": bool(killed) and why == "memory"})
    return results, peak


def run_case(case: Case) -> dict:
    """Run one case in a scratch folder; its outcome and class."""
    with tempfile.TemporaryDirectory(prefix="fuzz_") as tmp:
        d = Path(tmp)
        for name, text in case.files.items():
            (d / name).write_text(text)
        if case.setup:
            case.setup(d)
        before = _hashes(d, case.protect)
        argvs = case.argv if case.concurrent else [case.argv]
        t0 = time.monotonic()
        procs = [_start(_command(case, a, d)) for a in argvs]
        results, peak = _finish(procs, t0 + case.timeout_s, case.max_rss_mb)
        wall = time.monotonic() - t0
        after = _hashes(d, case.protect)
        lost = sorted(k for k in before if after.get(k) != before[k])
        problem = case.check(d, results) if case.check else ""
    return {"case": case.name, "wall_s": round(wall, 2), "peak_rss_mb": round(peak),
            "max_rss_mb": case.max_rss_mb, "rc": [r["rc"] for r in results],
            "stderr": _last_line(results[0]["stderr"]), "lost": lost,
            "class": _classify(case, results, wall, lost, problem)}


def _last_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip() and not is_step_line(ln)]
    return lines[-1][:200] if lines else ""


def _classify(case: Case, results: list[dict], wall: float, lost: list, problem: str) -> str:
    if problem == "planted pickle executed":
        return "code ran"
    if any(r["memory"] for r in results):
        return "unbounded memory"
    if any(r["hang"] for r in results):
        return "hang"
    text = "".join(r["stdout"] + r["stderr"] for r in results)
    if "Traceback (most recent call last)" in text and case.entry != "torchrun" \
            or "internal error" in text:
        return "traceback"
    if lost:
        return "data loss"
    if problem:
        return f"wrong: {problem}"
    rc = results[0]["rc"]
    if case.expect == "ok":
        return "ok" if rc == 0 else "wrong: failed"
    if case.expect == "custom":
        return "ok"
    if rc == 0:
        return "wrong: accepted"
    err = [ln for ln in results[0]["stderr"].splitlines()
           if ln.strip() and not is_step_line(ln)]  # a run's progress lines are not problems
    if case.entry != "torchrun" and (
            not err or any(": error: " not in ln for ln in err)):
        return "wrong: not one line per problem"
    if case.max_wall_s is not None and wall > case.max_wall_s:
        return "wrong: slow"
    return "clean error"


def _provenance(argv: list[str], t0: float) -> dict:
    return {"command": provenance.command("fuzz_cli", argv), "date_utc": provenance.utc_now(),
            "wall_s": round(provenance.wall_s(t0), 1),
            "machine": provenance.machine(("torch", "simpy", "networkx"))}


def write_results(rows: list[dict], name: str, argv: list[str], t0: float) -> dict:
    counts: dict[str, int] = {}
    for r in rows:
        key = r["class"].split(":")[0]
        counts[key] = counts.get(key, 0) + 1
    doc = {"provenance": _provenance(argv, t0), "counts": counts, "cases": rows}
    pv, mach = doc["provenance"], doc["provenance"]["machine"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = [f"# CLI fuzz: {len(rows)} cases", "",
             f"`{pv['command']}` at {mach['git_commit']}, {pv['date_utc']}, "
             f"{pv['wall_s']} s on {mach['cpu']} ({mach['cores']} cores, load "
             f"{mach['loadavg_1m']:.1f}), Python {mach['python']}, torch "
             f"{mach['versions']['torch']}.", "",
             "| class | cases |", "|---|---|",
             *(f"| {k} | {v} |" for k, v in sorted(counts.items())), "",
             f"Peak RSS: the case's whole process tree, sampled every {SAMPLE_S * 1000:.0f} ms; "
             f"a case past its limit (default {DEFAULT_RSS_MB:,.0f} MB, the column) is killed "
             "and classed unbounded memory.", "",
             "| case | class | exit | wall s | peak RSS MB | limit MB | last stderr line |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        msg = r["stderr"].replace("|", "\\|")
        lines.append(f"| {r['case']} | {r['class']} | {r['rc']} | {r['wall_s']} | "
                     f"{r['peak_rss_mb']} | {r['max_rss_mb']:.0f} | {msg} |")
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    return doc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cheap", action="store_true", help="only the cases that take seconds")
    ap.add_argument("--only", default="", help="only cases whose name contains this")
    ap.add_argument("--name", default="fuzz", help="results file name")
    args = ap.parse_args(argv)
    cases = [c for c in all_cases() if (c.cheap or not args.cheap) and args.only in c.name]
    rows, t0 = [], time.perf_counter()
    for case in cases:
        row = run_case(case)
        rows.append(row)
        print(f"{row['class']:16s} {row['wall_s']:6.2f} s {row['peak_rss_mb']:5d} MB  "
              f"{case.name}  | {row['stderr']}",
              flush=True)
    doc = write_results(rows, args.name, sys.argv[1:] if argv is None else argv, t0)
    print(json.dumps(doc["counts"]))
    bad = sum(v for k, v in doc["counts"].items() if k not in ("clean error", "ok"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
