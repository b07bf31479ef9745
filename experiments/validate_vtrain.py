"""Predict every row of the vTrain validation CSVs and report the error.

Rows: measured iteration times of Megatron-DeepSpeed GPT training on A100s
(`../shared/validation/`, README there). Each row becomes a plan on the
`vtrain-a100` preset: fp16 mixed precision, full recompute, 1F1B, no
gradient bucketing (one data-parallel all-reduce after the last backward),
no sequence parallelism, the backward TP all-reduce overlapped with the
weight-gradient GEMM (Megatron's async all-reduce), ZeRO 0 (Megatron-DeepSpeed's defaults where the
README is silent), vocabulary 51,200 padded to a multiple of 128 * tp as
Megatron does. Multi-node rows use `GPUs / 8` nodes; single-node rows one
node with that row's GPUs.

Writes `experiments/results/vtrain.{md,json,png}`: per-row predicted and
measured time and error, mean absolute percentage error (MAPE), the worst
row, and Spearman rank correlation per model (rows of the same model
ordered by measured vs predicted time).

    python -m experiments.validate_vtrain [--limit N] [--profile FILE] [--data DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path

from experiments import provenance
from experiments import vtrain_diagnostics as diagnostics
from experiments.vtrain_diagnostics import group_by, spearman

ROOT = provenance.ROOT
VALIDATION = ROOT.parent / "shared" / "validation"
RESULTS = ROOT / "experiments" / "results"
VOCAB = 51200
CSVS = {"multi-node": "vtrain_multi_node.csv", "single-node": "vtrain_single_node.csv"}


def padded_vocab(tp: int) -> int:
    """Megatron pads the vocabulary to a multiple of 128 * tp."""
    mult = 128 * tp
    return -(-VOCAB // mult) * mult


def read_rows(name: str, data: Path = VALIDATION) -> list[dict]:
    """Rows of one vTrain CSV in `data` (times in seconds)."""
    with open(data / name) as f:
        out = []
        for r in csv.DictReader(f):
            row = {"gpus": int(r["# GPUs"]), "global_batch": int(r["global batch"]),
                   "micro_batch": int(r["micro batch"]), "hidden": int(r["hidden size"]),
                   "heads": int(r["attention heads"]), "layers": int(r["# layers"]),
                   "seq_len": int(r["sequence length"]), "tp": int(r["tensor parallelism"]),
                   "dp": int(r["data parallelism"]), "pp": int(r["pipeline parallelism"]),
                   "measured_s": float(r["iteration time (ms)"]) / 1e3, "set": name}
            out.append(row)
        return out


def plan_of(row: dict, profile: str = ""):
    import sandbox

    multi = row["gpus"] > 8
    cluster = {"preset": "vtrain-a100", "nodes": row["gpus"] // 8 if multi else 1,
               "gpus_per_node": 8 if multi else row["gpus"], **provenance.AS_PUBLISHED}
    if profile:
        cluster["profile"] = profile
    return sandbox.load({
        "model": {"layers": row["layers"], "hidden": row["hidden"], "heads": row["heads"],
                  "vocab": padded_vocab(row["tp"]), "seq_len": row["seq_len"],
                  "activation": "gelu", "norm": "layernorm", "position": "learned",
                  "bias": True, "tied_embeddings": True},
        "cluster": cluster,
        "parallel": {"dp": row["dp"], "tp": row["tp"], "pp": row["pp"],
                     "micro_batch": row["micro_batch"], "global_batch": row["global_batch"],
                     "schedule": "1f1b", "zero": 0, "sequence_parallel": False,
                     "tp_overlap": True,
                     "recompute": "full"},
        "train": {"precision": "fp16", "attention": "eager"},  # Megatron-LM 2021-22: unfused
    })


def model_key(row: dict) -> str:
    return f"h{row['hidden']}-l{row['layers']}-a{row['heads']}-s{row['seq_len']}"


def predict(rows: list[dict], profile: str = "") -> None:
    from sim import simulate

    for r in rows:
        res = simulate(plan_of(r, profile), timeline=False, dp_overlap=False)
        r["predicted_s"] = res.step_time_s
        r["error"] = res.step_time_s / r["measured_s"] - 1
        r["breakdown_s"] = res.breakdown_s
        r["events"] = res.events


def stats(rows: list[dict]) -> dict:
    errs = [abs(r["error"]) for r in rows]
    worst = max(rows, key=lambda r: abs(r["error"]))
    by_model = group_by(rows, model_key)
    rho = {k: spearman([r["measured_s"] for r in v], [r["predicted_s"] for r in v])
           for k, v in by_model.items() if len(v) >= 3}
    return {"rows": len(rows), "mape": statistics.fmean(errs),
            "median_ape": statistics.median(errs), "max_ape": max(errs),
            "mean_signed_error": statistics.fmean(r["error"] for r in rows),
            "within_10pct": sum(e <= 0.10 for e in errs) / len(errs),
            "worst_row": {k: worst[k] for k in ("gpus", "hidden", "layers", "tp", "dp", "pp",
                                                 "micro_batch", "global_batch", "measured_s",
                                                 "predicted_s", "error")},
            "spearman_by_model": rho, "spearman_min": min(rho.values(), default=float("nan")),
            "models": {k: len(v) for k, v in by_model.items()}}


def by_model_and_tp(rows: list[dict]) -> list[dict]:
    """Signed error and within-group Spearman per (model, TP degree): where in a
    model the ranking is lost."""
    out = []
    for (key, tp), v in group_by(rows, lambda r: (model_key(r), r["tp"])).items():
        errs = [r["error"] for r in v]
        rho = (spearman([r["measured_s"] for r in v], [r["predicted_s"] for r in v])
               if len(v) >= 3 else None)
        out.append({"model": key, "tp": tp, "rows": len(v), "mean_signed_error":
                    statistics.fmean(errs), "min_error": min(errs), "max_error": max(errs),
                    "spearman": rho})
    return out


def markdown(meta: dict, summary: dict, multi: list[dict]) -> str:
    lines = ["# Simulator vs vTrain's measured A100 iteration times", "",
             f"- command: `{meta['command']}`",
             f"- machine: {meta['machine']['cpu']}, {meta['machine']['cores']} cores; "
             f"Python {meta['machine']['python']}; commit {meta['machine']['git_commit']}",
             f"- simulator wall time: {meta['wall_s']:.1f} s for {meta['rows']} rows",
             f"- profile: `{meta['profile'] or 'default Profile() (documented defaults)'}` "
             "(fitted by `experiments/calibrate_vtrain_a100.py`; its cross-validation is in "
             "`vtrain_calibration.md`)",
             "- plan per row: " + meta["assumptions"], "",
             "| set | rows | MAPE | median APE | max APE | mean signed | within 10% | "
             "min Spearman (per model) |", "|---|---|---|---|---|---|---|---|"]
    for name, s in summary.items():
        lines.append(f"| {name} | {s['rows']} | {100 * s['mape']:.1f}% | "
                     f"{100 * s['median_ape']:.1f}% | {100 * s['max_ape']:.1f}% | "
                     f"{100 * s['mean_signed_error']:+.1f}% | {100 * s['within_10pct']:.0f}% | "
                     f"{s['spearman_min']:.3f} |")
    for name, s in summary.items():
        lines += ["", f"## {name}: Spearman per model", "", "| model | rows | Spearman |",
                  "|---|---|---|"]
        lines += [f"| {k} | {s['models'][k]} | {v:.3f} |"
                  for k, v in sorted(s["spearman_by_model"].items())]
        w = s["worst_row"]
        lines += ["", f"Worst row: {w}"]
    lines += ["", "## multi-node: error by model and tensor-parallel degree", "",
              "| model | TP | rows | mean signed error | min | max | Spearman within |",
              "|---|---|---|---|---|---|---|"]
    for g in summary["multi-node"]["by_model_and_tp"]:
        rho = "" if g["spearman"] is None else f"{g['spearman']:.3f}"
        lines.append(f"| {g['model']} | {g['tp']} | {g['rows']} | "
                     f"{100 * g['mean_signed_error']:+.1f}% | {100 * g['min_error']:+.1f}% | "
                     f"{100 * g['max_error']:+.1f}% | {rho} |")
    lines += [""] + diagnostics.markdown(summary["multi-node"])
    lines += ["", "## Multi-node rows", "",
              "| GPUs | h | l | TP | DP | PP | mb | gb | measured (s) | predicted (s) | error |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in multi:
        lines.append(f"| {r['gpus']} | {r['hidden']} | {r['layers']} | {r['tp']} | {r['dp']} "
                     f"| {r['pp']} | {r['micro_batch']} | {r['global_batch']} "
                     f"| {r['measured_s']:.3f} | {r['predicted_s']:.3f} "
                     f"| {100 * r['error']:+.1f}% |")
    return "\n".join(lines) + "\n"


def plot(sets: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, axes = plt.subplots(1, len(sets), figsize=(6 * len(sets), 5.5))
    for ax, (name, rows) in zip(axes if len(sets) > 1 else [axes], sets.items(), strict=True):
        x = [r["measured_s"] for r in rows]
        y = [r["predicted_s"] for r in rows]
        ax.scatter(x, y, s=10, alpha=0.6)
        lo, hi = min(x + y) * 0.8, max(x + y) * 1.2
        ax.plot([lo, hi], [lo, hi], "k-", lw=1, label="predicted = measured")
        ax.plot([lo, hi], [lo * 1.1, hi * 1.1], "k:", lw=1, label="±10%")
        ax.plot([lo, hi], [lo * 0.9, hi * 0.9], "k:", lw=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_minor_formatter(NullFormatter())
            axis.set_major_formatter(ScalarFormatter())
        ax.set_xlabel("measured iteration time (s)")
        ax.set_ylabel("simulated iteration time (s)")
        mape = statistics.fmean(abs(r["error"]) for r in rows)
        ax.set_title(f"{name} ({len(rows)} rows, MAPE {100 * mape:.1f}%)")
        ax.legend()
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=0, help="first N rows of each CSV (0: all)")
    ap.add_argument("--profile", default="", help="calibration profile TOML for the cluster")
    ap.add_argument("--out", default=str(RESULTS / "vtrain"), help="results basename")
    ap.add_argument("--data", default=str(VALIDATION), help="folder with the two vTrain CSVs")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    data = Path(args.data)
    missing = [n for n in CSVS.values() if not (data / n).is_file()]
    if missing:
        print(f"error: {data / missing[0]}: no such file (--data names the folder with "
              f"{' and '.join(CSVS.values())})", file=sys.stderr)
        return 2
    sets = {k: read_rows(n, data) for k, n in CSVS.items()}
    if args.limit:
        sets = {k: v[: args.limit] for k, v in sets.items()}
    for rows in sets.values():
        predict(rows, args.profile)
    wall = provenance.wall_s(t0)
    summary = {k: stats(v) for k, v in sets.items()}
    summary["multi-node"]["by_model_and_tp"] = by_model_and_tp(sets["multi-node"])
    summary["multi-node"].update(diagnostics.summarize(sets["multi-node"], model_key))
    meta = {"command": provenance.command("validate_vtrain", argv),
            "machine": provenance.machine(("simpy", "networkx", "numpy")), "wall_s": wall,
            "rows": sum(len(v) for v in sets.values()),
            "profile": args.profile or plan_of(sets["multi-node"][0]).cluster.profile,
            "assumptions": "vtrain-a100 cluster, fp16, recompute=full, 1F1B, zero=0 (DDP), "
                           "no sequence parallelism, async TP grad all-reduce, one DP "
                           "all-reduce after backward (no bucketing), vocabulary 51,200 "
                           "padded to 128*tp"}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(
        {"meta": meta, "summary": summary, "rows": sets}, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(meta, summary, sets["multi-node"]))
    plot(sets, out.with_suffix(".png"))
    print(f"{'set':12} {'rows':>5} {'MAPE':>7} {'max':>7} {'signed':>7} {'min rho':>8}")
    for k, s in summary.items():
        print(f"{k:12} {s['rows']:5d} {100 * s['mape']:6.1f}% {100 * s['max_ape']:6.1f}% "
              f"{100 * s['mean_signed_error']:+6.1f}% {s['spearman_min']:8.3f}")
    print(f"wrote {out.with_suffix('.md')} ({wall:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
