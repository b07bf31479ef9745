"""The `sandbox` command line. Each subcommand lives in `sandbox/commands/`
with `HELP`, `add_arguments(parser)` and `main(args) -> int`."""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys

# errors of the machine, not of the code: a full disk, a read-only file system, a quota
_ENVIRONMENT = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
COMMANDS = ("demo", "info", "presets", "simulate", "search", "report", "prepare-data", "run",
            "compare", "calibrate", "export", "generate", "sweep")


def _module(command: str) -> str:
    """The module of a subcommand: `prepare-data` lives in prepare_data.py."""
    return command.replace("-", "_")


def _modules() -> dict:
    found = {}
    for name in COMMANDS:
        try:
            found[name] = importlib.import_module(f"sandbox.commands.{_module(name)}")
        except ModuleNotFoundError as e:
            if e.name != f"sandbox.commands.{_module(name)}":
                raise
    return found


class Parser(argparse.ArgumentParser):
    """argparse with the CLI's error rule: a bad argument is one line and exit 1."""

    def error(self, message: str):  # type: ignore[override]
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(1)


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = Parser(
        prog="sandbox", description="Plan, simulate, run and export distributed LLM training.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = _modules()
    for name, mod in modules.items():
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
    return parser, modules


def main(argv: list[str] | None = None) -> int:
    from sandbox.errors import SandboxError

    for stream in (sys.stdout, sys.stderr):  # a non-UTF-8 file name is printed, not a crash
        if getattr(stream, "errors", "") == "strict" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    parser, modules = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a bad argument (one line already printed)
        return e.code if isinstance(e.code, int) else 1
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
        if isinstance(e, OSError) and e.errno in _ENVIRONMENT:  # the machine, not the code
            from sandbox.outputs import why

            where = f" ({e.filename})" if e.filename else ""
            print(f"sandbox {args.command}: error: {why(e)}{where}", file=sys.stderr)
            return 1
        print(f"sandbox {args.command}: internal error: {e.__class__.__name__}: {e} "
              "(set SANDBOX_DEBUG=1 for the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
