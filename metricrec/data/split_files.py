"""Predefined splits as files: train/valid/test CSVs of ``user,item`` pairs with raw ids.

:func:`write_split` writes one folder: ``train.csv``, ``valid.csv``, ``test.csv``, the id universe
(``users.csv``, ``items.csv``: every user and item of the split, those without a training pair
included, in the split's order) and the manifest ``split.json`` (size and sha256 of each file). The
folder is built beside its target and swapped in as one unit, so a kill leaves the old split or the
new one, never parts of two splits side by side.

:func:`read_split` reads the three parts back. Beside a manifest (the three files of one written
folder) the parts are checked against it and the id universe is its id lists: ``data split`` then
``train --train/--valid/--test`` trains on exactly the users, items and pairs of the data set itself.
Without one (a split made elsewhere) the universe is the training file's users and the items of all
three files, so a test pair whose item has no training pair stays a target -- an untrained item, never
a hit by luck of being dropped -- as the data set's own split scores it. A valid or test user who is not
in the universe (no training pair) is not dropped either: ``meta["unseen_users"]`` counts such users and
:func:`metricrec.metrics.evaluate_part` averages them in as users whose every target is missed.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import atomic_directory, write_new_file
from ..errors import DataError
from ..serialization import jsonable
from .columns import read_delimited_columns
from .delimited import Column
from .ids import IdIndex
from .interactions import DataWarning, Interactions
from .split_manifest import FORMAT, ID_FILES, MANIFEST, VERSION, check_files, file_entry, read_id_list, read_manifest
from .splits import Split

__all__ = ["write_split", "read_split", "SPLIT_FILES"]

PARTS = ("train", "valid", "test")
#: Every file a split folder holds.
SPLIT_FILES = tuple(f"{p}.csv" for p in PARTS) + tuple(name for name, _ in ID_FILES.values()) + (MANIFEST,)


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


def _lines(header: str, rows: np.ndarray) -> bytes:
    return (header + "\n" + ("\n".join(rows.tolist()) + "\n" if len(rows) else "")).encode("utf-8")


def _check_out(out: Path) -> None:
    """Refuse to replace a file, or a folder holding anything but a split's own files."""
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder; choose another output folder for the split")
    others = sorted(set(os.listdir(out)) - set(SPLIT_FILES)) if out.is_dir() else []
    if others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise DataError(f"{out}: holds other files ({shown}); a split replaces its whole folder, so write it into "
                        "a new or empty folder (or one an earlier split wrote)")


def _contents(split: Split, source: Any) -> dict[str, bytes]:
    """File name -> bytes of a split folder, the manifest included."""
    users = _csv_field(np.asarray(split.train.user_ids), "user")
    items = _csv_field(np.asarray(split.train.item_ids), "item")
    files: dict[str, bytes] = {}
    entries: dict[str, dict[str, Any]] = {}
    for name in PARTS:
        rows, cols, _ = getattr(split, name).to_coo_arrays()
        data = _lines("user,item", np.char.add(np.char.add(users[rows], ","), items[cols]))
        files[f"{name}.csv"] = data
        entries[name] = file_entry(f"{name}.csv", data, pairs=len(rows))
    for role, ids in (("users", users), ("items", items)):
        fname, header = ID_FILES[role]
        files[fname] = _lines(header, ids)
        entries[role] = file_entry(fname, files[fname], ids=len(ids))
    manifest = {"format": FORMAT, "version": VERSION, "n_users": len(users), "n_items": len(items),
                "files": entries, "split": jsonable(dict(split.meta)), "source": jsonable(source)}
    files[MANIFEST] = (json.dumps(manifest, indent=2, allow_nan=False) + "\n").encode("utf-8")
    return files


def write_split(split: Split, out_dir: str | os.PathLike, *, source: Any = None) -> dict[str, Path]:
    """Write a split folder (see the module docstring) atomically.

    Parameters
    ----------
    split : Split
    out_dir : str or path-like
        The folder; it is created, or replaced as one unit when it holds an earlier split.
    source : JSON-able, optional
        What the split was made from, recorded in ``split.json``.

    Returns
    -------
    dict
        ``{"train", "valid", "test", "users", "items", "manifest"}`` -> Path.

    Raises
    ------
    DataError
        ``out_dir`` is a file or holds files that are not a split's.
    """
    out = Path(out_dir)
    _check_out(out)
    files = _contents(split, source)
    with atomic_directory(out) as tmp:
        for name, data in files.items():  # the manifest last
            write_new_file(tmp / name, data)
    roles = {"users": ID_FILES["users"][0], "items": ID_FILES["items"][0], "manifest": MANIFEST}
    return {**{p: out / f"{p}.csv" for p in PARTS}, **{r: out / n for r, n in roles.items()}}


def _manifest_of(paths: dict[str, str]) -> tuple[Path, dict[str, Any]] | None:
    """(folder, manifest) when the three files are those of one written split folder, else None."""
    folder = Path(paths["train"]).parent
    where = folder / MANIFEST
    if not where.is_file():
        return None
    manifest = read_manifest(where)
    same = all(Path(paths[p]).parent.resolve() == folder.resolve() and Path(paths[p]).name ==
               manifest["files"][p]["file"] for p in PARTS)
    if not same:
        warnings.warn(f"{where} is not used: the three files given are not its train, valid and test files",
                      DataWarning, stacklevel=3)
        return None
    check_files(folder, manifest, where)
    return folder, manifest


