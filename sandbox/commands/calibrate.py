"""sandbox calibrate --out profile.toml [--device cpu|cuda] [--quick] [--json FILE]"""

from __future__ import annotations

import argparse
import json
import sys

HELP = ("measure this machine's kernels and collectives and write a calibration profile "
        "(TOML) that a cluster can name with profile = \"...\"; on CPU the profile is for one "
        "rank of a plan filling the machine, and OUT.pN.toml for one rank of N processes")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="profile TOML to write")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="benchmark CPU processes with gloo, or the GPU(s) with NCCL")
    p.add_argument("--quick", action="store_true",
                   help="a few seconds on a tiny budget (smoke test, not a real profile)")
    p.add_argument("--json", metavar="FILE", default=None,
                   help="also write every measurement (medians, quartiles, min/max) as JSON")


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sandbox.errors import SandboxError
    from sandbox.outputs import output_file, writing

    out = output_file(args.out, "--out", (".toml",))  # before minutes of benchmarks
    if args.json is not None:
        output_file(args.json, "--json", (".json",))
    from runtime.calibrate.run import calibrate

    try:
        cal = calibrate(args.device, quick=args.quick)
    except RuntimeError as e:
        raise SandboxError(str(e)) from None
    with writing(out, "--out"):
        path = cal.write(out)
    default = max(pk.processes for pk in cal.kernels)
    for pk in cal.kernels:  # one profile per rank count: a rank of 1 differs from 1 of 2
        if pk.processes != default:
            side = out.with_name(f"{out.stem}.p{pk.processes}{out.suffix}")
            with writing(side, "--out"):
                side = cal.write(side, pk.processes)
            print(f"wrote {side} (one rank of {pk.processes})", file=sys.stderr)
    if args.json is not None:
        with writing(args.json, "--json"):
            Path(args.json).write_text(json.dumps(cal.to_dict(), indent=1) + "\n")
    print(f"wrote {path} ({cal.device}, {cal.wall_s:.0f} s of measurement)", file=sys.stderr)
    print(cal.summary())
    return 0
