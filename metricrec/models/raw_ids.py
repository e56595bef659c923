"""Raw ids on the model: the id maps, the users' liked items kept with the model, and retrieval
that takes and returns raw ids (no data files needed, no padding with valid-looking ids)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp
import torch

from ..data.ids import IdIndex, canonical_ids
from ..errors import DataError, UnknownIdError
from .retrieval import check_n

__all__ = ["RawIdMixin"]


class RawIdMixin:
    """Needs ``_fitted()``, ``recommend_vectors``; keeps ``user_map``, ``item_map``, ``user_items``.

    Attributes
    ----------
    user_map, item_map : IdIndex or None
        Raw id <-> row of the users and items (None for a model fitted on a plain matrix: its raw
        ids are then the row indices).
    user_items : scipy.sparse.csr_matrix or None
        The training positives (binary), saved with the model: what "already liked" means.
    """

    user_map: IdIndex | None = None
    item_map: IdIndex | None = None
    user_items: sp.csr_matrix | None = None

    @property
    def user_ids(self) -> np.ndarray | None:
        """Raw user id of each row (None without an id map)."""
        return None if self.user_map is None else self.user_map.ids

    @property
    def item_ids(self) -> np.ndarray | None:
        """Raw item id of each column (None without an id map)."""
        return None if self.item_map is None else self.item_map.ids

    def user_index(self, raw: Any) -> np.ndarray:
        """Rows of raw user ids (:class:`UnknownIdError` naming the unknown ones)."""
        return _lookup(self.user_map, raw, self._fitted()[0].shape[0], "user")

    def item_index(self, raw: Any) -> np.ndarray:
        """Columns of raw item ids (:class:`UnknownIdError` naming the unknown ones)."""
        return _lookup(self.item_map, raw, self._fitted()[1].shape[0], "item")

    def _raw_items(self, cols: np.ndarray) -> np.ndarray:
        return cols if self.item_map is None else self.item_map.raw(cols)

    def recommend_raw(self, users: Sequence[Any], N: int = 10, *, filter_already_liked_items: bool = True,
                      filter_items: Sequence[Any] | None = None, items: Sequence[Any] | None = None,
                      approximate: bool = False) -> list[tuple[np.ndarray, np.ndarray]]:
        """Top-N raw item ids for raw user ids, filtering each user's training items kept in the model.

        Returns
        -------
        list of (raw item ids, scores), one per user, best first; shorter than N when fewer
        candidates are left (never padded).
        """
        rows = self.user_index(list(users))
        exclude = None
        if filter_already_liked_items:
            if self.user_items is None:
                raise DataError("this model keeps no liked items (fitted without them); "
                                "pass filter_already_liked_items=False")
            exclude = _rows_of(self.user_items, rows)
        vectors = self._user_queries(rows)
        N = min(check_n(N), self._fitted()[1].shape[0])  # never padded: no more than the catalogue
        ids, scores = self.recommend_vectors(vectors, N, exclude=exclude, filter_items=self._cols(filter_items),
                                             items=self._cols(items), approximate=approximate)
        return self._trimmed(ids, scores)

    def similar_items_raw(self, items: Sequence[Any], N: int = 10, *,
                          approximate: bool = False) -> list[tuple[np.ndarray, np.ndarray]]:
        """Nearest items of raw item ids, as raw ids (the item itself first for a metric model)."""
        N = min(check_n(N), self._fitted()[1].shape[0])  # never padded: no more than the catalogue
        ids, scores = self.similar_items(self.item_index(list(items)), N, approximate=approximate)
        return self._trimmed(np.atleast_2d(ids), np.atleast_2d(scores))

    def _cols(self, raw: Sequence[Any] | None) -> np.ndarray | None:
        return None if raw is None else self.item_index(list(raw))

    def _trimmed(self, ids: np.ndarray, scores: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        out = []
        for row_ids, row_scores in zip(ids, scores):
            keep = row_ids >= 0
            out.append((self._raw_items(row_ids[keep].astype(np.int64)), row_scores[keep]))
        return out

    # ------------------------------------------------------------------ catalogue growth
    def _grow_users(self, raw: list[Any]) -> np.ndarray:
        user, _ = self._fitted()
        self.user_map, rows, n_new = _grown(self.user_map, raw, user.shape[0], "user")
        if n_new:
            self._user = torch.cat([user, user.new_zeros(n_new, user.shape[1])])
            if self.user_items is not None:
                self.user_items = sp.vstack([self.user_items, sp.csr_matrix((n_new, self.user_items.shape[1]),
                                                                            dtype=np.float32)]).tocsr()
        return rows

    def _grow_items(self, raw: list[Any]) -> np.ndarray:
        _, item = self._fitted()
        self.item_map, cols, n_new = _grown(self.item_map, raw, item.shape[0], "item")
        if n_new:
            self._item = torch.cat([item, item.new_zeros(n_new, item.shape[1])])
            if self.user_items is not None:
                self.user_items = sp.hstack([self.user_items, sp.csr_matrix((self.user_items.shape[0], n_new),
                                                                            dtype=np.float32)]).tocsr()
        return cols

    def _set_liked_rows(self, rows: np.ndarray, liked: sp.csr_matrix) -> None:
        """Replace the liked items of ``rows`` (vectorised: zero those rows, add the new ones)."""
        if self.user_items is None:
            return
        n_users = self.user_items.shape[0]
        kept = np.ones(n_users, dtype=np.float32)
        kept[rows] = 0.0
        place = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, np.arange(len(rows)))),
                              shape=(n_users, len(rows)))
        m = (sp.diags(kept) @ self.user_items + place @ sp.csr_matrix(liked, dtype=np.float32)).tocsr()
        m.eliminate_zeros()
        m.data[:] = 1.0
        self.user_items = m


def _rows_of(m: sp.csr_matrix, rows: np.ndarray) -> sp.csr_matrix:
    """``m[rows]``; one row by slicing (a fraction of fancy indexing's cost on the latency path)."""
    if rows.size == 1:
        r = int(rows[0])
        return m[r: r + 1]
    return m[rows]


def _lookup(index: IdIndex | None, raw: Any, n: int, what: str) -> np.ndarray:
    if index is not None:
        return np.atleast_1d(index.lookup(raw, source=f"the model's {what}s"))
    arr = np.atleast_1d(np.asarray(raw))
    ids = canonical_ids(arr.astype(str)) if arr.dtype.kind in "USO" else arr
    if ids.dtype.kind not in "iu" or (ids.size and (ids.min() < 0 or ids.max() >= n)):
        raise UnknownIdError(f"unknown {what} id(s) {arr[:5].tolist()}: this model has no id map, its {what} "
                             f"ids are the indices 0..{n - 1}")
    return ids.astype(np.int64)


def _grown(index: IdIndex | None, raw: list[Any], n: int, what: str) -> tuple[IdIndex, np.ndarray, int]:
    """(the index with the unknown raw ids appended, rows of all raw ids, number appended).

    String ids are appended at their own width: numpy's concatenation of str arrays takes the widest
    of the two (casting the new ids to the old dtype would cut ``'Uabcd'`` to ``'Uabc'`` in a map of
    ids ``'U1'..'U943'``). Integer-like ids joining a map of strings are kept as their decimal text,
    the id rule's match for them; a map of integer ids takes only integers (turning it into text would
    change the type of every id the model returns)."""
    if index is None:
        index = IdIndex(np.arange(n, dtype=np.int64), name=what)
    values = canonical_ids(np.asarray([str(x) for x in raw]))
    if index.kind == "int" and values.dtype.kind not in "iu":
        bad = next(v for v in values.tolist() if canonical_ids([v]).dtype.kind not in "iu")
        raise DataError(f"the model's {what} ids are integers; {bad!r} is not one")
    found = np.atleast_1d(index.lookup(values, missing="mask"))
    new = np.unique(values[found < 0])
    if new.size == 0:
        return index, found.astype(np.int64), 0
    if index.kind == "str":
        new = new.astype(str)  # no width given: each int-like id as its full decimal text
    grown = IdIndex(np.concatenate([index.ids, new]), name=what)
    return grown, np.atleast_1d(grown.lookup(values)).astype(np.int64), int(new.size)