def _union_ids(columns: list[np.ndarray], name: str) -> IdIndex:
    """Sorted distinct ids of several id columns (one kind: all integers, else the text of each)."""
    columns = [np.asarray(c) for c in columns if len(c)]
    if not columns:
        return IdIndex(np.zeros(0, dtype=np.int64), name=name)
    if all(c.dtype.kind == "i" for c in columns):
        return IdIndex.from_values(np.concatenate(columns).astype(np.int64), name=name)[0]
    return IdIndex.from_values(np.concatenate([c.astype(str) for c in columns]), name=name)[0]


def _universe(raw: dict[str, Any], found: tuple[Path, dict[str, Any]] | None,
              universe: Interactions | None) -> tuple[IdIndex, IdIndex, Any, Any, dict[str, Any], str]:
    """(users, items, item features, user features, base meta, where the universe came from)."""
    if universe is not None:
        return (universe.user_map, universe.item_map, universe.item_features, universe.user_features,
                dict(universe.meta), "given")
    if found is not None:
        folder, manifest = found
        users = read_id_list(folder / manifest["files"]["users"]["file"], "users")
        items = read_id_list(folder / manifest["files"]["items"]["file"], "items")
        return users, items, None, None, {}, str(folder / MANIFEST)
    users = IdIndex.from_values(raw["train"].users, name="user")[0]
    items = _union_ids([raw[p].items for p in PARTS], "item")
    return users, items, None, None, {}, "files"


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
        ``users.csv``/``items.csv`` of the split folder when the three files are those of one written
        folder (checked against its ``split.json``), else the users of the training file and the items
        of all three files, sorted.
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
        :class:`~metricrec.data.ids.IdIndex` (``"007"`` is not user 7). ``meta["universe"]`` says where
        the universe came from (the manifest's path, ``"files"`` or ``"given"``);
        ``meta["n_unknown"][part]`` counts the pairs (``pairs``) whose user or item is not in it and those
        users and items; ``meta["unseen_users"]["valid" | "test"]`` is the number of such users in a
        scored part: their pairs are not in the matrix, but :func:`~metricrec.metrics.evaluate_part`
        counts each as an evaluated user whose every target is missed (docs/protocol.md); the other
        unknown pairs (unknown items of known users, unknown users of train) are dropped. A
        ``DataWarning`` names the file and counts each kind. ``meta["n_overlap"]`` counts pairs present
        in two files (kept, with a warning).

    Raises
    ------
    DataError
        Beside a ``split.json``: a part or id list that is not the file it lists (size or sha256), or an
        id list with a duplicated id.
    """
    paths = {"train": str(train), "valid": str(valid), "test": str(test)}
    found = _manifest_of(paths)
    raw = {name: read_delimited_columns(p, user_col=user_col, item_col=item_col, sep=sep, header=header,
                                        allow_empty=True) for name, p in paths.items()}
    umap, imap, ifeat, ufeat, base_meta, origin = _universe(raw, found, universe)
    parts: dict[str, Interactions] = {}
    n_unknown: dict[str, dict[str, int]] = {}
    keys: dict[str, np.ndarray] = {}
    for name in PARTS:
        u, i, n_unknown[name] = _known_pairs(raw[name].users, raw[name].items, umap, imap, paths[name],
                                             evaluated=name != "train")
        part = Interactions.from_arrays(u, i, user_ids=np.arange(len(umap)), item_ids=np.arange(len(imap)),
                                        source=paths[name])
        meta: dict[str, Any] = dict(base_meta)
        meta.update(part.meta)
        parts[name] = Interactions(part.matrix, umap.ids, imap.ids, None, ifeat, ufeat, meta)
        keys[name] = np.unique(u * max(len(imap), 1) + i)
    n_overlap = _overlaps(keys, paths)
    meta = {"method": "predefined", "files": paths, "universe": origin, "n_unknown": n_unknown,
            "unseen_users": {p: n_unknown[p]["users"] for p in ("valid", "test")}, "n_overlap": n_overlap}
    if found is not None:
        meta["written"] = found[1].get("split")
    return Split(parts["train"], parts["valid"], parts["test"], meta)


def _known_pairs(users: np.ndarray, items: np.ndarray, umap: IdIndex, imap: IdIndex, path: str, *,
                 evaluated: bool) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """(user rows, item rows) of the pairs whose ids are both known, and counts of the unknown ones.

    In a part that is scored (``evaluated``: valid, test) a user outside the universe is not lost: it
    is counted (``users``), and :func:`~metricrec.metrics.evaluate_part` averages it in as a user
    whose every target is missed; one warning says how many. Other unknown pairs are dropped, warned."""
    u = np.asarray(umap.lookup(users, missing="mask"))
    i = np.asarray(imap.lookup(items, missing="mask"))
    unknown = (u < 0) | (i < 0)
    counts = {
        "pairs": int(unknown.sum()),
        "users": int(np.unique(users[u < 0]).size),
        "items": int(np.unique(items[i < 0]).size),
    }
    counted = int((u < 0).sum()) if evaluated else 0
    if counted:
        warnings.warn(
            f"{path}: {counts['users']:,} user(s) with {counted:,} of its {unknown.size:,} pairs are not in the id "
            "universe (the users a model trained on this split has), so no model can rank items for them: each "
            "counts as an evaluated user whose every target is missed (Recall@K 0; left out of AUC only)",
            DataWarning, stacklevel=3)
    if counts["pairs"] > counted:
        who = "" if evaluated else f"{counts['users']:,} unknown users, "
        warnings.warn(
            f"{path}: dropped {counts['pairs'] - counted:,} of {unknown.size:,} pairs whose user or item is not "
            f"in the id universe ({who}{counts['items']:,} unknown items)", DataWarning, stacklevel=3)
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
