"""Benchmark every export mode on a gpt-mini trained on CPU for a few minutes.

    .venv/bin/python experiments/bench_export.py [--run-dir RUN] [--train-steps 300]
        [--distill-steps 150] [--out experiments/results]

Without --run-dir, trains gpt-mini in this process (`runtime.distill.train_run`,
AdamW, batch 8 x 256 bytes of the training split) and saves it as a run
directory; with --run-dir, exports that run (e.g. one written by `sandbox run`).
Then exports it with each mode: none, int8, int8-static, int4, and 25%
structured pruning + distillation (fp32; with --with-pruned-int8 also int8). Writes
`OUT/export.md` and `OUT/export.json` with the machine, versions and command.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODES = [
    {"quantize": "none"},
    {"quantize": "int8"},
    {"quantize": "int8-static"},
    {"quantize": "int4"},
    {"quantize": "none", "prune": 0.25, "distill": True},
]
PRUNED_INT8 = {"quantize": "int8", "prune": 0.25, "distill": True}


def _label(mode: dict) -> str:
    s = mode["quantize"]
    if mode.get("prune"):
        s += f" + prune {mode['prune']:.2f}" + (" + distill" if mode.get("distill") else "")
    return s


def _targets(mode: dict, r: dict) -> str:
    """Which of issue 5's targets this row meets (True/False per target)."""
    out = []
    if mode["quantize"] == "none" and not mode.get("prune"):
        out.append(f"diff<=1e-4:{r['max_abs_diff'] <= 1e-4}")
    if mode["quantize"] == "int8" and not mode.get("prune"):
        out += [f"size<=0.35:{r['size_ratio'] <= 0.35}",
                f"ppl<=+3%:{r['ppl_onnx'] <= 1.03 * r['baseline_ppl_onnx']}",
                f"top1>=0.95:{r['top1_agreement'] >= 0.95}",
                f"speedup>=1.3:{r['speedup'] >= 1.3}"]
    if mode.get("prune"):
        out += [f"size<=0.8:{r['size_ratio'] <= 0.8}",
                f"ppl<=+10%:{r['ppl_onnx'] <= 1.10 * r['baseline_ppl_onnx']}"]
    out.append(f"kv-decode==nocache==torch:{r['decode_check']['cache_matches_no_cache'] and r['decode_check']['cache_matches_torch']}")  # noqa: E501
    return ", ".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", default=None, help="export this run instead of training")
    ap.add_argument("--train-dir", default=None,
                    help="where to save the trained run (reused if it already holds one)")
    ap.add_argument("--train-steps", type=int, default=300)
    ap.add_argument("--train-batch", type=int, default=8)
    ap.add_argument("--distill-steps", type=int, default=150)
    ap.add_argument("--eval-batches", type=int, default=8)
    ap.add_argument("--latency-repeats", type=int, default=30)
    ap.add_argument("--out", default=str(ROOT / "experiments" / "results"))
    ap.add_argument("--with-pruned-int8", action="store_true",
                    help="also prune + distill + int8 (distils a second time)")
    args = ap.parse_args()

    import torch

    from runtime.distill import train_run
    from runtime.export import export

    work = Path(tempfile.mkdtemp(prefix="bench_export-"))
    train = None
    if args.run_dir:
        run_dir = Path(args.run_dir)
        trained_by = f"existing run directory {run_dir}"
    else:
        run_dir = Path(args.train_dir) if args.train_dir else work / "run"
        done = run_dir / "train_log.json"
        if done.is_file():
            train = json.loads(done.read_text())
        else:
            train = train_run(run_dir, "gpt-mini", args.train_steps, batch=args.train_batch,
                              lr=1e-3).to_dict()
            done.write_text(json.dumps(train))
        trained_by = (f"runtime.distill.train_run (in-process AdamW loop, fp32 CPU, builtin "
                      f"corpus): {train['steps']} steps x {args.train_batch} x 256 tokens, "
                      f"{train['wall_s']:.0f} s, loss {train['first_loss']:.3f} -> "
                      f"{train['last_loss']:.3f}")
    print(trained_by, flush=True)
    rows = []
    for mode in MODES + ([PRUNED_INT8] if args.with_pruned_int8 else []):
        t0 = time.perf_counter()
        rep = export(run_dir, work / _label(mode).replace(" ", "_") / "model.onnx",
                     quantize=mode["quantize"], prune=mode.get("prune", 0.0),
                     distill_steps=args.distill_steps if mode.get("distill") else 0,
                     eval_batches=args.eval_batches, latency_repeats=args.latency_repeats,
                     fp32_cache=work / "fp32")
        r = rep.to_dict()
        r["mode"] = _label(mode)
        r["targets"] = _targets(mode, r)
        rows.append(r)
        print(f"{r['mode']}: {time.perf_counter() - t0:.0f} s, size {r['size_ratio']:.3f}, "
              f"{r['latency_ms']:.2f} ms vs {r['baseline_latency_ms']:.2f}, ppl "
              f"{r['ppl_onnx']:.4f} vs {r['baseline_ppl_onnx']:.4f}, top1 "
              f"{r['top1_agreement']:.4f}, diff {r['max_abs_diff']:.2e}; {r['targets']}",
              flush=True)
    meta = {
        "command": " ".join([".venv/bin/python", *sys.argv]),
        "machine": f"{platform.node()} {platform.machine()} {platform.processor()}",
        "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "versions": rows[0]["versions"], "trained_by": trained_by, "train": train,
        "latency": f"median of {args.latency_repeats} onnxruntime runs, batch "
                   f"{rows[0]['latency_batch']} x {rows[0]['latency_length']} tokens, "
                   f"{rows[0]['latency_threads']} intra-op thread, ORT_ENABLE_ALL, "
                   "interleaved with the fp32 baseline",
        "eval": f"{args.eval_batches} held-out batches of {rows[0]['eval_batch']} x "
                f"{rows[0]['eval_length']} bytes",
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "export.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    (out / "export.md").write_text(render(meta, rows))
    print(render(meta, rows))
    return 0


def render(meta: dict, rows: list[dict]) -> str:
    lines = ["# Export benchmark: gpt-mini, every compression mode", "",
             f"- command: `{meta['command']}`", f"- date (UTC): {meta['date_utc']}",
             f"- machine: {meta['machine']}, {meta['cpus']} CPUs (shared; timings are noisy)",
             f"- versions: {json.dumps(meta['versions'])}", f"- model: {meta['trained_by']}",
             f"- latency: {meta['latency']}", f"- quality: {meta['eval']}; perplexity in "
             "bytes (vocab 256); top-1 agreement against the unpruned PyTorch model", "",
             "| mode | heads/kv/ffn | size (bytes) | size vs fp32 | latency ms | fp32 ms | "
             "speedup | ppl onnx | ppl torch | fp32 ppl | top-1 agr. | max abs diff | "
             "targets |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["shape"]
        lines.append(
            f"| {r['mode']} | {s['heads']}/{s['kv_heads']}/{s['ffn_hidden']} | "
            f"{r['size_bytes']:,} | {r['size_ratio']:.3f} | {r['latency_ms']:.2f} | "
            f"{r['baseline_latency_ms']:.2f} | {r['speedup']:.2f}x | {r['ppl_onnx']:.4f} | "
            f"{r['ppl_torch']:.4f} | {r['baseline_ppl_onnx']:.4f} | {r['top1_agreement']:.4f} | "
            f"{r['max_abs_diff']:.2e} | {r['targets']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
