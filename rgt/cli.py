"""The `rgt` command line: one sub-command per module in `rgt.commands`.

Each command module is cheap to import (argparse only at top level) and exposes:

    HELP: str                                   one line for `rgt --help`
    def add_arguments(parser) -> None           its flags
    def run(args) -> int                        does the work; heavy imports go inside

so `rgt --help` and `rgt lint` never import the MCP or vast.ai SDKs.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from types import ModuleType

from rgt import __version__
from rgt.errors import EXIT_USAGE, RgtError, is_disk_full


def command_names() -> list[str]:
    """The sub-command names (`rgt.commands` module names, "_" as "-"), found without importing."""
    import rgt.commands as package

    # A directory listing, not pkgutil.iter_modules: that imports inspect (and ast, dis,
    # tokenize with it), several milliseconds of every `rgt` start-up.
    names = {
        name.removesuffix(".py")
        for folder in package.__path__
        for name in os.listdir(folder)
        if name.endswith(".py")
    }
    return sorted(name.replace("_", "-") for name in names if not name.startswith("_"))


def command_modules(only: str | None = None) -> list[tuple[str, ModuleType]]:
    """Every sub-command module in `rgt.commands` (or just `only`), in `rgt --help` order.

    Discovered rather than listed, so adding a command is adding one module. A module sets
    `ORDER` (lower lists first: the lifecycle, then tools); names starting with "_" are helpers.
    """
    names = [only] if only is not None else command_names()
    found = [
        (name, importlib.import_module(f"rgt.commands.{name.replace('-', '_')}")) for name in names
    ]
    return sorted(found, key=lambda item: (getattr(item[1], "ORDER", 1000), item[0]))


EXIT_INTERNAL = 70  # EX_SOFTWARE: a bug in rgt, not a user mistake


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors exit with rgt's documented code 2 and one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser with every sub-command registered, or only `only` (a known command name)."""
    parser = _Parser(
        prog="rgt",
        description="remote-gpu-trainer: rent GPUs, keep the results, stop the meter safely.",
    )
    parser.add_argument("--version", action="version", version=f"rgt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, module in command_modules(only):
        command_parser = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command_parser)
        command_parser.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `rgt` console script; returns the process exit code."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    from rgt.keeper import enter_keeper_environment

    # Run as a keeper (see rgt.keeper), rgt uses the keeper's directories whatever it inherited.
    enter_keeper_environment()
    # `rgt COMMAND ...` imports only that command's module: every command pays for itself only
    # (rgt lint must start fast). Anything else (--help, a typo) gets the full parser.
    first = arguments[0] if arguments else None
    parser = build_parser(first if first in command_names() else None)
    args = parser.parse_args(arguments)
    if not getattr(args, "_run", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(args._run(args))
    except RgtError as exc:
        print(f"rgt {args.command}: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"rgt {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except OSError as exc:
        if not is_disk_full(exc):
            return _internal_error(args.command, exc)
        # The user's environment, not a bug (exit 2 as documented); commands that know which
        # file they were writing say so themselves (rgt.errors.LocalDiskFull).
        where = f" writing {exc.filename}" if exc.filename else ""
        print(
            f"rgt {args.command}: error: no space left on device{where} (a local disk or your "
            "quota is full); make room, then run the command again",
            file=sys.stderr,
        )
        return EXIT_USAGE
    except Exception as exc:  # a bug in rgt: one line by default, the traceback on request
        return _internal_error(args.command, exc)


def _internal_error(command: str, exc: Exception) -> int:
    """A bug in rgt: one line by default, the traceback with RGT_DEBUG=1."""
    if os.environ.get("RGT_DEBUG"):
        raise exc
    print(
        f"rgt {command}: internal error: {type(exc).__name__}: {exc} "
        "(set RGT_DEBUG=1 for a traceback; please report it)",
        file=sys.stderr,
    )
    return EXIT_INTERNAL
