"""sandbox generate model.onnx --prompt TEXT [--max-new-tokens N] [--temperature T] [--seed S]"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sandbox.commands._args import SEED_MAX, integer, number, text

MAX_NEW_TOKENS = 65_536  # tokens one call may generate (also without a known context)
HELP = "generate text with onnxruntime from an exported model (uses its KV-cache graph)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="ONNX file written by `sandbox export`")
    p.add_argument("--prompt", required=True, type=text,
                   help="prompt text (encoded with the tokenizer exported next to the model)")
    p.add_argument("--max-new-tokens", type=integer(0, MAX_NEW_TOKENS), default=64)
    p.add_argument("--temperature", type=number(0.0), default=0.0, help="0: greedy (default)")
    p.add_argument("--seed", type=integer(0, SEED_MAX), default=0,
                   help="sampling seed (0 .. 2**32-1)")
    p.add_argument("--no-cache", action="store_true",
                   help="re-run the full graph each step instead of the KV-cache graph")


def check_report(model: Path) -> None:
    """Refuse a `model.report.json` next to the model that is not the export's report."""
    import json

    from sandbox.errors import SandboxError
    from sandbox.files import read_text_file

    report = model.with_suffix(".report.json")
    if not report.exists():
        return
    try:
        d = json.loads(read_text_file(report, "export report"))
    except (ValueError, RecursionError):
        raise SandboxError(f"{report}: not a JSON export report (written by sandbox "
                           "export); re-export or remove it") from None
    shape = d.get("shape", {}) if isinstance(d, dict) else None
    if not isinstance(shape, dict) or not all(
            type(shape.get(k, 0)) is int and shape.get(k, 0) >= 0 for k in ("seq_len", "vocab")):
        raise SandboxError(f"{report}: 'shape' must hold the integers seq_len and vocab")


def main(args: argparse.Namespace) -> int:
    from sandbox.errors import SandboxError
    from sandbox.outputs import checked_path

    model = checked_path(args.model, "MODEL")
    if not args.prompt:
        raise SandboxError("--prompt: empty; the model continues a prompt of at least one byte")
    check_report(model)  # before importing onnxruntime (seconds)
    from runtime.export.generate import Generator, load_tokenizer

    gen = Generator.open(model)
    tok = load_tokenizer(model, gen.vocab)
    if tok.vocab > gen.vocab:
        raise SandboxError(f"{args.model}: the tokenizer has {tok.vocab:,} ids but the model "
                           f"only {gen.vocab:,}")
    prompt = tok.encode(args.prompt)
    if gen.context and len(prompt) >= gen.context:
        raise SandboxError(f"--prompt: {len(prompt):,} tokens, the model's context is "
                           f"{gen.context}; give a prompt of at most {gen.context - 1} tokens")
    if gen.context and len(prompt) + args.max_new_tokens > gen.context:
        raise SandboxError(f"--max-new-tokens: the prompt's {len(prompt)} tokens + "
                           f"{args.max_new_tokens:,} new ones exceed the model's context of "
                           f"{gen.context} tokens")
    tokens = gen.generate(prompt, args.max_new_tokens, args.temperature,
                          args.seed, use_cache=not args.no_cache)[0]
    sys.stdout.write(tok.decode(prompt + tokens) + "\n")
    return 0
