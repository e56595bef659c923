"""Command-line data sources and splits shared by every subcommand.

A data source is one of: a named data set (``--dataset``), a generic interaction file
(``--interactions``), a predefined split (``--train/--valid/--test``) or built-in synthetic data
(``--synthetic``). Every command that accepts one uses these helpers, and every run records a
JSON-able description of what it used (written to ``data.json`` / ``report.json``), so that
``metricrec evaluate`` and ``metricrec recommend`` can rebuild the same data and split later.

The synthetic fallback (``metricrec train --dataset NAME`` only): when the data set's files are not in
the *default* data directory and cannot be downloaded (offline), training goes on with the built-in
synthetic data set, and says so everywhere -- a ``DATA: FALLBACK`` line, an output folder named
``<out>-synthetic-fallback``, ``data.json``, the model's own metadata (``data_source``), and a line
from every later command that uses the model (``recommend``, ``evaluate``, ``serve``'s ``/health``).
There is no fallback with ``--no-fallback``, with a chosen data directory (``--data-dir`` or
``$METRICREC_DATA``: a typo there is an error), nor for files that are present but differ from the
official release (an error; ``--no-verify`` loads them).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from ..data.datasets import (DownloadError, available_datasets, dataset_has_split, explicit_data_dir, load_dataset,
                             load_dataset_split, resolve_data_dir)
from ..data.delimited import plain_suffix
from ..data.features import describe_features, filter_min_count, read_item_features
from ..data.interactions import Features, Interactions
from ..data.readers import read_interactions
from ..data.splits import Split, check_ratios, leave_k_out, ratio_split, temporal_split
from ..data.split_files import read_split
from ..data.synthetic import PRESETS, generate
from ..errors import DataError
from .boundary import quiet_warnings_to_stderr  # noqa: F401 (its former home)

SPLIT_METHODS = ("ratio", "leave-k-out", "leave-latest", "temporal", "predefined")
#: Synthetic preset a training falls back to, and the suffix of its output folder.
FALLBACK_PRESET = "small"
FALLBACK_SUFFIX = "-synthetic-fallback"


def add_data_arguments(p: argparse.ArgumentParser, *, predefined: bool = True, required: bool = False) -> None:
    """Flags selecting the data source."""
    g = p.add_argument_group("data source (one of)")
    g.add_argument("--dataset", choices=available_datasets(), help="a built-in data set")
    g.add_argument("--data-dir", help="folder holding data set folders (default: $METRICREC_DATA or ~/.cache/metricrec)")
    g.add_argument("--no-download", action="store_true", help="never download missing data set files")
    g.add_argument("--no-verify", action="store_true",
                   help="load data set files even when their sizes or checksums differ from the official release "
                        "(recorded as unverified)")
    g.add_argument("--interactions", metavar="FILE", help="generic interactions file (.csv, .tsv, .inter, .parquet, or any with --sep)")
    g.add_argument("--user-col", default="0", help="user id column (index or header name; default 0)")
    g.add_argument("--item-col", default="1", help="item id column (default 1)")
    g.add_argument("--rating-col", help="rating column (default: none, every row is a positive)")
    g.add_argument("--timestamp-col", help="timestamp column (for temporal splits)")
    g.add_argument("--sep", help="field separator (default from the suffix; '\\t' for tab)")
    add_header_arguments(g, "the --interactions file")
    g.add_argument("--min-rating", type=float,
                   help="positives are ratings >= this (default: the data set's own rule -- MovieLens 4, FilmTrust "
                        "every rating 0.5-4; an --interactions file with --rating-col: every row)")
    g.add_argument("--synthetic", choices=sorted(PRESETS), help="built-in synthetic data with planted clusters")
    if predefined:
        g.add_argument("--train", metavar="CSV", help="predefined split: train pairs (user,item with header)")
        g.add_argument("--valid", metavar="CSV", help="predefined split: valid pairs")
        g.add_argument("--test", metavar="CSV", help="predefined split: test pairs")


def add_header_arguments(g: argparse.ArgumentParser | argparse._ArgumentGroup, what: str) -> None:
    """``--header`` / ``--no-header`` (dest ``header``: True, False, default None) for a text file whose
    columns are given by position: without either, a first line that looks like a header is an error
    (:mod:`metricrec.data.header_check`)."""
    both = g.add_mutually_exclusive_group()
    both.add_argument("--header", dest="header", action="store_const", const=True, default=None,
                      help=f"the first line of {what} is a header: skip it (default: a first line that looks "
                           "like a header is an error, columns given by name always read one)")
    both.add_argument("--no-header", dest="header", action="store_const", const=False,
                      help=f"the first line of {what} is data, even if it looks like a header")


def add_split_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("split (ignored with a predefined split)")
    g.add_argument("--split", choices=SPLIT_METHODS, default="ratio",
                   help="split method (default: the paper's 60/20/20 per user; 'predefined': the data set's own "
                        "published split, e.g. steam-200k's)")
    g.add_argument("--ratios", default="0.6,0.2,0.2", help="train,valid,test ratios (ratio and temporal splits)")
    g.add_argument("--leave-k", type=int, default=1, help="items per user held out for test (and valid) with leave-k-out")
    g.add_argument("--split-seed", type=int, default=0, help="seed of the split (default 0)")
    g.add_argument("--drop-small-users", action="store_true", help="drop users with < 5 positives instead of keeping them in train")


def add_feature_arguments(p: argparse.ArgumentParser) -> None:
    """Flags selecting item features (CML+F)."""
    g = p.add_argument_group("item features (CML+F)")
    g.add_argument("--item-features", metavar="tags|genres|FILE",
                   help="'tags' or 'genres': the data set's own item features (citeulike-a tags, MovieLens genres "
                        "and release decades); FILE: CSV rows item,feature[,value] with raw item ids")
    g.add_argument("--tag-min-count", type=int, metavar="N",
                   help="keep only features used by >= N items (default 5 for 'tags', as the CML paper, else 1)")


def load_item_features(args: argparse.Namespace, data: Interactions) -> tuple[Features | None, dict[str, Any]]:
    """The item features ``--item-features`` names, aligned with ``data``'s items, and a JSON-able
    description (source, min_count, counts). (None, {}) without the flag."""
    choice = getattr(args, "item_features", None)
    if not choice:
        return None, {}
    builtin = choice in ("tags", "genres")
    min_count = args.tag_min_count if args.tag_min_count is not None else (5 if choice == "tags" else 1)
    if builtin:
        if data.item_features is None or data.item_features.n_features == 0:
            raise ValueError(f"--item-features {choice}: this data has no built-in item features "
                             "(citeulike-a has tags, MovieLens genres); give a feature FILE instead")
        feats = data.item_features
        if min_count > 1:
            feats = filter_min_count(feats, min_count)
        desc: dict[str, Any] = {"source": choice}
    else:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # the file's header names the columns (item, feature, optional value): never guessed
            feats = read_item_features(choice, data.item_ids, min_count=min_count, item_col="item",
                                       feature_col="feature", value_col="value")
        for w in caught:  # shown now and kept in the report: never silent
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        desc = {"source": "file", "path": str(choice), "warnings": [str(w.message) for w in caught]}
    desc.update(min_count=min_count, **describe_features(feats))
    return feats, desc


def _col(value: str | None) -> int | str | None:
    if value is None:
        return None
    return int(value) if value.lstrip("-").isdigit() else value


def _file_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Reader arguments of ``--interactions FILE`` (see :func:`metricrec.data.readers.read_interactions`).

    A ``.inter`` file names its fields in its typed header, so the default ``--user-col 0 --item-col 1``
    are not passed for it (its ``user_id``/``item_id``/``rating``/``timestamp`` fields are used).
    """
    kw: dict[str, Any] = {"user_col": _col(args.user_col), "item_col": _col(args.item_col),
                          "rating_col": _col(args.rating_col), "timestamp_col": _col(args.timestamp_col),
                          "min_rating": args.min_rating, "header": getattr(args, "header", None)}
    if plain_suffix(args.interactions) == ".inter":
        for key, default in (("user_col", 0), ("item_col", 1)):
            if kw[key] == default:
                kw[key] = None
    if args.sep:
        kw["sep"] = args.sep.encode().decode("unicode_escape")
    return {k: v for k, v in kw.items() if v is not None}


