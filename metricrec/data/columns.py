"""Typed columns of a :class:`~metricrec.data.delimited.TextTable`: ids, numbers, interaction columns.

Conversions are vectorised (pyarrow compute); the first bad value is reported as a one-line
``ValueError`` naming the file and its 1-based line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import DataError
from .delimited import Column, TextTable, read_columns
from .id_text import arrow_to_numpy
from .ids import canonical_ids, canonical_or_arrow

__all__ = ["DelimitedColumns", "float_column", "id_column", "int_column", "read_delimited_columns"]

_FLOAT = r"^[+-]?(([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|nan|inf|infinity)$"


def id_column(t: TextTable, role: str, what: str, *, arrow_strings: bool = False) -> np.ndarray | pa.ChunkedArray:
    """Ids of a column by :func:`~metricrec.data.ids.canonical_ids`; an empty id is an error.

    With ``arrow_strings=True`` string ids stay a pyarrow array (see
    :func:`~metricrec.data.ids.canonical_or_arrow`)."""
    col = t.columns[role]
    if t.n_rows and pc.min(pc.utf8_length(col)).as_py() == 0:
        k = int(np.argmax(arrow_to_numpy(pc.utf8_length(col)) == 0))
        blank = all(c is None or c[k].as_py() == "" for c in t.columns.values())
        raise DataError(f"{t.path}, line {t.line(k)}: " + ("blank line" if blank else f"empty {what} id"))
    return canonical_or_arrow(col) if arrow_strings else canonical_ids(col)


def float_column(t: TextTable, role: str, what: str) -> np.ndarray:
    """A column as finite float64 (surrounding spaces allowed); the first bad value is reported."""
    col = t.columns[role]
    trimmed = pc.utf8_trim_whitespace(col)
    try:
        values = arrow_to_numpy(pc.cast(trimmed, pa.float64()))
    except pa.ArrowInvalid:
        ok = arrow_to_numpy(pc.match_substring_regex(trimmed, _FLOAT, ignore_case=True))
        k = int(np.argmin(ok))
        raise DataError(f"{t.path}, line {t.line(k)}: {what} {col[k].as_py()!r} is not a number") from None
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        k = int(bad[0])
        raise DataError(f"{t.path}, line {t.line(k)}: {what} {col[k].as_py()!r} is NaN or infinite")
    return values


def int_column(t: TextTable, role: str, what: str) -> np.ndarray:
    """A column as int64: integers exactly, other numbers floored (timestamps)."""
    try:
        return arrow_to_numpy(pc.cast(pc.utf8_trim_whitespace(t.columns[role]), pa.int64()))
    except pa.ArrowInvalid:
        return np.floor(float_column(t, role, what)).astype(np.int64)


# ---------------------------------------------------------------------- interaction columns
@dataclass(frozen=True)
class DelimitedColumns:
    """Raw columns of an interaction file, before any id indexing.

    Attributes
    ----------
    users, items : numpy.ndarray or pyarrow.ChunkedArray, shape (n,)
        Raw ids by :func:`~metricrec.data.ids.canonical_ids` (int64 or str; string ids are a pyarrow
        array only when read with ``arrow_strings=True``).
    ratings : numpy.ndarray of float64 or None, shape (n,)
    timestamps : numpy.ndarray of int64 or None, shape (n,)
    first_line : int
        1-based line of the first row (rows are consecutive lines).
    """

    users: np.ndarray | pa.ChunkedArray
    items: np.ndarray | pa.ChunkedArray
    ratings: np.ndarray | None
    timestamps: np.ndarray | None
    first_line: int = 1

    @property
    def lines(self) -> np.ndarray:
        """1-based line number of each row, shape (n,)."""
        return np.arange(self.first_line, self.first_line + len(self.users), dtype=np.int64)


def read_delimited_columns(
    path: str | os.PathLike,
    *,
    user_col: Column = 0,
    item_col: Column = 1,
    rating_col: Column = None,
    timestamp_col: Column = None,
    sep: str = ",",
    header: bool | None = None,
    encoding: str = "utf-8",
    quoting: bool = True,
    allow_empty: bool = False,
    optional: frozenset[str] = frozenset(),
    rename: Callable[[str], str] | None = None,
    arrow_strings: bool = False,
) -> DelimitedColumns:
    """Parse an interaction file into raw columns (no id indexing, no thresholding).

    Parameters are those of :func:`read_columns` and :func:`metricrec.data.readers.read_delimited`;
    ``allow_empty=True`` returns empty columns for a file without interaction lines; roles in
    ``optional`` (``"rating"``, ``"timestamp"``) absent from the file give ``None`` columns;
    ``arrow_strings=True`` keeps string ids as pyarrow arrays (the readers pass them on to
    :meth:`~metricrec.data.ids.IdIndex.from_values` without building per-value numpy strings).

    Returns
    -------
    DelimitedColumns
    """
    spec = {"user": user_col, "item": item_col, "rating": rating_col, "timestamp": timestamp_col}
    t = read_columns(path, {k: v for k, v in spec.items() if v is not None}, sep=sep, header=header,
                     encoding=encoding, quoting=quoting, allow_empty=allow_empty, what="interaction lines",
                     optional=optional, rename=rename)
    users = id_column(t, "user", "user", arrow_strings=arrow_strings)
    items = id_column(t, "item", "item", arrow_strings=arrow_strings)
    ratings = float_column(t, "rating", "rating") if t.columns.get("rating") is not None else None
    timestamps = int_column(t, "timestamp", "timestamp") if t.columns.get("timestamp") is not None else None
    return DelimitedColumns(users, items, ratings, timestamps, t.first_line)
