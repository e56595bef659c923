"""Item (or user) side features: readers and small tools around :class:`~metricrec.data.interactions.Features`.

- :func:`read_item_features` reads a CSV of ``item,feature[,value]`` rows into a
  :class:`~metricrec.interactions.Features` aligned with an item id universe, counting and warning
  about every repair (unknown items, duplicate pairs, items left without features).
- :func:`as_features`, :func:`filter_min_count` and :func:`describe_features` are the small tools
  around them.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from ..errors import DataError
from .delimited import Column, read_columns
from .ids import IdIndex, canonical_ids
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
            raise DataError(f"{what} contains NaN or infinite values")
        f = Features(m, np.array([f"f{k}" for k in range(m.shape[1])]))
    else:
        raise TypeError(f"{what} must be a Features, a scipy sparse matrix or a 2-D array, got {type(data).__name__}")
    if f.matrix.shape[0] != n_rows:
        raise DataError(f"{what} has {f.matrix.shape[0]} rows, expected {n_rows} (one per row of the model)")
    if f.n_features == 0:
        raise DataError(f"{what} has no feature columns (an empty feature set)")
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
        raise DataError(f"no feature is used by >= {min_count} rows (an empty feature set); lower the minimum count")
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
def read_item_features(path: str | Path, item_ids: np.ndarray, *, min_count: int = 1, delimiter: str = ",",
                       header: bool | None = None, item_col: Column = 0, feature_col: Column = 1,
                       value_col: Column = 2) -> Features:
    """Read ``item,feature[,value]`` rows into features aligned with ``item_ids``.

    Parameters
    ----------
    path : path-like
        CSV file (plain or ``.gz``/``.bz2``/``.zst``), read like every other text file
        (:mod:`metricrec.data.delimited`); one row per (item, feature) pair. ``value`` defaults to 1
        (multi-hot); give it for dense columns (e.g. ``42,year,1995``). Rows may have 2 or 3 fields;
        blank lines are ignored; feature names and values are stripped of spaces, item ids are not.
    item_ids : numpy.ndarray, shape (n_items,)
        The raw item ids of the model's columns (``Interactions.item_ids``). The file's ids are
        matched by :class:`~metricrec.data.ids.IdIndex` (``"7"`` is item 7, ``"007"`` is not).
    min_count : int, default 1
        Keep only features present on at least this many items (see :func:`filter_min_count`).
    delimiter : str, default ","
    header : bool or None
        ``True``: the first line is a header, ``False``: it is data. ``None``: a header iff a column is
        given by name; with every column by position a first line that looks like a header (e.g.
        ``item,feature,value``) is a ``DataError`` asking for one of the two
        (:mod:`metricrec.data.header_check`; feature names are never taken for column names).
    item_col, feature_col, value_col : int or str
        Field index or header name of each column; the value column may be absent.

    Returns
    -------
    Features
        Shape (n_items, n_features); columns are the distinct feature names, sorted.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        A row with a wrong field count, an empty item id or feature name, a value that is not a
        number or is NaN/infinite (each naming the file and line), a header without a named column,
        or no usable row at all (an empty feature set).

    Warns
    -----
    DataWarning
        Counted, one warning each: rows for items not in ``item_ids`` (dropped), duplicate
        (item, feature) rows (the last value is kept), items left without any feature.
    """
    rows = _feature_rows(path, delimiter, header, {"item": item_col, "feature": feature_col, "value": value_col})
    items, feats, values, lines = rows
    index = IdIndex(np.asarray(item_ids), name="item")
    row = np.asarray(index.lookup(canonical_ids(items), missing="mask"))
    unknown = row < 0
    if unknown.any():
        bad = items[unknown]
        shown = ", ".join(repr(x) for x in list(dict.fromkeys(bad.tolist()))[:5])
        warnings.warn(f"{path}: {int(unknown.sum())} rows for {np.unique(bad).size} unknown item id(s) dropped "
                      f"(e.g. {shown}; first at line {lines[int(np.argmax(unknown))]})", DataWarning, stacklevel=2)
    if unknown.all():
        raise DataError(f"{path}: none of the {len(items)} rows names a known item (an empty feature set)")
    features = _assemble(path, row[~unknown], feats[~unknown], values[~unknown], len(index))
    if min_count > 1:
        features = filter_min_count(features, min_count)
    n_empty = int((np.diff(features.matrix.indptr) == 0).sum())
    if n_empty:
        extra = f" after keeping features on >= {min_count} items" if min_count > 1 else ""
        warnings.warn(f"{path}: {n_empty} of {len(index)} items have no feature{extra} "
                      "(their feature vector is empty)", DataWarning, stacklevel=2)
    return features


def _feature_rows(path: str | Path, sep: str, header: bool | None,
                  columns: dict[str, Column]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(item id text, feature name, value, line) of every non-blank row, in file order."""
    t = read_columns(path, columns, sep=sep, header=header, optional={"value"}, ragged={2, 3},
                     allow_empty=True)

    def strings(role: str) -> np.ndarray:
        col = t.columns[role]
        main = [] if col is None else col.to_pylist()
        k = t.index.get(role)
        extra = [f[k] if k is not None and k < len(f) else "" for _, f in t.other_rows]
        return np.array(main + extra if col is not None else [""] * t.n_rows + extra, dtype=object)

    lines = np.concatenate([t.lines(), np.array([n for n, _ in t.other_rows], dtype=np.int64)])
    order = np.argsort(lines, kind="stable")
    items, feats, values = (strings(r)[order] for r in ("item", "feature", "value"))
    lines = lines[order]
    feats = np.array([f.strip() for f in feats.tolist()], dtype=object)
    values = np.array([v.strip() for v in values.tolist()], dtype=object)
    keep = (items != "") | (feats != "") | (values != "")  # blank lines
    items, feats, values, lines = items[keep], feats[keep], values[keep], lines[keep]
    if not len(items):
        raise DataError(f"{path}: no feature rows (an empty feature set)")
    for bad, what in ((items == "", "empty item id"), (feats == "", "empty feature name")):
        if bad.any():
            k = int(np.argmax(bad))
            raise DataError(f"{path}, line {lines[k]}: {what}" + (f" for item {items[k]!r}" if items[k] else ""))
    return items.astype(str), feats.astype(str), _values(path, values, lines), lines