def describe_args(args: argparse.Namespace) -> dict[str, Any]:
    """The data-source and split flags as a JSON-able dict (to rebuild the same data later)."""
    keys = ["dataset", "data_dir", "no_verify", "interactions", "user_col", "item_col", "rating_col",
            "timestamp_col", "sep", "header", "min_rating", "synthetic", "train", "valid", "test", "split", "ratios", "leave_k",
            "split_seed", "drop_small_users"]
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def note(msg: str) -> None:
    print(msg, file=sys.stderr)


def load_data(args: argparse.Namespace, *, fallback_synthetic: bool = False) -> tuple[Interactions | None, dict[str, Any]]:
    """Load the data source the flags name. Returns (data or None for a predefined split, description).

    With ``fallback_synthetic`` a ``--dataset`` that is unavailable (see the module docstring) gives the
    synthetic fallback: its description has ``fallback_for`` and ``args`` is changed to name what was
    really used (``--synthetic``), so that ``--resume`` and ``evaluate`` rebuild it.
    """
    chosen = [n for n in ("dataset", "interactions", "synthetic") if getattr(args, n, None)]
    if getattr(args, "train", None):
        chosen.append("train")
    if len(chosen) > 1:
        raise ValueError(f"choose one data source, got --{' --'.join(chosen)}")
    if not chosen:
        raise ValueError("no data: give --dataset NAME, --interactions FILE, --synthetic PRESET or --train/--valid/--test")
    if getattr(args, "train", None):
        if not (args.valid and args.test):
            raise ValueError("a predefined split needs all three of --train, --valid and --test")
        return None, {"kind": "predefined", "train": args.train, "valid": args.valid, "test": args.test}
    if args.synthetic:
        data = generate(preset=args.synthetic, seed=0)
        return data, {"kind": "synthetic", "preset": args.synthetic}
    if args.interactions:
        kw = _file_kwargs(args)
        data = read_interactions(args.interactions, **kw)
        return data, {"kind": "file", "path": args.interactions, **{k: v for k, v in kw.items() if v is not None}}
    return _load_named(args, fallback_synthetic)


