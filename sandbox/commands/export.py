"""sandbox export RUN_DIR --out model.onnx [--quantize MODE] [--prune F] [--distill-steps N]"""

from __future__ import annotations

import argparse
import json
import sys

from sandbox.commands._args import integer, number

HELP = "compress a trained run and export it to ONNX, verified with onnxruntime"
QUANTIZE_MODES = ("none", "int8", "int8-static", "int4")  # = runtime.export.quantize.MODES


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="run directory written by `sandbox run`")
    p.add_argument("--out", required=True, help="ONNX file to write (e.g. model.onnx); the "
                   "decoder graph and model.report.json are written next to it (a missing "
                   "folder is created, and said so)")
    p.add_argument("--quantize", default="int8",
                   help=f"{' | '.join(QUANTIZE_MODES)} (default: int8)")
    p.add_argument("--prune", type=number(0.0, 1.0, high_open=True), default=0.0,
                   help="fraction of attention heads and MLP channels to remove (default 0)")
    p.add_argument("--distill-steps", type=integer(0), default=0,
                   help="knowledge-distillation steps after pruning (default 0)")
    p.add_argument("--json", action="store_true", help="print the whole report as JSON")


def main(args: argparse.Namespace) -> int:
    from sandbox.errors import SandboxError
    from sandbox.outputs import checked_path, output_file

    out = output_file(args.out, "--out", (".onnx",), make_parents=True)
    missing = next((f for f in reversed(out.parents) if not f.exists()), None)
    checked_path(args.run_dir, "RUN_DIR")
    if args.quantize not in QUANTIZE_MODES:  # before importing torch: fail fast
        raise SandboxError(f"--quantize: unknown mode '{args.quantize}'; "
                           f"known: {', '.join(QUANTIZE_MODES)}")
    import sandbox

    report = sandbox.export(args.run_dir, out=args.out, quantize=args.quantize,
                            prune=args.prune, distill_steps=args.distill_steps)
    d = report.to_dict()
    if missing is not None:  # created by the export, after every check passed
        print(f"created folder {missing} for --out", file=sys.stderr)
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    shape = d["shape"]
    print(f"wrote {d['files']['model']} ({d['size_bytes']:,} bytes, {d['size_ratio']:.3f} of fp32"
          f"), {d['files']['decoder']}, {d['files']['report']}")
    print(f"shape: layers {shape['layers']}, heads {shape['heads']}, kv_heads "
          f"{shape['kv_heads']}, head_dim {shape['head_dim']}, ffn {shape['ffn_hidden']}; "
          f"opset {d['opset']}")
    print(f"max |logit diff| vs torch {d['max_abs_diff']:.3g}, top-1 agreement "
          f"{d['top1_agreement']:.4f}, ppl onnx {d['ppl_onnx']:.4f} (torch {d['ppl_torch']:.4f}, "
          f"fp32 {d['baseline_ppl_onnx']:.4f})")
    print(f"latency {d['latency_ms']:.2f} ms vs fp32 {d['baseline_latency_ms']:.2f} ms "
          f"({d['speedup']:.2f}x) for batch {d['latency_batch']} x {d['latency_length']} tokens, "
          f"{d['latency_threads']} thread(s); decode check {d['decode_check']}")
    return 0
