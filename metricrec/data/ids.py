"""Raw ids: the one rule that turns id text into ids, and the one index from raw id to row.

The rule (:func:`canonical_ids`): a column of ids is int64 when *every* value is canonical integer
text -- ``-?(0|[1-9][0-9]*)`` that fits in int64, excluding ``"-0"`` (so that text and integer map
one to one: ``"-0"`` would otherwise merge with ``"0"``) -- and otherwise the exact strings. So ``"007"``
and ``"7"`` are two ids, an id beyond int64 is kept as its text (never saturated), and ``"1"`` read
from a file is the same id as the integer ``1`` given in an array.

:class:`IdIndex` maps raw ids to rows and back. Every reader, split file and feature file matches
ids through it; queries follow the same rule across kinds (a string finds an integer id only if it
is that integer's canonical text, an integer finds a string id equal to its decimal text).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import UnknownIdError  # re-exported: the library's one unknown-id error
from .id_text import (CANONICAL_TEXT, arrow_strings, arrow_to_numpy, numeric_ids, object_to_str, parse_canonical,
                      str_array)

__all__ = ["IdIndex", "UnknownIdError", "canonical_ids", "canonical_or_arrow"]

_SPAN_FACTOR = 4  # dense-range fast path of from_values: id span at most this many times the count


def canonical_ids(values: Any) -> np.ndarray:
    """Apply the id rule to a column of raw ids.

    Parameters
    ----------
    values : array-like, list or pyarrow array, shape (n,)
        Raw ids: strings, integers, or a mix (integers count as their decimal text). Whole-number
        floats are accepted as integers.

    Returns
    -------
    numpy.ndarray, shape (n,)
        int64 when every value is canonical integer text (``-?(0|[1-9][0-9]*)``, within int64, not
        ``"-0"``) or an integer; otherwise the exact strings (numpy str array): ``"007"`` stays ``"007"``.

    Raises
    ------
    ValueError
        Missing (null) values, NaN or non-integer floats, or not one-dimensional.
    TypeError
        Values that are neither str nor int.
    """
    out = canonical_or_arrow(values)
    return out if isinstance(out, np.ndarray) else np.asarray(arrow_to_numpy(out), dtype=str)


def canonical_or_arrow(values: Any) -> np.ndarray | pa.Array | pa.ChunkedArray:
    """:func:`canonical_ids`, except that Arrow string input that is not all canonical integers is
    returned as the Arrow array itself (no per-value numpy strings: faster and smaller for big files;
    :meth:`IdIndex.from_values` and :meth:`IdIndex.lookup` accept it)."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        if pa.types.is_integer(values.type) and not values.null_count:
            return numeric_ids(arrow_to_numpy(values))
        arr = arrow_strings(values)
        if len(arr) and not CANONICAL_TEXT.match(arr[0].as_py()):
            return arr  # one non-canonical value decides: the exact strings, no full scan needed
        ok, ints = parse_canonical(arr)
        return ints if ok.all() else arr
    raw = np.asarray(values)
    if raw.ndim != 1:
        raise ValueError(f"ids must be one-dimensional, got shape {raw.shape}")
    if raw.dtype.kind in "iufb":
        return numeric_ids(raw)
    if raw.dtype.kind == "O":
        if raw.size and all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
                            for v in raw.tolist()):
            try:
                return np.array(raw.tolist(), dtype=np.int64)
            except OverflowError:
                pass
        raw = object_to_str(raw)
    raw = raw.astype(str) if raw.dtype.kind == "S" else raw
    if raw.size and not CANONICAL_TEXT.match(str(raw[0])):
        return raw
    ok, ints = parse_canonical(arrow_strings(raw))
    return ints if ok.all() else raw


# ---------------------------------------------------------------------- the index
def _as_query(raw: Any) -> tuple[np.ndarray, bool]:
    """(1-D query array: int64 or str, whether the input was a scalar)."""
    if isinstance(raw, (pa.Array, pa.ChunkedArray)):
        if pa.types.is_integer(raw.type) and not raw.null_count:
            return numeric_ids(arrow_to_numpy(raw)), False
        return np.asarray(arrow_to_numpy(arrow_strings(raw)), dtype=str), False
    if isinstance(raw, (int, np.integer)) and not isinstance(raw, (bool, np.bool_)):
        return (np.array([raw], dtype=np.int64) if -(2**63) <= int(raw) < 2**63
                else np.array([str(int(raw))])), True
    if isinstance(raw, (str, np.str_)):
        return np.array([raw], dtype=str), True
    arr = np.asarray(raw)
    scalar = arr.ndim == 0
    arr = np.atleast_1d(arr)
    if arr.ndim != 1:
        raise ValueError(f"ids must be one-dimensional, got shape {arr.shape}")
    if arr.dtype.kind in "iufb":
        return numeric_ids(arr), scalar
    if arr.dtype.kind == "O":
        return object_to_str(arr), scalar
    return arr.astype(str), scalar