def _load_named(args: argparse.Namespace, fallback: bool) -> tuple[Interactions, dict[str, Any]]:
    """``--dataset NAME``: the verified files, else (``fallback``, default data directory only) synthetic data."""
    verify = not getattr(args, "no_verify", False)
    try:
        data = load_dataset(args.dataset, args.data_dir, min_rating=args.min_rating,
                            download=not args.no_download, verify=verify)
    except (DownloadError, FileNotFoundError) as exc:
        if not fallback:
            raise
        if explicit_data_dir(args.data_dir):
            chosen = "--data-dir" if args.data_dir is not None else "$METRICREC_DATA"
            raise DataError(f"{exc}; no synthetic fallback when the data directory is chosen ({chosen}): "
                            "fix the path, or train on --synthetic PRESET on purpose") from None
        return _fallback(args, exc)
    desc = {"kind": "dataset", "name": args.dataset, "data_dir": str(data.meta.get("data_dir", args.data_dir)),
            "min_rating": data.meta.get("min_rating"), "verified": bool(data.meta.get("verified"))}
    return data, desc


def _fallback(args: argparse.Namespace, exc: BaseException) -> tuple[Interactions, dict[str, Any]]:
    name = args.dataset
    where = resolve_data_dir() / name
    note(f"DATA: {name} is not available here: {' '.join(str(exc).split())}")
    note(f"DATA: FALLBACK: using the built-in synthetic data set (preset '{FALLBACK_PRESET}', planted clusters), "
         f"NOT {name}: the output folder gets '{FALLBACK_SUFFIX}' and every later command says so. For {name} "
         f"itself: go online, put its files in {where}, or pass --data-dir; --no-fallback makes this an error.")
    data = generate(preset=FALLBACK_PRESET, seed=0)
    args.dataset, args.synthetic = None, FALLBACK_PRESET  # what --resume and evaluate must rebuild
    return data, {"kind": "synthetic", "preset": FALLBACK_PRESET, "fallback_for": name, "reason": str(exc)}


