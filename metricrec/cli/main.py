"""The `metricrec` command: parse, dispatch, and turn input errors into one clear line."""

from __future__ import annotations

import argparse
import sys
import warnings

from .. import __version__
from . import data_cmd, recommend_cmd, train_cmd
from . import index_cmd, serve_cmd
from .sources import quiet_warnings_to_stderr


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="metricrec",
        description="Collaborative Metric Learning recommenders: data, training, evaluation, recommendations.",
    )
    p.add_argument("--version", action="version", version=f"metricrec {__version__}")
    p.add_argument("--traceback", action="store_true", help="show the full Python traceback on errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="{data,train,evaluate,recommend}")
    data_cmd.register(sub)
    train_cmd.register(sub)
    recommend_cmd.register(sub)
    index_cmd.register(sub); serve_cmd.register(sub)  # noqa: E702
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet_warnings_to_stderr()
    warnings.simplefilter("default")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("metricrec: interrupted", file=sys.stderr)
        return 130
    except (ValueError, KeyError, OSError, ImportError, TypeError, IndexError, FloatingPointError) as exc:
        if args.traceback:
            raise
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"metricrec: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