def _values(path: str | Path, text: np.ndarray, lines: np.ndarray) -> np.ndarray:
    """Feature values: empty -> 1.0; anything else must be a finite number (error names the line)."""
    filled = np.where(text == "", "1", text).astype(str)
    try:
        values = filled.astype(np.float64)
    except ValueError:
        k = next(k for k, v in enumerate(filled.tolist()) if not _is_float(v))
        raise DataError(f"{path}, line {lines[k]}: value {str(filled[k])!r} is not a number") from None
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        k = int(bad[0])
        raise DataError(f"{path}, line {lines[k]}: value {str(filled[k])!r} is NaN or infinite")
    return values


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _assemble(path: str | Path, rows: np.ndarray, feats: np.ndarray, vals: np.ndarray, n_items: int) -> Features:
    """Features from known (row, name, value) triples; duplicate pairs keep their last value (warned)."""
    names, cols = np.unique(feats, return_inverse=True)
    cols = cols.reshape(-1)
    key = rows * len(names) + cols
    _, last_rev = np.unique(key[::-1], return_index=True)
    last = len(key) - 1 - last_rev
    n_dup = len(key) - len(last)
    if n_dup:
        warnings.warn(f"{path}: {n_dup} duplicate (item, feature) rows; the last value of each pair is kept",
                      DataWarning, stacklevel=3)
    matrix = sp.csr_matrix((vals[last].astype(np.float32), (rows[last], cols[last])), shape=(n_items, len(names)))
    return Features(matrix, names)