def fallback_out(out: str | os.PathLike) -> Path:
    """The output folder of a fallback run: ``out`` with :data:`FALLBACK_SUFFIX` added to its name."""
    path = Path(out)
    if path.name in ("", ".", ".."):
        path = Path(os.path.abspath(path))
    return path if path.name.endswith(FALLBACK_SUFFIX) else path.with_name(path.name + FALLBACK_SUFFIX)


def source_summary(desc: dict[str, Any]) -> dict[str, Any]:
    """The few plain facts of a data description a model keeps in its metadata (``data_source``)."""
    keys = ("kind", "name", "preset", "fallback_for", "verified", "path", "min_rating")
    return {k: desc[k] for k in keys if desc.get(k) is not None}


def model_data_warning(model: Any, run_doc: dict[str, Any] | None = None) -> str | None:
    """One line for every command that uses a model trained on a synthetic fallback (or on data set
    files that were not verified); None otherwise. Read from the model's ``data_source``, else from
    the run's ``data.json`` document."""
    src = getattr(model, "data_source", None) or (run_doc or {}).get("source") or {}
    if not isinstance(src, dict):
        return None
    if src.get("fallback_for"):
        return (f"DATA: this model was trained on the built-in synthetic data set (preset {src.get('preset')}) "
                f"as a FALLBACK because {src['fallback_for']} was not available: its users, items and scores "
                f"are synthetic, not {src['fallback_for']}'s")
    if src.get("kind") == "dataset" and src.get("verified") is False:
        return f"DATA: this model was trained on {src.get('name')} files that were NOT verified (--no-verify)"
    return None


def make_split(args: argparse.Namespace, data: Interactions | None) -> Split:
    """The split the flags ask for (or the predefined one)."""
    if data is None:
        return read_split(args.train, args.valid, args.test)
    if args.split == "predefined":
        return _published_split(args)
    ratios = _ratios(args.ratios)
    if args.split == "ratio":
        return ratio_split(data, ratios, seed=args.split_seed, drop_small_users=args.drop_small_users)
    if args.split == "leave-k-out":
        return leave_k_out(data, args.leave_k, mode="random", seed=args.split_seed)
    if args.split == "leave-latest":
        return leave_k_out(data, args.leave_k, mode="latest", seed=args.split_seed)
    return temporal_split(data, ratios)


def _published_split(args: argparse.Namespace) -> Split:
    """``--split predefined``: the split a data set's authors published (:func:`load_dataset_split`)."""
    with_split = [n for n in available_datasets() if dataset_has_split(n)]
    if not getattr(args, "dataset", None):
        raise ValueError(f"--split predefined takes the published split of a --dataset ({', '.join(with_split)}); "
                         "for your own files give --train/--valid/--test")
    if not dataset_has_split(args.dataset):
        raise ValueError(f"--split predefined: {args.dataset} ships no split (those that do: {', '.join(with_split)}); "
                         "choose --split ratio, leave-k-out, leave-latest or temporal")
    if args.min_rating is not None:
        raise ValueError(f"--split predefined uses {args.dataset}'s published parts as they are; --min-rating "
                         "would change them")
    return load_dataset_split(args.dataset, args.data_dir, verify=not getattr(args, "no_verify", False))


def _ratios(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"--ratios must be three numbers like 0.6,0.2,0.2, got {text!r}") from None
    if len(parts) != 3:
        raise ValueError(f"--ratios must be three numbers like 0.6,0.2,0.2, got {text!r}")
    try:
        return check_ratios(parts)
    except ValueError as exc:  # the split's own rule, said about the flag and its text
        raise ValueError("--" + str(exc).replace(repr(parts), repr(text))) from None


def rebuild(desc: dict[str, Any]) -> argparse.Namespace:
    """A namespace of data flags from a saved :func:`describe_args` dict."""
    ns = argparse.Namespace(dataset=None, data_dir=None, no_download=False, no_verify=False, interactions=None,
                            user_col="0", item_col="1", rating_col=None, timestamp_col=None, sep=None, header=None,
                            min_rating=None, synthetic=None, train=None, valid=None, test=None, split="ratio",
                            ratios="0.6,0.2,0.2", leave_k=1, split_seed=0, drop_small_users=False)
    for k, v in desc.items():
        setattr(ns, k, v)
    return ns


