"""`metricrec report DIR`: one self-contained HTML page of a training run or a tuning study."""

from __future__ import annotations

import argparse

from .commands import COMMANDS


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``report`` subcommand."""
    p = sub.add_parser("report", help=COMMANDS["report"].help,
                       description="One self-contained HTML page (matplotlib figures as embedded PNG) of a "
                                   "'metricrec train' run folder or a 'metricrec tune' --out folder.")
    p.add_argument("run_dir", metavar="DIR", help="a 'metricrec train' run folder or a 'metricrec tune' --out folder")
    p.add_argument("--out", metavar="FILE", help="where the page goes (default DIR/report.html)")
    p.add_argument("--map", choices=("auto", "pca", "umap"), default="auto",
                   help="2-D projection of the item vectors (auto: UMAP when umap-learn is installed, else PCA)")
    p.add_argument("--no-features", action="store_true",
                   help="colour the item map by popularity only (do not re-read the data for item features)")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    """Write the page and print where it went."""
    from ..report import write_report

    path = write_report(args.run_dir, args.out, method=args.map, with_features=not args.no_features)
    print(f"report -> {path}")
    return 0
