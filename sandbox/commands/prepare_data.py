"""sandbox prepare-data SRC... --out DIR [--tokenizer bpe|byte] [--vocab N] [--val-fraction F]"""

from __future__ import annotations

import argparse
import json
import sys

from sandbox.commands._args import integer, number

HELP = ("tokenize text (builtin, .txt, .jsonl, folders) into token shards for train.data: "
        "a byte-level BPE trained here (or bytes), DIR/tokenizer.json, DIR/meta.json")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sources", nargs="+", metavar="SRC",
                   help="'builtin' (the builtin corpus), .txt / .jsonl files or folders of them")
    p.add_argument("--out", required=True, help="new or empty folder to write")
    p.add_argument("--tokenizer", choices=("bpe", "byte"), default="bpe",
                   help="bpe: byte-level BPE trained on the sources (default); byte: 256 ids")
    p.add_argument("--vocab", type=integer(257, 2**32 - 1), default=None,
                   help="BPE vocabulary size, ids (default 8192; the byte tokenizer has 256)")
    p.add_argument("--val-fraction", type=number(0.0, 0.5, low_open=True), default=0.05,
                   help="share of the token stream held out for evaluation (default 0.05)")
    p.add_argument("--json", action="store_true", help="print meta.json")


def main(args: argparse.Namespace) -> int:
    from sandbox.errors import SandboxError
    from sandbox.outputs import checked_path, output_dir

    out = output_dir(args.out, "--out")
    for s in args.sources:
        if s != "builtin":
            checked_path(s, "SRC")
    if args.tokenizer == "byte" and args.vocab not in (None, 256):
        raise SandboxError(f"--vocab: the byte tokenizer has 256 ids, got {args.vocab:,}")
    from runtime.data.prepare import prepare

    meta = prepare(args.sources, out, tokenizer=args.tokenizer, vocab=args.vocab,
                   val_fraction=args.val_fraction,
                   log=lambda line: print(line, file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps(meta, indent=2))
        return 0
    tr, va = meta["split"]["train"], meta["split"]["val"]
    print(f"{out}: {meta['tokenizer']} vocab {meta['vocab']:,}, {meta['tokens']:,} tokens "
          f"({meta['bytes_per_token']:.2f} bytes/token, {meta['dtype']}), train "
          f"{tr[1] - tr[0]:,} / val {va[1] - va[0]:,}; train.data = \"{out}\"")
    return 0
