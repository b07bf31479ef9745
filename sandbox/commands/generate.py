"""sandbox generate model.onnx --prompt TEXT [--max-new-tokens N] [--temperature T] [--seed S]"""

from __future__ import annotations

import argparse
import math
import sys

MAX_NEW_TOKENS = 65_536  # tokens one call may generate (also without a known context)
HELP = "generate text with onnxruntime from an exported model (uses its KV-cache graph)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="ONNX file written by `sandbox export`")
    p.add_argument("--prompt", required=True, help="prompt text (byte-level tokens)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--no-cache", action="store_true",
                   help="re-run the full graph each step instead of the KV-cache graph")


def main(args: argparse.Namespace) -> int:
    from sandbox.errors import SandboxError

    if not 0 <= args.max_new_tokens <= MAX_NEW_TOKENS:
        raise SandboxError(f"--max-new-tokens: must be in 0..{MAX_NEW_TOKENS:,}, "
                           f"got {args.max_new_tokens:,}")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise SandboxError(f"--temperature: must be a finite number >= 0, got {args.temperature}")
    if not args.prompt:
        raise SandboxError("--prompt: empty; the model continues a prompt of at least one byte")
    from runtime.export.generate import Generator, decode, encode

    gen = Generator.open(args.model)
    if gen.vocab != 256:
        raise SandboxError(f"{args.model}: vocab {gen.vocab} is not byte-level (256)")
    n_prompt = len(encode(args.prompt))
    if gen.context and n_prompt + args.max_new_tokens > gen.context:
        raise SandboxError(f"--max-new-tokens: the prompt's {n_prompt} tokens + "
                           f"{args.max_new_tokens:,} new ones exceed the model's context of "
                           f"{gen.context} tokens")
    tokens = gen.generate(encode(args.prompt), args.max_new_tokens, args.temperature,
                          args.seed, use_cache=not args.no_cache)[0]
    sys.stdout.write(args.prompt + decode(tokens) + "\n")
    return 0
