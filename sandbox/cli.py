"""The `sandbox` command line. Each subcommand lives in `sandbox/commands/`
with `HELP`, `add_arguments(parser)` and `main(args) -> int`."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMANDS = ("demo", "info", "presets", "simulate", "search", "report", "run", "compare",
            "calibrate", "export", "generate")


def _modules() -> dict:
    found = {}
    for name in COMMANDS:
        try:
            found[name] = importlib.import_module(f"sandbox.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"sandbox.commands.{name}":
                raise
    return found


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(
        prog="sandbox", description="Plan, simulate, run and export distributed LLM training.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = _modules()
    for name, mod in modules.items():
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
    return parser, modules


def main(argv: list[str] | None = None) -> int:
    from sandbox.errors import SandboxError

    parser, modules = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 1
    try:
        return int(modules[args.command].main(args) or 0)
    except SandboxError as e:
        for line in str(e).splitlines() or ["unknown problem"]:
            print(f"sandbox {args.command}: error: {line}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"sandbox {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # a bug, not bad input: one line unless debugging
        if os.environ.get("SANDBOX_DEBUG"):
            raise
        print(f"sandbox {args.command}: internal error: {e.__class__.__name__}: {e} "
              "(set SANDBOX_DEBUG=1 for the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
