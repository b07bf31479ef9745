"""Benchmark every export mode on a gpt-mini trained on CPU for a few minutes.

    .venv/bin/python -m experiments.bench_export --train-only     # 1. train (sandbox run)
    .venv/bin/python -m experiments.bench_export                  # 2. export every mode

Step 1 trains gpt-mini with `sandbox run` (one CPU process, fp32, AdamW,
`--train-steps` steps of `--train-batch` x 256 bytes of the builtin corpus)
into `--run-dir` (default WORK/run). Step 2 exports that run with each mode:
fp32 (none), int8 (dynamic), int8-static (QDQ), int4 (MatMulNBits), 25%
structured pruning without and with distillation (fp32), and pruning +
distillation + int8. Each row is one `Exporter.export` call
(`runtime.export.pipeline`; one Exporter per invocation, so its rows share the
traced fp32 graphs and each pruned, distilled student); it is kept in
WORK/rows/ so a later call (e.g. `--modes int8`) only does what is
missing (the heavy steps stay short enough to run one at a time under the
shared CPU lock), and the table is written from every row of the same run:
`OUT/export.md` and `OUT/export.json` (`experiments.bench_export_report`),
with the machine, versions, the commands, and the load average around each row.

Latency: median of `--latency-repeats` onnxruntime runs of the full graph
for `--latency-batch` x `--latency-length` token ids on `--latency-threads`
intra-op threads, the candidate and the fp32 baseline interleaved.
"""

from __future__ import annotations

import argparse
import inspect
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from experiments import provenance
from experiments.bench_export_report import read_tables, write_tables

ROOT = provenance.ROOT

MODES = {  # label -> export() options
    "fp32": {"quantize": "none"},
    "int8": {"quantize": "int8"},
    "int8-per-tensor": {"quantize": "int8-per-tensor"},
    "int8-static": {"quantize": "int8-static"},
    "int4": {"quantize": "int4"},
    "prune25": {"quantize": "none", "prune": 0.25},
    "prune25+distill": {"quantize": "none", "prune": 0.25, "distill": True},
    "prune25+distill+int8": {"quantize": "int8", "prune": 0.25, "distill": True},
}


def _targets(label: str, r: dict) -> dict[str, dict]:
    """Issue 5's targets that this row is meant to meet: {name: {met, value}}."""
    dc = r["decode_check"]
    base = r["baseline_ppl_onnx"]
    t: dict[str, tuple[bool, str]] = {}
    if label == "fp32":
        t["max abs logit diff <= 1e-4"] = (r["max_abs_diff"] <= 1e-4,
                                           f"{r['max_abs_diff']:.2e}")
    if label == "int8":
        t["size <= 0.35 of fp32"] = (r["size_ratio"] <= 0.35, f"{r['size_ratio']:.3f}")
        t["perplexity at most 3% worse"] = (r["ppl_onnx"] <= 1.03 * base,
                                            f"{r['ppl_onnx'] / base - 1:+.2%}")
        t["top-1 agreement >= 0.95"] = (r["top1_agreement"] >= 0.95,
                                        f"{r['top1_agreement']:.4f}")
        t["speed-up >= 1.3x"] = (r["speedup"] >= 1.3, f"{r['speedup']:.2f}x")
    if label == "prune25+distill":
        t["size <= 0.8 of fp32"] = (r["size_ratio"] <= 0.8, f"{r['size_ratio']:.3f}")
        t["perplexity within 10% of unpruned"] = (r["ppl_onnx"] <= 1.10 * base,
                                                  f"{r['ppl_onnx'] / base - 1:+.2%}")
    if label in ("fp32", "int8"):
        n = dc["batch"]
        t["greedy kv-cache == no cache"] = (bool(dc["cache_matches_no_cache"]),
                                            f"{dc['prompts_cache_eq_no_cache']}/{n} prompts")
        t["greedy kv-cache == PyTorch"] = (bool(dc["cache_matches_torch"]),
                                           f"{dc['prompts_cache_eq_torch']}/{n} prompts")
    return {k: {"met": ok, "value": v} for k, (ok, v) in t.items()}


def _sandbox_cli() -> list[str]:
    script = Path(sys.executable).parent / "sandbox"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from sandbox.cli import main; sys.exit(main())"]


