"""The one data type of metricrec: a user x item interaction matrix with id maps.

Everything that reads data (files, data sets, DataFrames) produces an :class:`Interactions`;
everything that splits, samples, trains or evaluates consumes one (or its CSR matrix).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Mapping, Sequence

import numpy as np
import scipy.sparse as sp

from .ids import IdIndex, canonical_ids

__all__ = ["Features", "Interactions", "DataWarning", "csr_rows"]


class DataWarning(UserWarning):
    """Warning about input data that was repaired (duplicates collapsed, rows dropped)."""


def csr_rows(matrix: sp.spmatrix | sp.sparray) -> np.ndarray:
    """Row index of every stored entry of a CSR matrix, in storage order.

    Parameters
    ----------
    matrix : scipy.sparse CSR matrix or array, shape (n_rows, n_cols)

    Returns
    -------
    numpy.ndarray of int64, shape (nnz,)
        ``rows[k]`` is the row of ``matrix.indices[k]`` / ``matrix.data[k]``.
    """
    indptr = np.asarray(matrix.indptr, dtype=np.int64)
    return np.repeat(np.arange(indptr.shape[0] - 1, dtype=np.int64), np.diff(indptr))


@dataclass(frozen=True)
class Features:
    """A sparse feature matrix whose rows are users or items.

    Parameters
    ----------
    matrix : scipy.sparse.csr_matrix, shape (n_rows, n_features)
        Feature values (1.0 for multi-hot features such as tags or genres).
    names : numpy.ndarray of str, shape (n_features,)
        One name per column, e.g. ``"genre=Comedy"`` or ``"tag=1423"``.
    """

    matrix: sp.csr_matrix
    names: np.ndarray

    def __post_init__(self) -> None:
        m = sp.csr_matrix(self.matrix, dtype=np.float32)
        m.sum_duplicates()
        m.sort_indices()
        names = np.asarray(self.names).astype(str)
        if names.ndim != 1 or names.shape[0] != m.shape[1]:
            raise ValueError(
                f"feature names: expected {m.shape[1]} names (one per column), got {names.shape}"
            )
        if m.nnz and not np.all(np.isfinite(m.data)):
            raise ValueError("feature matrix contains NaN or infinite values")
        object.__setattr__(self, "matrix", m)
        object.__setattr__(self, "names", names)

    @property
    def n_features(self) -> int:
        """Number of feature columns."""
        return int(self.matrix.shape[1])

    def take(self, rows: np.ndarray) -> "Features":
        """Return the features of the given rows, in that order."""
        return Features(self.matrix[np.asarray(rows)], self.names)


@dataclass(frozen=True)
class Interactions:
    """User x item interactions with raw-id maps and optional side features.

    Build one with :meth:`from_arrays` (or the readers in :mod:`metricrec.io` and the loaders in
    :mod:`metricrec.datasets`) rather than calling the constructor directly.

    Parameters
    ----------
    matrix : scipy.sparse.csr_matrix, shape (n_users, n_items), float32
        Canonical CSR (sorted column indices, no duplicates, no explicit zeros). Values are 1.0
        for binary data, otherwise the interaction weight (e.g. the rating).
    user_ids, item_ids : numpy.ndarray, shapes (n_users,) and (n_items,)
        Raw id of each row / column: ``user_ids[u]`` is the raw id of user index ``u``.
    timestamps : numpy.ndarray of int64 or None, shape (nnz,)
        Aligned with ``matrix.indices``/``matrix.data``; ``None`` when the source has none.
    item_features, user_features : Features or None
        Rows aligned with the items / users of the matrix.
    meta : mapping
        Provenance (``source``, ``n_ratings`` before thresholding, ``min_rating``, ...).
    """

    matrix: sp.csr_matrix
    user_ids: np.ndarray
    item_ids: np.ndarray
    timestamps: np.ndarray | None = None
    item_features: Features | None = None
    user_features: Features | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        m = self.matrix
        if not sp.isspmatrix_csr(m) and not isinstance(m, sp.csr_array):
            raise TypeError(f"matrix must be a scipy CSR matrix, got {type(m).__name__}")
        n_users, n_items = m.shape
        if len(self.user_ids) != n_users:
            raise ValueError(f"user_ids has {len(self.user_ids)} entries but the matrix has {n_users} rows")
        if len(self.item_ids) != n_items:
            raise ValueError(f"item_ids has {len(self.item_ids)} entries but the matrix has {n_items} columns")
        if self.timestamps is not None and len(self.timestamps) != m.nnz:
            raise ValueError(f"timestamps has {len(self.timestamps)} entries but the matrix has {m.nnz} non-zeros")
        if self.item_features is not None and self.item_features.matrix.shape[0] != n_items:
            raise ValueError(
                f"item features have {self.item_features.matrix.shape[0]} rows but there are {n_items} items"
            )
        if self.user_features is not None and self.user_features.matrix.shape[0] != n_users:
            raise ValueError(
                f"user features have {self.user_features.matrix.shape[0]} rows but there are {n_users} users"
            )

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_arrays(
        cls,
        users: Sequence | np.ndarray,
        items: Sequence | np.ndarray,
        weights: Sequence | np.ndarray | None = None,
        timestamps: Sequence | np.ndarray | None = None,
        *,
        min_weight: float | None = None,
        binary: bool = True,
        user_ids: Sequence | np.ndarray | None = None,
        item_ids: Sequence | np.ndarray | None = None,
        item_features: Features | None = None,
        user_features: Features | None = None,
        source: str = "arrays",
        meta: Mapping[str, Any] | None = None,
    ) -> "Interactions":
        """Build interactions from parallel arrays of raw user ids, raw item ids and weights.

        Parameters
        ----------
        users, items : array-like, shape (n,)
            Raw ids (ints or strings) of each interaction.
        weights : array-like, shape (n,), optional
            Rating or weight of each interaction (default 1). Must be finite and >= 0.
        timestamps : array-like of int, shape (n,), optional
            Time of each interaction (kept for temporal splits).
        min_weight : float, optional
            Keep only interactions whose weight is >= this threshold (e.g. 4 for "rating >= 4").
            Users and items seen only below the threshold stay in the id maps (with no positives).
        binary : bool, default True
            Store 1.0 for every kept interaction instead of its weight.
        user_ids, item_ids : array-like, optional
            The id universe (and its order). Default: the sorted unique raw ids seen. An id not in a
            given universe is an error.
        source : str
            Where the data came from; quoted in warnings and errors.

        Duplicated (user, item) pairs collapse to one entry (max weight, latest timestamp) and a
        :class:`DataWarning` says how many were collapsed.
        """
        uidx_ = IdIndex.from_values(users, name="user") if user_ids is None else None
        iidx_ = IdIndex.from_values(items, name="item") if item_ids is None else None
        uid, uidx = uidx_ if uidx_ else _in_universe(users, user_ids, "user", source)
        iid, iidx = iidx_ if iidx_ else _in_universe(items, item_ids, "item", source)
        return cls.from_rows(uid, uidx, iid, iidx, weights, timestamps, min_weight=min_weight, binary=binary,
                             item_features=item_features, user_features=user_features, source=source, meta=meta,
                             stacklevel=3)

    @classmethod
    def from_rows(
        cls,
        user_map: IdIndex,
        user_rows: np.ndarray,
        item_map: IdIndex,
        item_rows: np.ndarray,
        weights: Sequence | np.ndarray | None = None,
        timestamps: Sequence | np.ndarray | None = None,
        *,
        min_weight: float | None = None,
        binary: bool = True,
        item_features: Features | None = None,
        user_features: Features | None = None,
        source: str = "arrays",
        meta: Mapping[str, Any] | None = None,
        stacklevel: int = 2,
    ) -> "Interactions":
        """Build interactions from already indexed ids: ``user_map.ids[user_rows[k]]`` is the raw user of
        interaction ``k`` (what :meth:`IdIndex.from_values` returns). Other parameters as in
        :meth:`from_arrays`, which calls this; readers use it to free each id column once indexed.
        """
        uidx, iidx = np.asarray(user_rows, dtype=np.int64), np.asarray(item_rows, dtype=np.int64)
        n = uidx.shape[0]
        if iidx.shape[0] != n:
            raise ValueError(f"users has {n} entries but items has {iidx.shape[0]}")
        for rows, index, what in ((uidx, user_map, "user"), (iidx, item_map, "item")):
            if n and (rows.min() < 0 or rows.max() >= len(index)):
                raise ValueError(f"{source}: {what} rows must be in 0..{len(index) - 1}")
        w = _check_weights(weights, n, source)
        ts = _check_timestamps(timestamps, n, source)
        info: dict[str, Any] = {"source": source, "n_ratings": int(n)}
        if min_weight is not None:
            keep = (w if w is not None else np.ones(n)) >= float(min_weight)
            info["min_rating"] = float(min_weight)
            uidx, iidx = uidx[keep], iidx[keep]
            w = None if w is None else w[keep]
            ts = None if ts is None else ts[keep]
        matrix, ts, n_dup = _to_csr(uidx, iidx, w, ts, (len(user_map), len(item_map)), binary)
        if n_dup:
            warnings.warn(f"{source}: {n_dup} duplicate (user, item) pairs collapsed into one "
                          "(max weight, latest timestamp)", DataWarning, stacklevel=stacklevel)
        info["n_duplicates"] = int(n_dup)
        if binary:
            matrix.data[:] = 1.0
        if meta:
            info.update(meta)
        return cls(matrix, user_map.ids, item_map.ids, ts, item_features, user_features, info)

    # ------------------------------------------------------------------ basic facts
    @property
    def shape(self) -> tuple[int, int]:
        """(n_users, n_items)."""
        return tuple(self.matrix.shape)  # type: ignore[return-value]

    @property
    def n_users(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.matrix.shape[1])

    @property
    def nnz(self) -> int:
        """Number of stored (user, item) interactions."""
        return int(self.matrix.nnz)

    @property
    def density(self) -> float:
        """nnz / (n_users * n_items)."""
        cells = self.n_users * self.n_items
        return self.nnz / cells if cells else 0.0

    def __repr__(self) -> str:
        feats = []
        if self.item_features is not None:
            feats.append(f"item_features={self.item_features.n_features}")
        if self.user_features is not None:
            feats.append(f"user_features={self.user_features.n_features}")
        extra = (", " + ", ".join(feats)) if feats else ""
        return f"Interactions(n_users={self.n_users}, n_items={self.n_items}, nnz={self.nnz}{extra})"

    # ------------------------------------------------------------------ id maps
    @cached_property
    def user_map(self) -> IdIndex:
        """Raw user id <-> row index (:class:`~metricrec.data.ids.IdIndex` over ``user_ids``)."""
        return IdIndex(self.user_ids, name="user")

    @cached_property
    def item_map(self) -> IdIndex:
        """Raw item id <-> column index (:class:`~metricrec.data.ids.IdIndex` over ``item_ids``)."""
        return IdIndex(self.item_ids, name="item")

    def user_index(self, raw_ids: Any) -> np.ndarray | int:
        """Map raw user ids to row indices (``user_map.lookup``); ``KeyError`` names the unknown ids."""
        return self.user_map.lookup(raw_ids)

    def item_index(self, raw_ids: Any) -> np.ndarray | int:
        """Map raw item ids to column indices (``item_map.lookup``); ``KeyError`` names the unknown ids."""
        return self.item_map.lookup(raw_ids)

    def mapping(self) -> tuple[dict, dict]:
        """(raw user id -> index, raw item id -> index) dictionaries, as LightFM's ``Dataset.mapping``."""
        return (
            {k: i for i, k in enumerate(self.user_ids.tolist())},
            {k: i for i, k in enumerate(self.item_ids.tolist())},
        )

    # ------------------------------------------------------------------ derived views
    def with_matrix(self, matrix: sp.csr_matrix, timestamps: np.ndarray | None = None, **meta: Any) -> "Interactions":
        """Same users, items and features with another interaction matrix (e.g. one split part)."""
        m = sp.csr_matrix(matrix, dtype=np.float32)
        if m.shape != self.shape:
            raise ValueError(f"matrix shape {m.shape} does not match {self.shape}")
        info = dict(self.meta)
        info.update(meta)
        return replace(self, matrix=m, timestamps=timestamps, meta=info)

    def to_coo_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(user index, item index, weight) arrays of all interactions, row-major order."""
        m = self.matrix
        return csr_rows(m), m.indices.astype(np.int64), m.data.copy()


# ---------------------------------------------------------------------- helpers
def _in_universe(raw: Any, universe: Any, what: str, source: str) -> tuple[IdIndex, np.ndarray]:
    """(index of a given id universe, row of each raw id); unknown ids raise ``KeyError``."""
    index = IdIndex(canonical_ids(universe), name=what)
    return index, np.asarray(index.lookup(canonical_ids(raw), source=source), dtype=np.int64)


def _check_weights(weights: Any, n: int, source: str) -> np.ndarray | None:
    """Finite, non-negative float64 weights; ``None`` (all 1) stays ``None``."""
    if weights is None:
        return None
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"weights must have shape ({n},), got {w.shape}")
    for bad, what in ((~np.isfinite(w), "NaN or infinite"), (w < 0, "negative")):
        if bad.any():
            raise ValueError(f"{source}: {int(bad.sum())} weights are {what} (first at row {int(np.argmax(bad))})")
    return w


def _check_timestamps(timestamps: Any, n: int, source: str) -> np.ndarray | None:
    if timestamps is None:
        return None
    ts = np.asarray(timestamps)
    if ts.shape != (n,):
        raise ValueError(f"timestamps must have shape ({n},), got {ts.shape}")
    if ts.dtype.kind == "f" and not np.all(np.isfinite(ts)):
        raise ValueError(f"{source}: timestamps contain NaN or infinite values")
    return ts.astype(np.int64)


def _to_csr(
    rows: np.ndarray, cols: np.ndarray, w: np.ndarray | None, ts: np.ndarray | None, shape: tuple[int, int],
    binary: bool = False,
) -> tuple[sp.csr_matrix, np.ndarray | None, int]:
    """Canonical CSR from COO arrays; duplicates collapse to (max weight, latest timestamp).
    ``w`` None means every weight is 1."""
    if ts is None and (w is None or binary or (len(w) and bool(np.all(w == w[0])))):
        return _structure_csr(rows, cols, 1.0 if w is None or binary or not len(w) else float(w[0]), shape)
    w = np.ones(len(rows)) if w is None else w
    n_cols = max(shape[1], 1)
    key = rows.astype(np.int64) * n_cols + cols
    order = None if _is_sorted(key) else np.argsort(key)
    key_s = key if order is None else key[order]
    starts = np.flatnonzero(np.r_[True, key_s[1:] != key_s[:-1]]) if len(key_s) else np.zeros(0, np.int64)
    n_dup = int(len(key_s) - len(starts))

    def per_pair(values: np.ndarray) -> np.ndarray:
        v = values if order is None else values[order]
        return np.maximum.reduceat(v, starts) if n_dup else v

    w_out = per_pair(w)
    ts_out = None if ts is None else per_pair(ts).astype(np.int64)
    uniq = key_s[starts] if n_dup else key_s
    r, c = uniq // n_cols, uniq % n_cols
    indptr = np.zeros(shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(r, minlength=shape[0]), out=indptr[1:])
    small = indptr[-1] < 2**31 and shape[1] < 2**31
    idx_dtype = np.int32 if small else np.int64
    matrix = sp.csr_matrix((w_out.astype(np.float32), c.astype(idx_dtype), indptr.astype(idx_dtype)), shape=shape)
    return matrix, ts_out, n_dup


def _structure_csr(rows: np.ndarray, cols: np.ndarray, value: float,
                   shape: tuple[int, int]) -> tuple[sp.csr_matrix, None, int]:
    """CSR of the distinct pairs, all ``value``: scipy's O(nnz) COO -> CSR, duplicates summed then reset."""
    idx = np.int32 if max(shape) < 2**31 and len(rows) < 2**31 else np.int64
    m = sp.coo_matrix((np.ones(len(rows), dtype=np.float32), (rows.astype(idx), cols.astype(idx))), shape=shape)
    m = m.tocsr()
    m.sum_duplicates()
    m.data[:] = value
    return m, None, int(len(rows) - m.nnz)


def _is_sorted(key: np.ndarray) -> bool:
    """Strictly increasing (sorted input with no duplicate) -- the common case of sorted files."""
    return key.shape[0] < 2 or bool(np.all(key[1:] > key[:-1]))
