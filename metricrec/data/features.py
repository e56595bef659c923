"""Item (or user) side features: readers and small tools around :class:`~metricrec.data.interactions.Features`.

- :func:`read_item_features` reads a CSV of ``item,feature[,value]`` rows into a
  :class:`~metricrec.interactions.Features` aligned with an item id universe, counting and warning
  about every repair (unknown items, duplicate pairs, items left without features).
- :func:`as_features`, :func:`filter_min_count` and :func:`describe_features` are the small tools
  around them.
"""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp

from .interactions import DataWarning, Features

__all__ = [
    "as_features", "describe_features", "filter_min_count", "normalize_rows", "read_item_features",
]


# ---------------------------------------------------------------------- Features helpers
def as_features(data: Any, n_rows: int, what: str = "item_features") -> Features:
    """A :class:`Features` from a Features, a scipy sparse matrix or a dense 2-D array.

    Raises ``ValueError`` (naming ``what``) on a wrong row count, no columns or non-finite values.
    """
    if isinstance(data, Features):
        f = data
    elif sp.issparse(data) or isinstance(data, np.ndarray) or hasattr(data, "__array__"):
        m = sp.csr_matrix(data if sp.issparse(data) else np.asarray(data, dtype=np.float64), dtype=np.float32)
        if not sp.issparse(data) and not np.all(np.isfinite(np.asarray(data, dtype=np.float64))):
            raise ValueError(f"{what} contains NaN or infinite values")
        f = Features(m, np.array([f"f{k}" for k in range(m.shape[1])]))
    else:
        raise TypeError(f"{what} must be a Features, a scipy sparse matrix or a 2-D array, got {type(data).__name__}")
    if f.matrix.shape[0] != n_rows:
        raise ValueError(f"{what} has {f.matrix.shape[0]} rows, expected {n_rows} (one per row of the model)")
    if f.n_features == 0:
        raise ValueError(f"{what} has no feature columns (an empty feature set)")
    return f


def filter_min_count(features: Features, min_count: int) -> Features:
    """Keep only the columns non-zero in at least ``min_count`` rows (the CML paper keeps CiteULike
    tags used by >= 5 items). Raises ``ValueError`` when no column survives."""
    if isinstance(min_count, bool) or not isinstance(min_count, (int, np.integer)) or min_count < 1:
        raise ValueError(f"min_count must be a positive integer, got {min_count!r}")
    m = features.matrix
    counts = np.bincount(m.indices[m.data != 0], minlength=m.shape[1])
    keep = np.flatnonzero(counts >= int(min_count))
    if keep.size == 0:
        raise ValueError(f"no feature is used by >= {min_count} rows (an empty feature set); lower the minimum count")
    return Features(m[:, keep].tocsr(), features.names[keep])


def normalize_rows(features: Features) -> Features:
    """Scale every non-empty row to unit L2 norm (a multi-hot row of n tags gets 1/sqrt(n) each)."""
    m = features.matrix.copy()
    norms = np.sqrt(np.asarray(m.multiply(m).sum(1)).ravel())
    scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    return Features(sp.diags(scale.astype(np.float32)) @ m, features.names)


def describe_features(features: Features) -> dict[str, Any]:
    """Counts for reports: ``n_features``, ``n_rows``, ``n_rows_with_features``, ``nnz``,
    ``mean_features_per_row`` (over rows that have any)."""
    m = features.matrix
    per_row = np.diff(m.indptr)
    with_any = int((per_row > 0).sum())
    return {"n_features": int(m.shape[1]), "n_rows": int(m.shape[0]), "n_rows_with_features": with_any,
            "nnz": int(m.nnz), "mean_features_per_row": float(m.nnz / with_any) if with_any else 0.0}


