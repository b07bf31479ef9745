"""Probe every entry point with bad input as a tester would; a table of what happened.

    python -m experiments.fuzz_cli [--cheap] [--only SUBSTRING] [--name fuzz]

Each case of `experiments.fuzz` runs in a fresh scratch folder, under a
time limit, and is classed:

- clean error: non-zero exit, no traceback, one `sandbox CMD: error: ...` line
  per problem on stderr and nothing else (torchrun's own report aside), within
  the case's `max_wall_s` (5 s for the bad numbers and files);
- ok: exit 0 where that is right (an empty plan, a resume that falls back);
- hang: the time limit ran out;
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

ROOT = provenance.ROOT
RESULTS = ROOT / "experiments" / "results"


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


def _finish(proc: subprocess.Popen, deadline: float) -> dict:
    try:
        out, err = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
        return {"rc": proc.returncode, "stdout": out, "stderr": err, "hang": False}
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, err = proc.communicate()
        return {"rc": None, "stdout": out, "stderr": err, "hang": True}


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
        results = [_finish(p, t0 + case.timeout_s) for p in procs]
        wall = time.monotonic() - t0
        after = _hashes(d, case.protect)
        lost = sorted(k for k in before if after.get(k) != before[k])
        problem = case.check(d, results) if case.check else ""
    return {"case": case.name, "wall_s": round(wall, 2), "rc": [r["rc"] for r in results],
            "stderr": _last_line(results[0]["stderr"]), "lost": lost,
            "class": _classify(case, results, wall, lost, problem)}


def _last_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1][:200] if lines else ""


def _classify(case: Case, results: list[dict], wall: float, lost: list, problem: str) -> str:
    if problem == "planted pickle executed":
        return "code ran"
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
    err = [ln for ln in results[0]["stderr"].splitlines() if ln.strip()]
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
             "| case | class | exit | wall s | last stderr line |", "|---|---|---|---|---|"]
    for r in rows:
        msg = r["stderr"].replace("|", "\\|")
        lines.append(f"| {r['case']} | {r['class']} | {r['rc']} | {r['wall_s']} | {msg} |")
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
        print(f"{row['class']:14s} {row['wall_s']:6.2f} s  {case.name}  | {row['stderr']}",
              flush=True)
    doc = write_results(rows, args.name, sys.argv[1:] if argv is None else argv, t0)
    print(json.dumps(doc["counts"]))
    bad = sum(v for k, v in doc["counts"].items() if k not in ("clean error", "ok"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
