"""The implicit-style retrieval methods of every embedding model (``recommend``, ``similar_items``,
``similar_users``), over :mod:`metricrec.models.retrieval`."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp
import torch

from ..errors import DataError, UnknownIdError
from .retrieval import candidate_mask, check_n, top_n

__all__ = ["RetrievalMixin"]


class RetrievalMixin:
    """Needs ``_fitted() -> (user table, item table)``, ``device``, ``distance`` and, for
    ``recalculate_user=True``, ``recalculate_user(row) -> vector``."""

    def recommend(
        self,
        userid: int | Sequence[int] | np.ndarray,
        user_items: sp.spmatrix | None,
        N: int = 10,
        filter_already_liked_items: bool = True,
        filter_items: Sequence[int] | np.ndarray | None = None,
        recalculate_user: bool = False,
        items: Sequence[int] | np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-N items for one or many users.

        Parameters
        ----------
        userid : int or array of int
            User indices. A scalar gives 1-D results, an array 2-D results (one row per user).
        user_items : scipy.sparse matrix, shape (len(userid), n_items), or None
            The rows of these users' interactions (as in ``implicit``): used to filter already-liked
            items and, with ``recalculate_user``, to fold the users in. Required unless
            ``filter_already_liked_items=False``.
        N : int
            Number of items to return.
        filter_already_liked_items : bool
        filter_items : array of int, optional
            Item indices never to return.
        recalculate_user : bool
            Fit each user's vector from ``user_items`` against the frozen items (fold-in) instead
            of using the trained vector; ``userid`` is then only used for the output shape.
        items : array of int, optional
            Restrict the candidates to these item indices.

        Returns
        -------
        ids : numpy.ndarray of int64, shape (N,) or (n_users, N)
        scores : numpy.ndarray of float32, same shape
            Best first (negative Euclidean distances for a metric model). Where a user has fewer
            than N candidates left after filtering, the tail is padded with id -1 and score -inf.
        """
        user, item = self._fitted()
        scalar, uids = _query_ids(userid, "user")
        n_users, n_items = user.shape[0], item.shape[0]
        if not recalculate_user:
            _check_range(uids, n_users, "user")
        check_n(N)
        rows = _user_rows(user_items, uids.size, n_items)
        if rows is None and (filter_already_liked_items or recalculate_user):
            raise DataError("user_items is required when filter_already_liked_items or recalculate_user is set")
        if recalculate_user:
            qvec = torch.stack([torch.from_numpy(self.recalculate_user(rows[i])) for i in range(rows.shape[0])]).to(item)
        else:
            qvec = user[torch.from_numpy(uids.astype(np.int64)).to(self.device)]
        liked = rows if filter_already_liked_items else None
        mask = candidate_mask(uids.size, n_items, liked, filter_items, items, self.device)
        ids, scores = top_n(qvec, item, N, mask, self.distance)
        return (ids[0], scores[0]) if scalar else (ids, scores)

    def similar_items(
        self,
        itemid: int | Sequence[int] | np.ndarray,
        N: int = 10,
        filter_items: Sequence[int] | np.ndarray | None = None,
        items: Sequence[int] | np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Nearest items (the query item itself first, at score 0 for a metric model) -- same
        shapes as :meth:`recommend`."""
        _, item = self._fitted()
        return self._similar(item, itemid, N, filter_items, items, "item")

    def similar_users(
        self,
        userid: int | Sequence[int] | np.ndarray,
        N: int = 10,
        filter_users: Sequence[int] | np.ndarray | None = None,
        users: Sequence[int] | np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Nearest users (the query user first) -- same shapes as :meth:`recommend`."""
        user, _ = self._fitted()
        return self._similar(user, userid, N, filter_users, users, "user")

    def _similar(self, table: torch.Tensor, qid: Any, N: int, filter_ids: Any, only_ids: Any, what: str):
        scalar, q = _query_ids(qid, what)
        _check_range(q, table.shape[0], what)
        check_n(N)
        mask = candidate_mask(q.size, table.shape[0], None, filter_ids, only_ids, self.device)
        ids, scores = top_n(table[torch.from_numpy(q.astype(np.int64)).to(table.device)], table, N, mask,
                            self.distance)
        return (ids[0], scores[0]) if scalar else (ids, scores)


def _query_ids(qid: Any, what: str) -> tuple[bool, np.ndarray]:
    scalar = np.ndim(qid) == 0
    q = np.atleast_1d(np.asarray(qid))
    if q.dtype.kind not in "iu":
        raise TypeError(f"{what}id must be integer {what} indices, got dtype {q.dtype}")
    if q.ndim != 1:
        raise DataError(f"{what}id must be a scalar or a 1-D array, got shape {q.shape}")
    return scalar, q


def _check_range(q: np.ndarray, n: int, what: str) -> None:
    bad = q[(q < 0) | (q >= n)]
    if bad.size:
        raise UnknownIdError(f"unknown {what} index {bad[0]} (the model has {n} {what}s)")


def _user_rows(user_items: Any, n_rows: int, n_items: int) -> sp.csr_matrix | None:
    if user_items is None:
        return None
    if not sp.issparse(user_items):
        raise TypeError(f"user_items must be a scipy sparse matrix, got {type(user_items).__name__}")
    rows = sp.csr_matrix(user_items)
    if rows.shape != (n_rows, n_items):
        raise DataError(f"user_items must have shape (len(userid), n_items) = ({n_rows}, {n_items}), got {rows.shape}")
    return rows
