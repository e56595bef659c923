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

from .columns import read_delimited_columns
from .delimited import Column
from .ids import IdIndex
from .interactions import DataWarning, Interactions
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


def _csv_field(ids: np.ndarray, what: str) -> np.ndarray:
    """Ids as CSV fields: quoted (``"a,b"``, quotes doubled) when they hold a comma or a quote."""
    s = ids.astype(str)
    if ids.dtype.kind in "iu" or s.size == 0:
        return s
    for ch in ("\n", "\r"):
        bad = np.flatnonzero(np.char.find(s, ch) >= 0)
        if bad.size:
            raise ValueError(f"{what} id {str(s[bad[0]])!r} contains a line break and cannot be written to a CSV")
    quote = (np.char.find(s, ",") >= 0) | (np.char.find(s, '"') >= 0)
    if quote.any():
        s = s.astype(object)
        s[quote] = ['"' + v.replace('"', '""') + '"' for v in s[quote].tolist()]
        s = s.astype(str)
    return s


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
    user_text = _csv_field(np.asarray(split.train.user_ids), "user")
    item_text = _csv_field(np.asarray(split.train.item_ids), "item")
    paths: dict[str, Path] = {}
    for name in PARTS:
        part: Interactions = getattr(split, name)
        rows, cols, _ = part.to_coo_arrays()
        users, items = user_text[rows], item_text[cols]
        body = np.char.add(np.char.add(users, ","), items)
        text = "user,item\n" + ("\n".join(body.tolist()) + "\n" if len(body) else "")
        path = out / f"{name}.csv"
        _atomic_write_text(path, text)
        paths[name] = path
    return paths


def read_split(
    train: str | os.PathLike,
    valid: str | os.PathLike,
    test: str | os.PathLike,
    *,
    universe: Interactions | None = None,
    sep: str = ",",
    header: bool | None = None,
    user_col: Column = "user",
    item_col: Column = "item",
) -> Split:
    """Read a predefined split from three files of (user, item) pairs with raw ids.

    Parameters
    ----------
    train, valid, test : str or path-like
        Delimited files (plain or compressed), e.g. as written by :func:`write_split`.
    universe : Interactions, optional
        Data set giving the id universe (order kept) and the features of the parts. Default: the
        users and items of the training file, sorted.
    sep : str, default ","
    header : bool or None
        As in :func:`metricrec.data.readers.read_delimited`: ``None`` means a header iff the columns
        are given by name.
    user_col, item_col : str or int, default "user", "item"
        The id columns. By default they are found by name in a header line ``user,item`` (the format
        :func:`write_split` writes); give ``0, 1`` for files without a header.

    Returns
    -------
    Split
        Parts of shape (n_users, n_items) over the universe. Ids are matched by
        :class:`~metricrec.data.ids.IdIndex` (``"007"`` is not user 7). ``meta["n_unknown"][part]``
        counts the pairs dropped because their user or item is not in the universe (a ``DataWarning``
        names the file and counts); ``meta["n_overlap"]`` counts pairs present in two files (kept,
        with a warning).
    """
    paths = {"train": str(train), "valid": str(valid), "test": str(test)}
    raw = {name: read_delimited_columns(p, user_col=user_col, item_col=item_col, sep=sep, header=header,
                                        allow_empty=True) for name, p in paths.items()}
    if universe is not None:
        umap, imap = universe.user_map, universe.item_map
        ifeat, ufeat, base_meta = universe.item_features, universe.user_features, dict(universe.meta)
    else:
        umap = IdIndex.from_values(raw["train"].users, name="user")[0]
        imap = IdIndex.from_values(raw["train"].items, name="item")[0]
        ifeat = ufeat = None
        base_meta = {}
    parts: dict[str, Interactions] = {}
    n_unknown: dict[str, dict[str, int]] = {}
    keys: dict[str, np.ndarray] = {}
    for name in PARTS:
        u, i, n_unknown[name] = _known_pairs(raw[name].users, raw[name].items, umap, imap, paths[name])
        part = Interactions.from_arrays(u, i, user_ids=np.arange(len(umap)), item_ids=np.arange(len(imap)),
                                        source=paths[name])
        meta: dict[str, Any] = dict(base_meta)
        meta.update(part.meta)
        parts[name] = Interactions(part.matrix, umap.ids, imap.ids, None, ifeat, ufeat, meta)
        keys[name] = np.unique(u * max(len(imap), 1) + i)
    n_overlap = _overlaps(keys, paths)
    meta = {"method": "predefined", "files": paths, "n_unknown": n_unknown, "n_overlap": n_overlap}
    return Split(parts["train"], parts["valid"], parts["test"], meta)


def _known_pairs(users: np.ndarray, items: np.ndarray, umap: IdIndex, imap: IdIndex,
                 path: str) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """(user rows, item rows) of the pairs whose ids are both known, and counts of the unknown ones."""
    u = np.asarray(umap.lookup(users, missing="mask"))
    i = np.asarray(imap.lookup(items, missing="mask"))
    unknown = (u < 0) | (i < 0)
    counts = {
        "pairs": int(unknown.sum()),
        "users": int(np.unique(users[u < 0]).size),
        "items": int(np.unique(items[i < 0]).size),
    }
    if counts["pairs"]:
        warnings.warn(
            f"{path}: dropped {counts['pairs']} of {unknown.size} pairs whose user or item is not "
            f"in the id universe ({counts['users']} unknown users, {counts['items']} unknown items)",
            DataWarning,
            stacklevel=3,
        )
    return u[~unknown], i[~unknown], counts


def _overlaps(keys: dict[str, np.ndarray], paths: dict[str, str]) -> dict[str, int]:
    n_overlap: dict[str, int] = {}
    for a, b in (("train", "valid"), ("train", "test"), ("valid", "test")):
        n = int(np.intersect1d(keys[a], keys[b], assume_unique=True).size)
        n_overlap[f"{a}&{b}"] = n
        if n:
            warnings.warn(
                f"{n} (user, item) pairs are in both {paths[a]} and {paths[b]}; they are kept in both parts",
                DataWarning,
                stacklevel=3,
            )
    return n_overlap
