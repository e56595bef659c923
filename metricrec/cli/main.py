"""The `metricrec` command: parse, dispatch, and end every failure as one line and a documented exit
status (:mod:`metricrec.cli.boundary`)."""

from __future__ import annotations

import argparse
import sys
import warnings

from .. import __version__
from . import data_cmd, recommend_cmd, train_cmd
from . import index_cmd, serve_cmd
from . import report_cmd, tune_cmd
from .config_file import add_config_arguments, parse_with_config
from .boundary import EPILOG, OneLineParser, add_debug_flags, run_guarded
from .sources import quiet_warnings_to_stderr


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="metricrec",
        description="Collaborative Metric Learning recommenders: data, training, evaluation, recommendations.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"metricrec {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="{data,train,evaluate,recommend,index,serve,tune,report}")
    data_cmd.register(sub)
    train_cmd.register(sub)
    recommend_cmd.register(sub)
    index_cmd.register(sub); serve_cmd.register(sub)  # noqa: E702
    tune_cmd.register(sub); report_cmd.register(sub)  # noqa: E702
    add_config_arguments(p)  # --config FILE on every subcommand
    add_debug_flags(p)  # --debug (alias --traceback) before or after the subcommand
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parse_with_config(parser, argv)
    except ValueError as exc:  # --config FILE unreadable, or a key or value its subcommand refuses
        print(f"metricrec: error: {exc}", file=sys.stderr)
        return 2
    quiet_warnings_to_stderr()
    warnings.simplefilter("default")
    return run_guarded(lambda: args.func(args), debug=args.debug)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
