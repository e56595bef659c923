"""`metricrec data stats` and `metricrec data split`."""

from __future__ import annotations

import argparse

from ..data.split_files import write_split
from .sources import add_data_arguments, add_split_arguments, describe_args, load_data, make_split
from .commands import COMMANDS


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help=COMMANDS["data"].help)
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="{stats,split}")
    stats = dsub.add_parser("stats", help="users, items, interactions, density and split sizes")
    add_data_arguments(stats)
    add_split_arguments(stats)
    stats.set_defaults(func=cmd_stats)
    split = dsub.add_parser("split", help="write a split folder as one unit: train/valid/test CSVs (user,item "
                                          "with raw ids), users.csv/items.csv (the id universe) and split.json")
    add_data_arguments(split, predefined=False)
    add_split_arguments(split)
    split.add_argument("--out", required=True, help="output folder (new, empty, or an earlier split's: replaced whole)")
    split.set_defaults(func=cmd_split)


def cmd_stats(args: argparse.Namespace) -> int:
    data, desc = load_data(args)
    split = make_split(args, data)
    base = data if data is not None else split.train
    n_users, n_items = base.shape
    n_pairs = sum(split.sizes().values()) if data is None else data.nnz
    meta = data.meta if data is not None else {}
    print(f"source        {_describe(desc)}")
    print(f"users         {n_users:,}")
    print(f"items         {n_items:,}")
    if "n_ratings" in meta and meta.get("min_rating") is not None:
        print(f"ratings       {meta['n_ratings']:,}")
        print(f"positives     {n_pairs:,} (rating >= {meta['min_rating']:g})")
    else:
        print(f"interactions  {n_pairs:,}")
    cells = n_users * n_items
    print(f"density       {n_pairs / cells:.4%}" if cells else "density       -")
    sizes = split.sizes()
    total = sum(sizes.values()) or 1
    how = split.meta.get("method", "predefined")
    print(f"split         {how}" + (f" (seed {split.meta['seed']})" if "seed" in split.meta else ""))
    for part in ("train", "valid", "test"):
        print(f"  {part:<11} {sizes[part]:,} ({sizes[part] / total:.1%})")
    evaluated = int((split.test.matrix.getnnz(axis=1) > 0).sum())
    print(f"  users with test items {evaluated:,}")
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    """Write the split folder (parts, id lists, manifest) as one unit and print what went where."""
    data, desc = load_data(args)
    split = make_split(args, data)
    paths = write_split(split, args.out, source={**desc, "args": describe_args(args)})
    sizes = split.sizes()
    for part in ("train", "valid", "test"):
        print(f"{part:<8} {sizes[part]:>10,} pairs -> {paths[part]}")
    print(f"{'users':<8} {split.train.n_users:>10,} ids   -> {paths['users']}")
    print(f"{'items':<8} {split.train.n_items:>10,} ids   -> {paths['items']}")
    print(f"{'manifest':<8} {'':>10}       -> {paths['manifest']} (sizes and sha256 of the five files)")
    return 0


def _describe(desc: dict) -> str:
    if desc["kind"] == "dataset":
        checked = "files NOT verified (--no-verify)" if desc.get("verified") is False else "files verified"
        return f"{desc['name']} ({desc['data_dir']}; {checked})"
    if desc["kind"] == "file":
        return desc["path"]
    if desc["kind"] == "synthetic":
        return f"synthetic preset {desc['preset']}" + (f" (fallback for {desc['fallback_for']})" if "fallback_for" in desc else "")
    return f"predefined split {desc['train']}, {desc['valid']}, {desc['test']}"
