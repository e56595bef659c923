"""Predefined splits as files: three CSVs (train/valid/test) of ``user,item`` pairs with raw ids.

Writing a split lets another tool train on identical data; reading one lets metricrec do the same with
a split made elsewhere. The id universe is the training file's users and items, or a given
:class:`~metricrec.interactions.Interactions` (e.g. the full data set, to keep its features).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .interactions import DataWarning, Interactions
from .readers import _parse_int, read_delimited_columns
from .splits import Split

__all__ = ["write_split", "read_split"]

PARTS = ("train", "valid", "test")


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _check_ids(ids: np.ndarray, what: str) -> None:
    if ids.dtype.kind in "iu":
        return
    s = ids.astype(str)
    for ch in (",", "\n", "\r", '"'):
        bad = np.flatnonzero(np.char.find(s, ch) >= 0)
        if bad.size:
            raise ValueError(f"{what} id {s[bad[0]]!r} contains {ch!r} and cannot be written to a plain CSV")


def write_split(split: Split, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``train.csv``, ``valid.csv`` and ``test.csv`` (header ``user,item``, raw ids) into a folder.

    Parameters
    ----------
    split : Split
    out_dir : str or path-like
        Created if missing. Each file is written atomically (temp file, then rename).

    Returns
    -------
    dict
        ``{"train": Path, "valid": Path, "test": Path}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_ids(split.train.user_ids, "user")
    _check_ids(split.train.item_ids, "item")
    paths: dict[str, Path] = {}
    for name in PARTS:
        part: Interactions = getattr(split, name)
        rows, cols, _ = part.to_coo_arrays()
        users = part.user_ids[rows].astype(str)
        items = part.item_ids[cols].astype(str)
        body = np.char.add(np.char.add(users, ","), items)
        text = "user,item\n" + ("\n".join(body.tolist()) + "\n" if len(body) else "")
        path = out / f"{name}.csv"
        _atomic_write_text(path, text)
        paths[name] = path
    return paths


def _match(raw: np.ndarray, universe: np.ndarray) -> np.ndarray:
    """Index of each raw (string) id in the universe, -1 when absent."""
    ok = np.ones(raw.shape, dtype=bool)
    if universe.dtype.kind in "iu":
        keys = _parse_int(raw.tolist())
        if keys is None:  # some ids are not integers: they cannot be in an integer universe
            keys = np.zeros(raw.shape, dtype=np.int64)
            for k, s in enumerate(raw.tolist()):
                try:
                    keys[k] = int(s)
                except (ValueError, OverflowError):
                    ok[k] = False
    else:
        keys, universe = raw.astype(str), universe.astype(str)
    if len(universe) == 0:
        return np.full(raw.shape, -1, dtype=np.int64)
    order = np.argsort(universe, kind="stable")
    sorted_u = universe[order]
    pos = np.clip(np.searchsorted(sorted_u, keys), 0, len(sorted_u) - 1)
    found = ok & (sorted_u[pos] == keys)
    return np.where(found, order[pos], -1).astype(np.int64)


def _id_universe(raw: np.ndarray) -> np.ndarray:
    """Sorted unique ids, int64 when every id is an integer (the rule of :mod:`metricrec.io`)."""
    ints = _parse_int(raw.tolist())
    return np.unique(ints) if ints is not None else np.unique(raw.astype(str))


def read_split(
    train: str | os.PathLike,
    valid: str | os.PathLike,
    test: str | os.PathLike,
    *,
    universe: Interactions | None = None,
    sep: str = ",",
    header: bool | None = None,
) -> Split:
    """Read a predefined split from three files of ``user,item`` pairs (raw ids; header optional).

    Parameters
    ----------
    train, valid, test : str or path-like
        Delimited files whose first two columns are the raw user and item id (as written by
        :func:`write_split`); a first line ``user,item`` is recognised as a header.
    universe : Interactions, optional
        Data set giving the id universe (order kept) and the features of the parts. Default: the
        users and items of the training file, sorted.
    sep : str, default ","
    header : bool or None
        ``None`` infers it (see :func:`metricrec.io.read_delimited`).

    Returns
    -------
    Split
        Parts of shape (n_users, n_items) over the universe. ``meta["n_unknown"][part]`` counts the
        pairs dropped because their user or item is not in the universe (a ``DataWarning`` names the
        file and counts); ``meta["n_overlap"]`` counts pairs present in two files (kept, with a warning).
    """
    paths = {"train": str(train), "valid": str(valid), "test": str(test)}
    raw = {
        name: read_delimited_columns(p, user_col=0, item_col=1, sep=sep, header=header, ids_as_str=True,
                                     allow_empty=True)
        for name, p in paths.items()
    }
    if universe is not None:
        uid, iid = universe.user_ids, universe.item_ids
        ifeat, ufeat, base_meta = universe.item_features, universe.user_features, dict(universe.meta)
    else:
        uid, iid = _id_universe(raw["train"].users), _id_universe(raw["train"].items)
        ifeat = ufeat = None
        base_meta = {}

    parts: dict[str, Interactions] = {}
    n_unknown: dict[str, dict[str, int]] = {}
    keys: dict[str, np.ndarray] = {}
    for name in PARTS:
        cols = raw[name]
        u, i = _match(cols.users, uid), _match(cols.items, iid)
        unknown = (u < 0) | (i < 0)
        counts = {
            "pairs": int(unknown.sum()),
            "users": int(np.unique(cols.users[u < 0]).size),
            "items": int(np.unique(cols.items[i < 0]).size),
        }
        n_unknown[name] = counts
        if counts["pairs"]:
            warnings.warn(
                f"{paths[name]}: dropped {counts['pairs']} of {unknown.size} pairs whose user or item is not "
                f"in the id universe ({counts['users']} unknown users, {counts['items']} unknown items)",
                DataWarning,
                stacklevel=2,
            )
        u, i = u[~unknown], i[~unknown]
        part = Interactions.from_arrays(
            u, i, user_ids=np.arange(len(uid)), item_ids=np.arange(len(iid)), source=paths[name],
        )
        meta: dict[str, Any] = dict(base_meta)
        meta.update(part.meta)
        parts[name] = Interactions(part.matrix, uid, iid, None, ifeat, ufeat, meta)
        keys[name] = np.unique(u * max(len(iid), 1) + i)

    n_overlap: dict[str, int] = {}
    for a, b in (("train", "valid"), ("train", "test"), ("valid", "test")):
        n = int(np.intersect1d(keys[a], keys[b], assume_unique=True).size)
        n_overlap[f"{a}&{b}"] = n
        if n:
            warnings.warn(
                f"{n} (user, item) pairs are in both {paths[a]} and {paths[b]}; they are kept in both parts",
                DataWarning,
                stacklevel=2,
            )
    meta = {"method": "predefined", "files": paths, "n_unknown": n_unknown, "n_overlap": n_overlap}
    return Split(parts["train"], parts["valid"], parts["test"], meta)
