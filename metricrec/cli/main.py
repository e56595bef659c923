"""The `metricrec` command: parse, dispatch, and end every failure as one line and a documented exit
status (:mod:`metricrec.cli.boundary`).

Only the module of the command asked for is imported (:data:`metricrec.cli.commands.COMMANDS`): the
other commands are listed by name and help, so `metricrec --help` and `--version` import no torch,
and `train` writes its run record before the training side is imported."""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from typing import Sequence

from .. import __version__
from .boundary import EPILOG, OneLineParser, add_debug_flags, describe_failure, quiet_warnings_to_stderr, run_guarded
from .commands import COMMANDS
from .config_file import add_config_arguments, parse_with_config

_TOP_FLAGS_WITH_VALUE = ("--config",)


def chosen_command(argv: Sequence[str]) -> str | None:
    """The command named in ``argv`` (the first word that is not a top-level option), or None."""
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word in _TOP_FLAGS_WITH_VALUE:
            skip = True
        elif word == "--":
            return None
        elif not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command (``only=None``), or of ``only`` in full and the others by name and
    help (what :func:`main` uses: their modules are not imported)."""
    p = OneLineParser(
        prog="metricrec",
        description="Collaborative Metric Learning recommenders: data, training, evaluation, recommendations.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"metricrec {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}")
    full = list(dict.fromkeys(c.module for c in COMMANDS.values())) if only is None else \
        ([COMMANDS[only].module] if only in COMMANDS else [])
    registered: set[str] = set()
    for name, command in COMMANDS.items():
        if command.module in full and command.module not in registered:
            importlib.import_module(f"{__package__}.{command.module}").register(sub)
            registered.add(command.module)
        elif command.module not in full:
            sub.add_parser(name, help=command.help)
    add_config_arguments(p)  # --config FILE on every subcommand
    add_debug_flags(p)  # --debug (alias --traceback) before or after the subcommand
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = chosen_command(argv)
    parser = build_parser(only=command) if command is not None else build_parser(only="")
    try:
        args = parse_with_config(parser, argv)
    except ValueError as exc:  # --config FILE unreadable, or a key or value its subcommand refuses
        print(f"metricrec: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - anything else while reading --config: the boundary's one line
        code, line = describe_failure(exc)
        print(f"metricrec: {line}", file=sys.stderr)
        return code
    quiet_warnings_to_stderr()
    warnings.simplefilter("default")
    return run_guarded(lambda: args.func(args), debug=args.debug)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