# ---------------------------------------------------------------------- CSV reader
def read_item_features(path: str | Path, item_ids: np.ndarray, *, min_count: int = 1,
                       delimiter: str = ",") -> Features:
    """Read ``item,feature[,value]`` rows into features aligned with ``item_ids``.

    Parameters
    ----------
    path : path-like
        CSV file; one row per (item, feature) pair. ``value`` defaults to 1 (multi-hot); give it for
        dense columns (e.g. ``42,year,1995``). An optional header ``item,feature[,value]`` is
        skipped; blank lines are ignored.
    item_ids : numpy.ndarray, shape (n_items,)
        The raw item ids of the model's columns (``Interactions.item_ids``); int ids match their
        decimal text.
    min_count : int, default 1
        Keep only features present on at least this many items (see :func:`filter_min_count`).
    delimiter : str, default ","

    Returns
    -------
    Features
        Shape (n_items, n_features); columns are the distinct feature names, sorted.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        A malformed row, an empty feature name, a value that is not a number or is NaN/infinite
        (each naming the file and line), or no usable row at all (an empty feature set).

    Warns
    -----
    DataWarning
        Counted, one warning each: rows for items not in ``item_ids`` (dropped), duplicate
        (item, feature) rows (the last value is kept), items left without any feature.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feature file not found: {path}")
    items: list[str] = []
    feats: list[str] = []
    values: list[float] = []
    lines: list[int] = []
    seen_row = False
    with path.open(newline="", encoding="utf-8") as fh:
        for lineno, row in enumerate(csv.reader(fh, delimiter=delimiter), start=1):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) not in (2, 3):
                raise ValueError(f"{path}, line {lineno}: expected 'item,feature[,value]', got {len(row)} fields")
            cells = [c.strip() for c in row]
            first, seen_row = not seen_row, True
            if first and cells[0].lower() in ("item", "item_id", "itemid") \
                    and cells[1].lower() in ("feature", "features", "tag", "name"):
                continue  # header (only as the first non-blank row)
            if not cells[0]:
                raise ValueError(f"{path}, line {lineno}: empty item id")
            if not cells[1]:
                raise ValueError(f"{path}, line {lineno}: empty feature name for item {cells[0]!r}")
            value = 1.0
            if len(cells) == 3 and cells[2] != "":
                try:
                    value = float(cells[2])
                except ValueError:
                    raise ValueError(f"{path}, line {lineno}: value {cells[2]!r} is not a number") from None
                if not math.isfinite(value):
                    raise ValueError(f"{path}, line {lineno}: value {cells[2]!r} is NaN or infinite")
            items.append(cells[0])
            feats.append(cells[1])
            values.append(value)
            lines.append(lineno)
    if not items:
        raise ValueError(f"{path}: no feature rows (an empty feature set)")

    rows = _match_items(np.asarray(items), np.asarray(item_ids))
    unknown = rows < 0
    if unknown.any():
        shown = ", ".join(repr(x) for x in list(dict.fromkeys(np.asarray(items)[unknown].tolist()))[:5])
        warnings.warn(f"{path}: {int(unknown.sum())} rows for {len(set(np.asarray(items)[unknown].tolist()))} unknown "
                      f"item id(s) dropped (e.g. {shown}; first at line {lines[int(np.argmax(unknown))]})",
                      DataWarning, stacklevel=2)
    known = ~unknown
    if not known.any():
        raise ValueError(f"{path}: none of the {len(items)} rows names a known item (an empty feature set)")
    rows = rows[known]
    names, cols = np.unique(np.asarray(feats)[known], return_inverse=True)
    vals = np.asarray(values, dtype=np.float64)[known]
    # duplicates: keep the last value of each (item, feature) pair
    key = rows * len(names) + cols.reshape(-1)
    _, last_rev = np.unique(key[::-1], return_index=True)
    last = len(key) - 1 - last_rev
    n_dup = len(key) - len(last)
    if n_dup:
        warnings.warn(f"{path}: {n_dup} duplicate (item, feature) rows; the last value of each pair is kept",
                      DataWarning, stacklevel=2)
    n_items = len(item_ids)
    matrix = sp.csr_matrix((vals[last].astype(np.float32), (rows[last], cols.reshape(-1)[last])),
                           shape=(n_items, len(names)))
    features = Features(matrix, names)
    if min_count > 1:
        features = filter_min_count(features, min_count)
    n_empty = int((np.diff(features.matrix.indptr) == 0).sum())
    if n_empty:
        extra = f" after keeping features on >= {min_count} items" if min_count > 1 else ""
        warnings.warn(f"{path}: {n_empty} of {n_items} items have no feature{extra} "
                      "(their feature vector is empty)", DataWarning, stacklevel=2)
    return features


def _match_items(raw: np.ndarray, universe: np.ndarray) -> np.ndarray:
    """Index of every raw id (text) in ``universe``; -1 where it is unknown."""
    uniq, inverse = np.unique(raw, return_inverse=True)
    if universe.dtype.kind in "iu":
        # int ids: match the integer value of the text ("007" is item 7); non-integers are unknown
        keys = np.asarray(universe, dtype=np.int64)
        parsed = np.array([_int_or_none(t) for t in uniq.tolist()], dtype=object)
        ok = np.array([v is not None for v in parsed], dtype=bool)
        query = np.where(ok, parsed, 0).astype(np.int64)
    else:
        keys = np.asarray(universe).astype(str)
        ok = np.ones(uniq.shape[0], dtype=bool)
        query = uniq
    order = np.argsort(keys, kind="stable")
    sorted_k = keys[order]
    if sorted_k.size == 0:
        return np.full(raw.shape[0], -1, dtype=np.int64)
    pos = np.clip(np.searchsorted(sorted_k, query), 0, sorted_k.size - 1)
    found = ok & (sorted_k[pos] == query)
    return np.where(found, order[pos], -1).astype(np.int64)[inverse.reshape(-1)]


def _int_or_none(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


