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


def version_text() -> str:
    """"sandbox 0.1.0 (torch 2.13.0, python 3.12.3)", read from the installed
    packages' metadata: torch is not imported (that takes seconds)."""
    import platform
    from importlib import metadata

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    from sandbox import __version__

    torch = version("torch")
    return (f"sandbox {version('llm-sandbox') or __version__} "
            f"({'torch ' + torch if torch else 'torch not installed'}, "
            f"python {platform.python_version()})")


class _Version(argparse.Action):
    """--version: print `version_text()` and exit 0 (computed only when asked)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print the versions of sandbox, torch and python, and exit")

    def __call__(self, parser, namespace, values, option_string=None):  # type: ignore
        print(version_text())
        parser.exit()


class Parser(argparse.ArgumentParser):
    """argparse with the CLI's error rule: a bad argument is one line and exit 1."""

    def error(self, message: str):  # type: ignore[override]
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(1)


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = Parser(
        prog="sandbox", description="Plan, simulate, run and export distributed LLM training.")
    parser.add_argument("-V", "--version", action=_Version)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = _modules()
    for name, mod in modules.items():
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
    return parser, modules


def _run(module, args: argparse.Namespace) -> int:
    """A subcommand's main; its own uncalibrated-cluster line replaces the API's warning."""
    import warnings

    from sandbox.calibration import CalibrationWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        return int(module.main(args) or 0)


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
        return _run(modules[args.command], args)
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
