"""Readers that turn interaction files and DataFrames into :class:`~metricrec.data.interactions.Interactions`.

All readers share one rule set: ids follow :func:`metricrec.data.ids.canonical_ids` (int64 when
every id of a column is canonical integer text, otherwise the exact strings); ratings must be finite
numbers; bad input raises ``ValueError`` naming the file and the 1-based line (or row) and what was
wrong; duplicated (user, item) pairs collapse with a ``DataWarning`` that names the source. Text files
go through pyarrow's CSV parser (:mod:`metricrec.data.delimited`: compression, quoting, BOM,
multi-character separators, the header rule and its check), parquet files through ``pyarrow.parquet``.
Only regular files are read: a directory or a FIFO is one ``DataError`` saying so (never a wait on a pipe).
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .columns import DelimitedColumns, float_column, id_column, int_column, read_delimited_columns
from .delimited import Column, TextTable, plain_suffix, read_columns, require_regular_file
from .id_text import arrow_to_numpy
from .ids import IdIndex, canonical_ids
from .interactions import Interactions

__all__ = [
    "DelimitedColumns",
    "read_delimited",
    "read_delimited_columns",
    "read_inter",
    "read_parquet",
    "from_dataframe",
    "read_interactions",
]

Ids = Sequence | np.ndarray | None


def _build(t: TextTable, min_rating: float | None, binary: bool, user_ids: Ids, item_ids: Ids,
           source: str | None, what: str = "a rating column (rating_col)") -> Interactions:
    """Interactions from the string columns of a file, freeing each column as soon as it is indexed."""
    src = source or t.path
    if min_rating is not None and t.columns.get("rating") is None:
        raise ValueError(f"{t.path}: min_rating={min_rating} needs {what}")
    maps = {}
    for role, given in (("user", user_ids), ("item", item_ids)):
        raw = id_column(t, role, role, arrow_strings=True)
        if given is None:
            maps[role] = IdIndex.from_values(raw, name=role)
        else:
            index = IdIndex(canonical_ids(given), name=role)
            maps[role] = index, np.asarray(index.lookup(raw, source=src), dtype=np.int64)
        t.columns[role] = None  # free the text column (the largest part of a big file) right away
        del raw
    ratings = float_column(t, "rating", "rating") if t.columns.get("rating") is not None else None
    timestamps = int_column(t, "timestamp", "timestamp") if t.columns.get("timestamp") is not None else None
    (umap, urows), (imap, irows) = maps["user"], maps["item"]
    return Interactions.from_rows(umap, urows, imap, irows, ratings, timestamps, min_weight=min_rating,
                                  binary=binary, source=src, stacklevel=4)


def read_delimited(
    path: str | os.PathLike,
    *,
    user_col: Column = 0,
    item_col: Column = 1,
    rating_col: Column = None,
    timestamp_col: Column = None,
    sep: str = ",",
    header: bool | None = None,
    min_rating: float | None = None,
    binary: bool = True,
    encoding: str = "utf-8",
    quoting: bool = True,
    user_ids: Ids = None,
    item_ids: Ids = None,
    source: str | None = None,
) -> Interactions:
    """Read a delimited text file of (user, item[, rating][, timestamp]) lines.

    Parameters
    ----------
    path : str or path-like
        Plain text or ``.gz`` / ``.bz2`` / ``.zst`` compressed.
    user_col, item_col, rating_col, timestamp_col : int or str or None
        Column index (0-based, negative allowed) or header name. ``rating_col``/``timestamp_col``
        ``None`` means the file has no such column (every line is a positive).
    sep : str, default ","
        Field separator; may have several characters (``"::"`` for MovieLens-1M).
    header : bool or None
        Whether the first line is a header. ``True``: it is skipped (or names the columns);
        ``False``: it is data. ``None`` (default): a header iff a column is given by name; with every
        column given by position, a first line that looks like a header (a field such as ``user``,
        ``item_id`` or ``rating``, or a text id over integer ids on every other line) is a
        ``DataError`` asking for ``header=True`` or ``header=False`` (never read as data silently; see
        :mod:`metricrec.data.header_check`). A header that does not name a requested column is a
        ``ValueError`` listing the header's columns.
    min_rating : float, optional
        Keep only lines whose rating is >= this value (ids below it stay in the id universe).
    binary : bool, default True
        Store 1.0 instead of the rating.
    encoding : str, default "utf-8"
        A UTF-8 byte-order mark is skipped.
    quoting : bool, default True
        Fields may be quoted (``"a,b"``); ``False`` reads ``"`` as an ordinary character.
    user_ids, item_ids : array-like, optional
        A fixed id universe; an id outside it is an error (``KeyError``).
    source : str, optional
        Name quoted in warnings; default the path.

    Returns
    -------
    Interactions
        Matrix of shape (n_users, n_items); ``meta["n_ratings"]`` counts the lines read.

    Raises
    ------
    ValueError
        Bad lines (wrong field count, empty id, non-numeric or NaN rating/timestamp), naming the
        file and the 1-based line; an empty file; a header without a requested column; a first line
        that looks like a header with ``header=None``; a path that is not a regular file.
    """
    spec = {"user": user_col, "item": item_col, "rating": rating_col, "timestamp": timestamp_col}
    t = read_columns(path, {k: v for k, v in spec.items() if v is not None}, sep=sep, header=header,
                     encoding=encoding, quoting=quoting, what="interaction lines")
    return _build(t, min_rating, binary, user_ids, item_ids, source)


def read_inter(
    path: str | os.PathLike,
    *,
    user_field: Column = "user_id",
    item_field: Column = "item_id",
    rating_field: Column = "rating",
    timestamp_field: Column = "timestamp",
    min_rating: float | None = None,
    binary: bool = True,
    encoding: str = "utf-8",
    user_ids: Ids = None,
    item_ids: Ids = None,
    source: str | None = None,
) -> Interactions:
    """Read a RecBole-style atomic ``.inter`` file (tab separated, typed header ``name:type``).

    Parameters
    ----------
    path : path-like
        Plain or compressed (``.inter.gz``).
    user_field, item_field : str or int
        Header field names (the ``:token``/``:float`` type suffix is ignored) or column indices.
    rating_field, timestamp_field : str or int or None
        Optional fields: when the header has no such field they are not read; ``None`` skips them.
    min_rating, binary, encoding, user_ids, item_ids, source
        As in :func:`read_delimited`.

    Returns
    -------
    Interactions
    """
    spec = {"user": user_field, "item": item_field, "rating": rating_field, "timestamp": timestamp_field}
    t = read_columns(path, {k: v for k, v in spec.items() if v is not None}, sep="\t", header=True,
                     encoding=encoding, quoting=False, optional={"rating", "timestamp"}, what="interaction lines",
                     rename=lambda name: name.split(":", 1)[0].strip())
    return _build(t, min_rating, binary, user_ids, item_ids, source, "a rating field in the header")


def _require_pandas() -> Any:
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("from_dataframe needs pandas: pip install metricrec[pandas]") from None
    return pd


def _numbers(values: np.ndarray, what: str, where: str) -> np.ndarray:
    """float64 copy of a numeric column; the first non-number or infinite value is reported by row."""
    try:
        out = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        k = next(k for k, v in enumerate(values.tolist()) if not _is_number(v))
        raise ValueError(f"{where}: column {what!r} row {k}: {values.tolist()[k]!r} is not a number") from None
    bad = np.flatnonzero(~np.isfinite(out))
    if bad.size:
        raise ValueError(f"{where}: column {what!r} row {int(bad[0])}: {out[bad[0]].item()!r} is NaN or infinite")
    return out


def _is_number(v: Any) -> bool:
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True


def _check_min_rating(min_rating: float | None, rating_col: Any, where: str) -> None:
    if min_rating is not None and rating_col is None:
        raise ValueError(f"{where}: min_rating={min_rating} needs rating_col")


def from_dataframe(
    df: Any,
    user_col: str,
    item_col: str,
    rating_col: str | None = None,
    timestamp_col: str | None = None,
    min_rating: float | None = None,
    *,
    binary: bool = True,
    user_ids: Ids = None,
    item_ids: Ids = None,
    source: str = "dataframe",
) -> Interactions:
    """Build :class:`Interactions` from a pandas DataFrame with one row per interaction.

    Parameters
    ----------
    df : pandas.DataFrame, n rows
    user_col, item_col : str
        Id columns: ints, strings or a mix, by :func:`~metricrec.data.ids.canonical_ids` (``"1"`` and
        ``1`` are one id); a float column of whole numbers is read as int.
    rating_col, timestamp_col : str, optional
    min_rating, binary, user_ids, item_ids, source
        As in :func:`read_delimited`.

    Raises
    ------
    KeyError
        A named column is missing.
    ValueError
        NaN/missing values in an id, rating or timestamp column (naming the column and row label),
        or a non-numeric rating.
    """
    pd = _require_pandas()
    wanted = {"user_col": user_col, "item_col": item_col, "rating_col": rating_col, "timestamp_col": timestamp_col}
    for arg, col in wanted.items():
        if col is not None and col not in df.columns:
            raise KeyError(f"{source}: {arg}={col!r} is not a column; columns are {list(df.columns)}")
    if len(df) == 0:
        raise ValueError(f"{source}: the DataFrame has no rows")
    _check_min_rating(min_rating, rating_col, source)
    arrays: dict[str, np.ndarray | None] = dict.fromkeys(wanted)
    for arg, col in wanted.items():
        if col is None:
            continue
        missing = np.flatnonzero(pd.isna(df[col]).to_numpy())
        if missing.size:
            raise ValueError(f"{source}: column {col!r} has {missing.size} missing/NaN value(s), "
                             f"first at row {df.index[missing[0]]!r}")
        values = df[col].to_numpy()
        if arg in ("rating_col", "timestamp_col"):
            values = _numbers(values, col, source)
        arrays[arg] = np.floor(values).astype(np.int64) if arg == "timestamp_col" else values
    return Interactions.from_arrays(
        canonical_ids(arrays["user_col"]), canonical_ids(arrays["item_col"]), arrays["rating_col"],
        arrays["timestamp_col"], min_weight=min_rating, binary=binary, user_ids=user_ids, item_ids=item_ids,
        source=source,
    )


def _parquet_column(table: pa.Table, name: str, role: str, path: str) -> np.ndarray:
    col = table.column(name)
    if col.null_count:
        k = int(np.argmax(arrow_to_numpy(pc.is_null(col))))
        raise ValueError(f"{path}: column {name!r} has {col.null_count} missing value(s), first at row {k}")
    if role in ("user", "item"):
        return canonical_ids(col)
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        values = _numbers(np.asarray(arrow_to_numpy(col), dtype=object), name, path)
    else:
        values = _numbers(arrow_to_numpy(col), name, path)
    return np.floor(values).astype(np.int64) if role == "timestamp" else values


def read_parquet(
    path: str | os.PathLike,
    user_col: Column,
    item_col: Column,
    rating_col: Column = None,
    timestamp_col: Column = None,
    min_rating: float | None = None,
    *,
    binary: bool = True,
    user_ids: Ids = None,
    item_ids: Ids = None,
    source: str | None = None,
) -> Interactions:
    """Read a parquet file with one row per interaction (through ``pyarrow.parquet``).

    Parameters
    ----------
    path : path-like
    user_col, item_col, rating_col, timestamp_col : str or int or None
        Column names (or positions in the file's schema); only these columns are read.
    min_rating, binary, user_ids, item_ids, source
        As in :func:`read_delimited`; ids follow the same rule (string columns by
        :func:`~metricrec.data.ids.canonical_ids`, integer columns as int64).

    Raises
    ------
    FileNotFoundError, ValueError
        No such file; not a parquet file; a missing column (listing the columns); null values,
        non-numeric or NaN ratings (naming the column and 0-based row).
    """
    import pyarrow.parquet as pq

    path = require_regular_file(path, "parquet file")
    _check_min_rating(min_rating, rating_col, path)
    try:
        names = pq.read_schema(path).names
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"{path}: not a readable parquet file ({exc})") from None
    spec = {"user": user_col, "item": item_col, "rating": rating_col, "timestamp": timestamp_col}
    chosen: dict[str, str] = {}
    for role, col in spec.items():
        if col is None:
            continue
        if isinstance(col, str) and col not in names or not isinstance(col, str) and not -len(names) <= col < len(names):
            raise ValueError(f"{path}: no column {col!r} ({role}) in the parquet file; its columns are {names}")
        chosen[role] = col if isinstance(col, str) else names[col]
    table = pq.read_table(path, columns=list(dict.fromkeys(chosen.values())))
    got = {role: _parquet_column(table, name, role, path) for role, name in chosen.items()}
    return Interactions.from_arrays(
        got["user"], got["item"], got.get("rating"), got.get("timestamp"), min_weight=min_rating, binary=binary,
        user_ids=user_ids, item_ids=item_ids, source=source or path,
    )


_INTER_KEYS = {"user_col": "user_field", "item_col": "item_field", "rating_col": "rating_field",
               "timestamp_col": "timestamp_field"}


def read_interactions(path: str | os.PathLike, **kw: Any) -> Interactions:
    """Read an interaction file, choosing the reader from its suffix (under ``.gz``/``.bz2``/``.zst``).

    ``.inter`` -> :func:`read_inter` (``user_col``... are accepted as ``user_field``...; ``None``
    keeps the reader's default field); ``.parquet``/``.pq`` -> :func:`read_parquet` (``user_col`` and
    ``item_col`` required; ``sep`` is ignored); ``.tsv`` -> tab separated and ``.csv`` -> comma
    separated :func:`read_delimited`; any other suffix needs an explicit ``sep``. Keyword arguments
    go to the reader; ``header`` (see :func:`read_delimited`) is for delimited files only and ignored
    for ``.inter`` (always a typed header) and parquet files. A path that is not a regular file (a
    directory, a FIFO) is a ``DataError`` saying what it is, whatever its suffix.
    """
    require_regular_file(path)
    suffix = plain_suffix(path)
    if suffix in (".inter", ".parquet", ".pq"):
        kw.pop("header", None)
    if suffix == ".inter":
        kw.pop("sep", None)
        for old, new in _INTER_KEYS.items():
            value = kw.pop(old, None)
            if value is not None:
                kw[new] = value
        return read_inter(path, **kw)
    if suffix in (".parquet", ".pq"):
        kw.pop("sep", None)
        missing = [k for k in ("user_col", "item_col") if kw.get(k) is None]
        if missing:
            raise ValueError(f"{path}: reading parquet needs the columns {missing}")
        return read_parquet(path, **kw)
    if kw.get("sep") is None:
        kw.pop("sep", None)
        if suffix not in (".tsv", ".csv"):
            raise ValueError(
                f"{path}: cannot tell the field separator from the suffix {suffix!r}; pass sep=... "
                "(e.g. sep='::' for MovieLens-1M .dat files, sep='\\t' for tab separated)"
            )
        kw["sep"] = "\t" if suffix == ".tsv" else ","
    return read_delimited(path, **kw)