class IdIndex:
    """Raw id <-> row: ``ids[row]`` is the raw id of a row, :meth:`lookup` goes back.

    Parameters
    ----------
    ids : array-like, shape (n,)
        Raw ids in row order: integers (stored int64) or strings (stored as a numpy str array).
        They are kept as given (no :func:`canonical_ids` conversion); use :meth:`from_values` to
        build an index from raw data.
    name : str, default "id"
        What the ids are (``"user"``, ``"item"``); quoted in errors.

    Attributes
    ----------
    ids : numpy.ndarray, shape (n,)
        Read-only; int64 (``kind == "int"``) or str (``kind == "str"``).
    kind : {"int", "str"}

    Raises
    ------
    ValueError
        Not one-dimensional, or a duplicated id (named).
    TypeError
        Ids that are neither integers nor strings.
    """

    __slots__ = ("ids", "kind", "name", "_order", "_sorted")

    def __init__(self, ids: Any, *, name: str = "id") -> None:
        arr = np.asarray(ids)
        if arr.size == 0 and arr.dtype.kind == "f":
            arr = np.zeros(0, dtype=np.int64)
        if arr.ndim != 1:
            raise ValueError(f"{name} ids must be one-dimensional, got shape {arr.shape}")
        if arr.dtype.kind == "O":
            arr = canonical_ids(arr) if all(not isinstance(v, str) for v in arr.tolist()) else object_to_str(arr)
        if arr.dtype.kind in "iu":
            arr = numeric_ids(arr)
        elif arr.dtype.kind in "US":
            arr = arr.astype(str)
        else:
            raise TypeError(f"{name} ids must be integers or strings, got dtype {arr.dtype}")
        arr = np.array(arr, copy=True)
        order = None if _is_sorted(arr) else np.argsort(arr, kind="stable")
        sorted_ids = arr if order is None else arr[order]
        dup = np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1]) if len(arr) > 1 else np.zeros(0, np.int64)
        if dup.size:
            raise ValueError(f"{name} ids contain duplicates ({dup.size} in total), e.g. {sorted_ids[dup[0]].item()!r}")
        arr.flags.writeable = False
        set_ = object.__setattr__
        set_(self, "ids", arr)
        set_(self, "kind", "int" if arr.dtype.kind == "i" else "str")
        set_(self, "name", name)
        set_(self, "_order", order)
        set_(self, "_sorted", sorted_ids)

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError("IdIndex is immutable")

    @classmethod
    def from_values(cls, raw: Any, *, name: str = "id") -> tuple["IdIndex", np.ndarray]:
        """The index of the distinct raw ids (sorted) and the row of each value.

        Parameters
        ----------
        raw : array-like or pyarrow array, shape (n,)
            Raw ids; converted with :func:`canonical_ids` first.
        name : str, default "id"

        Returns
        -------
        index : IdIndex
            Sorted unique ids (numeric order for ints, code-point order for strings).
        rows : numpy.ndarray of int64, shape (n,)
            ``index.ids[rows]`` equals the canonical values.
        """
        values = canonical_or_arrow(raw)
        if isinstance(values, np.ndarray) and values.dtype.kind == "i":
            ids, rows = _unique_ints(values)
        else:
            arr = values if not isinstance(values, np.ndarray) else str_array(values)
            uniq = pc.unique(arr)
            uniq = pc.take(uniq, pc.sort_indices(uniq))  # UTF-8 byte order = code-point order (numpy's)
            ids = arrow_to_numpy(uniq)
            rows = arrow_to_numpy(pc.index_in(arr, value_set=uniq)).astype(np.int64)
        return cls(ids, name=name), rows

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, IdIndex):
            return NotImplemented
        return self.kind == other.kind and np.array_equal(self.ids, other.ids)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        head = ", ".join(map(repr, self.ids[:3].tolist())) + (", ..." if len(self) > 3 else "")
        return f"IdIndex({self.name}, kind={self.kind}, n={len(self)}: [{head}])"

    def lookup(self, raw: Any, *, source: str | None = None, missing: str = "raise") -> np.ndarray | int:
        """Rows of raw ids (vectorised: one sort of the index, one binary search).

        Parameters
        ----------
        raw : id or array-like of ids
            A str finds an int id only if it is canonical integer text (``"7"`` finds 7, ``"007"``
            does not); an int finds a str id equal to its decimal text.
        source : str, optional
            Where the ids come from (a file name); quoted in the error.
        missing : {"raise", "mask"}
            Unknown ids raise :class:`UnknownIdError` (a ``KeyError`` naming the source, the count
            and the first 5 unknown ids), or get row -1.

        Returns
        -------
        numpy.ndarray of int64 (same length as ``raw``), or int for a scalar ``raw``.
        """
        if missing not in ("raise", "mask"):
            raise ValueError(f"missing must be 'raise' or 'mask', got {missing!r}")
        query, scalar = _as_query(raw)
        rows = self._rows(query)
        if missing == "raise" and (rows < 0).any():
            bad = query[rows < 0]
            shown = ", ".join(repr(x) for x in bad[:5].tolist())
            more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
            where = f"{source}: " if source else ""
            raise UnknownIdError(f"{where}{len(bad)} unknown {self.name} id(s): {shown}{more}")
        return int(rows[0]) if scalar else rows

    def _rows(self, query: np.ndarray) -> np.ndarray:
        ok = np.ones(query.shape[0], dtype=bool)
        if self.kind == "int" and query.dtype.kind == "U":
            ok, query = parse_canonical(str_array(query))
        elif self.kind == "str" and query.dtype.kind == "i":
            query = query.astype(str)
        if len(self) == 0 or query.shape[0] == 0:
            return np.full(query.shape[0], -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self._sorted, query), len(self) - 1)
        found = ok & (self._sorted[pos] == query)
        rows = pos if self._order is None else self._order[pos]
        return np.where(found, rows, -1).astype(np.int64)

    def raw(self, rows: Any) -> np.ndarray:
        """Raw ids of rows (an array, or one id for a scalar row).

        Raises
        ------
        IndexError
            A negative or out-of-range row.
        """
        r = np.asarray(rows)
        if r.dtype.kind not in "iu" and r.size:
            raise IndexError(f"{self.name} rows must be integers, got dtype {r.dtype}")
        r = r.astype(np.int64)
        bad = (r < 0) | (r >= len(self))
        if bad.any():
            raise IndexError(f"{self.name} row {int(r[bad].ravel()[0])} is out of range 0..{len(self) - 1}")
        out = self.ids[r]
        return out.item() if r.ndim == 0 else out

    def to_json(self) -> dict:
        """``{"kind": "int" | "str", "values": [...]}`` (JSON-able; the id lists of model files)."""
        return {"kind": self.kind, "values": self.ids.tolist()}

    @classmethod
    def from_json(cls, doc: Any, *, n: int | None = None, where: str = "", name: str = "id") -> "IdIndex":
        """Rebuild an index from :meth:`to_json` output.

        Parameters
        ----------
        doc : dict
        n : int, optional
            Expected number of ids.
        where : str
            Quoted at the start of errors (e.g. the model file and key).

        Raises
        ------
        ValueError
            Not such a document, ids of the wrong type, a wrong count, or duplicates.
        """
        pre = f"{where}: " if where else ""
        if not isinstance(doc, dict) or doc.get("kind") not in ("int", "str") or not isinstance(doc.get("values"), list):
            raise ValueError(f"{pre}expected an id document {{'kind': 'int'|'str', 'values': [...]}}, got {_short(doc)}")
        ids = doc["values"]
        if doc["kind"] == "int":
            if not all(isinstance(v, int) and not isinstance(v, bool) and -(2**63) <= v < 2**63 for v in ids):
                raise ValueError(f"{pre}'int' ids must all be integers within int64")
            arr = np.array(ids, dtype=np.int64)
        else:
            if not all(isinstance(v, str) for v in ids):
                raise ValueError(f"{pre}'str' ids must all be strings")
            arr = np.array(ids, dtype=str) if ids else np.zeros(0, dtype=str)
        if n is not None and len(arr) != n:
            raise ValueError(f"{pre}expected {n} ids, got {len(arr)}")
        try:
            return cls(arr, name=name)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{pre}{exc}") from None


def _short(doc: Any) -> str:
    text = repr(doc)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_sorted(arr: np.ndarray) -> bool:
    return arr.shape[0] < 2 or bool(np.all(arr[1:] > arr[:-1]))


def _unique_ints(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique int64 ids, row of each value); O(n) through a bitmap when ids are dense."""
    if values.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    lo, hi = int(values.min()), int(values.max())
    span = hi - lo + 1
    if span > _SPAN_FACTOR * values.size + 1_000_000:
        ids, inverse = np.unique(values, return_inverse=True)
        return ids, inverse.reshape(-1).astype(np.int64)
    base = min(lo, 0) if hi < _SPAN_FACTOR * values.size + 1_000_000 else lo  # ids >= 0: index directly
    offset = values if base == 0 else values - base
    present = np.zeros(hi - base + 1, dtype=bool)
    present[offset] = True
    rank = np.cumsum(present, dtype=np.int64) - 1
    return np.flatnonzero(present).astype(np.int64) + base, rank[offset]