def train(run_dir: Path, steps: int, batch: int, lr: float) -> dict:
    """Train gpt-mini with `sandbox run` into run_dir; returns what it did."""
    import sandbox

    plan = sandbox.load({
        "model": {"preset": "gpt-mini"},
        "cluster": {"preset": "localhost", "gpus_per_node": 1},
        "parallel": {"dp": 1, "micro_batch": batch, "global_batch": batch,
                     "recompute": "none"},
        "train": {"steps": steps, "lr": lr, "warmup_steps": max(1, steps // 12),
                  "precision": "fp32", "checkpoint_every": steps},
    })
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    plan_path = run_dir.parent / f"{run_dir.name}.plan.toml"
    plan_path.write_text(plan.to_toml())
    cli = _sandbox_cli()
    cmd = [*cli, "run", str(plan_path), "--out", str(run_dir)]
    load0 = provenance.load_average()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"bench_export: sandbox run failed: {proc.stderr.strip()[-500:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    losses = [json.loads(line)["loss"] for line in
              (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    info = {"command": shlex.join(["sandbox", *cmd[len(cli):]]),
            "plan": {"model": "gpt-mini", "steps": steps, "batch": batch, "seq_len": 256,
                     "lr": lr, "precision": "fp32", "processes": 1},
            "wall_s": wall, "step_time_s": summary["step_time_s"],
            "first_loss": losses[0], "last_loss": losses[-1],
            "eval_loss": summary.get("eval_loss"), "device": summary.get("device"),
            "load_before": load0, "load_after": provenance.load_average(),
            "stdout": proc.stdout.strip().splitlines()[-1:]}
    (run_dir / "bench_train.json").write_text(json.dumps(info, indent=2))
    return info


def export_row(label: str, exporter, work: Path, args: argparse.Namespace) -> dict:
    """One mode's export report plus its targets and provenance."""
    mode = MODES[label]
    load0 = provenance.load_average()
    t0 = time.perf_counter()
    rep = exporter.export(work / "onnx" / label / "model.onnx", quantize=mode["quantize"],
                          prune=mode.get("prune", 0.0),
                          distill_steps=args.distill_steps if mode.get("distill") else 0,
                          distill_batch=args.distill_batch, eval_batches=args.eval_batches,
                          latency_batch=args.latency_batch, latency_length=args.latency_length,
                          latency_threads=args.latency_threads,
                          latency_repeats=args.latency_repeats,
                          decode_prompts=args.decode_prompts, decode_tokens=args.decode_tokens)
    r = rep.to_dict()
    r.update(mode=label, targets=_targets(label, r), row_wall_s=time.perf_counter() - t0,
             git_commit=provenance.git_commit(),
             load_before=load0, load_after=provenance.load_average(),
             date_utc=provenance.utc_now("%Y-%m-%d %H:%M"),
             command=provenance.command("bench_export"))
    return r


def control(run_dir: Path, args: argparse.Namespace) -> dict:
    """The unpruned model trained as many more steps, on the same batches and
    schedule as the distillation, with plain cross-entropy: how much of the
    distilled student's perplexity comes from the extra training itself."""
    import torch
    import torch.nn.functional as F

    from runtime.export import evaluate as ev
    from runtime.export import source as src
    from runtime.export.distill import train_loop
    from runtime.export.pipeline import Exporter

    defaults = {k: p.default for k, p in inspect.signature(Exporter.export).parameters.items()}
    lr, seed = defaults["distill_lr"], defaults["seed"]
    run = src.load_run(run_dir)
    ctx = run.plan.model.seq_len
    evals = src.heldout_batches(defaults["eval_batch"], ctx, args.eval_batches,
                                run.plan.train.data)  # export's held-out batches
    before = ev.perplexity(ev.torch_logits(run.model, evals), evals)
    torch.manual_seed(seed)
    load0 = provenance.load_average()
    t0 = time.perf_counter()
    def cross_entropy(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = run.model(x)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    log = train_loop(run.model, src.train_batches(args.distill_batch, ctx, seed + 2,
                                                   run.plan.train.data),
                     args.distill_steps, lr, cross_entropy)  # the distillation's batches, schedule
    after = ev.perplexity(ev.torch_logits(run.model, evals), evals)
    return {"what": f"unpruned model + {args.distill_steps} cross-entropy steps x "
                    f"{args.distill_batch} x {ctx} bytes (the distillation's batches, lr "
                    f"{lr:g}, same schedule), PyTorch",
            "ppl_before": before, "ppl_after": after, "steps": args.distill_steps,
            "wall_s": time.perf_counter() - t0, "log": log.to_dict(),
            "load_before": load0, "load_after": provenance.load_average()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/bench_export",
                    help="folder for the run, the ONNX files and the finished rows")
    ap.add_argument("--run-dir", default=None,
                    help="run to export (default WORK/run; trained there if missing)")
    ap.add_argument("--train-only", action="store_true", help="train, then stop")
    ap.add_argument("--train-steps", type=int, default=240)
    ap.add_argument("--train-batch", type=int, default=4)
    ap.add_argument("--train-lr", type=float, default=1e-3)
    ap.add_argument("--modes", default="all",
                    help=f"comma-separated subset of {', '.join(MODES)} (default: all missing)")
    ap.add_argument("--redo", action="store_true", help="recompute rows already done")
    ap.add_argument("--control", action="store_true",
                    help="also train the unpruned model as many steps as the distillation "
                         "(how much of the student's perplexity is the extra training)")
    ap.add_argument("--distill-steps", type=int, default=60)
    ap.add_argument("--distill-batch", type=int, default=4)
    ap.add_argument("--eval-batches", type=int, default=8)
    ap.add_argument("--decode-prompts", type=int, default=16)
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--latency-batch", type=int, default=1)
    ap.add_argument("--latency-length", type=int, default=256)
    ap.add_argument("--latency-threads", type=int, default=1)
    ap.add_argument("--latency-repeats", type=int, default=100)
    ap.add_argument("--out", default=str(ROOT / "experiments" / "results"))
    ap.add_argument("--vocab-run", default=None, metavar="RUN_DIR",
                    help="export this large-vocabulary run (experiments.data_path: gpt-mini, "
                         "BPE 8192) fp32 and int8, into the table's second section; the "
                         "first section's rows are kept from OUT/export.json")
    args = ap.parse_args()
    if args.vocab_run:
        return vocab_section(Path(args.vocab_run), Path(args.work), Path(args.out), args)

    work = Path(args.work)
    run_dir = Path(args.run_dir) if args.run_dir else work / "run"
    train_info_path = run_dir / "bench_train.json"
    if not (run_dir / "plan.toml").is_file():
        print(f"training gpt-mini into {run_dir} with sandbox run ...", flush=True)
        tinfo = train(run_dir, args.train_steps, args.train_batch, args.train_lr)
        print(f"trained: {tinfo['wall_s']:.0f} s, loss {tinfo['first_loss']:.3f} -> "
              f"{tinfo['last_loss']:.3f}", flush=True)
    if args.train_only:
        return 0
    tinfo = json.loads(train_info_path.read_text()) if train_info_path.is_file() else \
        {"command": f"existing run directory {run_dir}"}
    labels = list(MODES) if args.modes == "all" else args.modes.split(",")
    unknown = [m for m in labels if m not in MODES]
    if unknown:
        sys.exit(f"bench_export: unknown mode(s) {', '.join(unknown)}; known: {', '.join(MODES)}")
    rows_dir = work / "rows"
    rows_dir.mkdir(parents=True, exist_ok=True)
    todo = [label for label in labels if args.redo or not (rows_dir / f"{label}.json").is_file()]
    if todo:
        from runtime.export.pipeline import Exporter

        with Exporter(run_dir) as exporter:
            for label in todo:
                r = export_row(label, exporter, work, args)
                (rows_dir / f"{label}.json").write_text(json.dumps(r, indent=2))
                print(f"{label}: {r['row_wall_s']:.0f} s, size {r['size_ratio']:.3f}, "
                      f"{r['latency_ms']:.2f} ms vs {r['baseline_latency_ms']:.2f}, ppl "
                      f"{r['ppl_onnx']:.4f} vs {r['baseline_ppl_onnx']:.4f}, top1 "
                      f"{r['top1_agreement']:.4f}, diff {r['max_abs_diff']:.2e}; "
                      f"{r['targets']}", flush=True)
    ctl_path = rows_dir / "control.json"
    if args.control and (args.redo or not ctl_path.is_file()):
        ctl_path.write_text(json.dumps(control(run_dir, args), indent=2))
    rows = []
    for label in MODES:
        path = rows_dir / f"{label}.json"
        if path.is_file():
            rows.append(json.loads(path.read_text()))
    ckpts = {r["checkpoint"] for r in rows}
    if len(ckpts) > 1:
        sys.exit(f"bench_export: rows in {rows_dir} come from different checkpoints {ckpts}; "
                 "use --redo")
    import torch

    meta = {"machine": provenance.machine(("torch", "onnx", "onnxruntime", "onnxscript", "numpy")),
            "torch_threads": torch.get_num_threads(), "train": tinfo, "run_dir": str(run_dir),
            "checkpoint": rows[0]["checkpoint"] if rows else None,
            "distill": {"steps": args.distill_steps, "batch": args.distill_batch,
                        "seq_len": 256},
            "control": json.loads(ctl_path.read_text()) if ctl_path.is_file() else None,
            "eval": {"batches": args.eval_batches, "batch": rows[0]["eval_batch"] if rows else
                     None, "seq_len": rows[0]["eval_length"] if rows else None}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    vocab = read_tables(out).get("vocab")
    write_tables(out, {"meta": meta, "rows": rows, **({"vocab": vocab} if vocab else {})})
    return 0


VOCAB_MODES = ("fp32", "int8")


def _vocab_targets(label: str, r: dict) -> dict[str, dict]:
    """Issue 20's targets for the int8 export of a large-vocabulary model."""
    if label != "int8":
        return {}
    base = r["baseline_ppl_onnx"]
    t = {"size <= 0.30 of fp32": (r["size_ratio"] <= 0.30, f"{r['size_ratio']:.3f}"),
         "perplexity within 3% of fp32": (abs(r["ppl_onnx"] / base - 1) <= 0.03,
                                          f"{r['ppl_onnx'] / base - 1:+.2%}"),
         "top-1 agreement >= 0.95": (r["top1_agreement"] >= 0.95,
                                     f"{r['top1_agreement']:.4f}")}
    return {k: {"met": ok, "value": v} for k, (ok, v) in t.items()}


def vocab_section(run_dir: Path, work: Path, out: Path, args: argparse.Namespace) -> int:
    """Export the large-vocabulary run fp32 and int8; add it to export.json/md."""
    from runtime.export.pipeline import Exporter

    saved = read_tables(out)
    if "rows" not in saved:
        sys.exit(f"bench_export: {out / 'export.json'} has no first section to keep")
    rows_dir = work / "vocab_rows"
    rows_dir.mkdir(parents=True, exist_ok=True)
    todo = [m for m in VOCAB_MODES if args.redo or not (rows_dir / f"{m}.json").is_file()]
    if todo:
        with Exporter(run_dir) as exporter:
            for label in todo:
                r = export_row(label, exporter, work / "vocab", args)
                r["targets"] = _vocab_targets(label, r)
                (rows_dir / f"{label}.json").write_text(json.dumps(r, indent=2))
                print(f"{label}: size {r['size_ratio']:.3f}, ppl {r['ppl_onnx']:.4f} vs "
                      f"{r['baseline_ppl_onnx']:.4f}, top1 {r['top1_agreement']:.4f}", flush=True)
    rows = [json.loads((rows_dir / f"{m}.json").read_text()) for m in VOCAB_MODES]
    model = rows[VOCAB_MODES.index("int8")]["files"]["model"]
    gen = [*_sandbox_cli(), "generate", model, "--prompt", "def ", "--max-new-tokens", "32",
           "--temperature", "0.8", "--seed", "1"]
    proc = subprocess.run(gen, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"bench_export: generate failed: {proc.stderr.strip()[-300:]}")
    sample = {"command": shlex.join(["sandbox", *gen[len(_sandbox_cli()):]]),
              "stdout": proc.stdout}
    train = run_dir.parent / "data_path.json"
    info = json.loads(train.read_text()) if train.is_file() else \
        json.loads((ROOT / "experiments" / "results" / "data_path.json").read_text())
    saved["vocab"] = {"machine": provenance.machine(("torch", "onnx", "onnxruntime",
                                                     "tokenizers")),
                      "run_dir": str(run_dir), "train": {k: info[k] for k in
                                                         ("commands", "run", "prepare")},
                      "rows": rows, "generate": sample}
    write_tables(out, saved)
    return 0 if all(v["met"] for r in rows for v in r["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
