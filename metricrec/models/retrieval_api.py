"""The implicit-style retrieval methods of every embedding model: ``recommend``,
``similar_items``, ``similar_users``, and the batch form ``recommend_vectors`` (chunked, memory
bounded, exact or through an approximate index)."""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import numpy as np
import scipy.sparse as sp
import torch

from ..data.interactions import csr_rows
from ..errors import ConfigError, DataError, UnknownIdError
from .retrieval import check_indices, check_n, top_n, top_n_of_scores, top_n_torch

__all__ = ["RetrievalMixin", "SCORE_BLOCK_BYTES"]

#: Exact retrieval scores users in chunks whose float32 score block stays under this size, so the
#: memory of a batch call is bounded by the chunk (about 3x this: scores, partition indices, mask),
#: whatever the number of users.
SCORE_BLOCK_BYTES = 64 * 2**20
_INT32_MAX = int(np.iinfo(np.int32).max)


class RetrievalMixin:
    """Needs ``_fitted() -> (user table, item table)``, ``device``, ``distance``, ``id_dtype``,
    ``ann_index`` and, for ``recalculate_user=True``, ``fold_in_rows(csr) -> vectors``.

    A user's *query* is what retrieval ranks the items for: by default the user's row of the user
    table (or a folded-in user's vector), scored against the item table by :attr:`distance`. A model
    whose user-item score is not a distance between one user vector and one item vector (several
    vectors per user, a translation per pair) sets :attr:`custom_user_scores` and writes
    :meth:`_query_scores` (and :meth:`_query_width` and :meth:`_user_queries` where its query is
    more than the user's row); exact retrieval then ranks its scores with the same filters, chunks
    and padding, and :meth:`_approximate_custom` says what an index can do for it.
    """

    #: True for a model whose user-item scores come from :meth:`_query_scores`.
    custom_user_scores: ClassVar[bool] = False

    # ------------------------------------------------------------------ the hooks of a custom-scored model
    def _query_width(self) -> int:
        """Width of a user query vector (default: the item table's, d)."""
        return int(self._fitted()[1].shape[1])

    def _user_queries(self, uids: np.ndarray) -> np.ndarray:
        """Query vectors of the users ``uids`` (int64), float32 numpy, shape (n, :meth:`_query_width`)."""
        user = self._fitted()[0]
        if user.device.type == "cpu":
            return user.detach().numpy()[uids]  # a view's rows: no torch launch for one query
        return user.index_select(0, torch.from_numpy(uids.astype(np.int64)).to(user.device)).cpu().numpy()

    def _query_scores(self, q: np.ndarray) -> np.ndarray:
        """Scores of every item for each query row, shape (n, n_items), higher is better (float32)."""
        raise NotImplementedError(f"{type(self).__name__} sets custom_user_scores but has no _query_scores")

    def _approximate_custom(self, q: np.ndarray, n: int, excl: sp.csr_matrix | None, filt: np.ndarray | None,
                            only: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Approximate top-n for a custom-scored model (default: refused, naming the model)."""
        raise ConfigError(f"{type(self).__name__} scores each user-item pair with its own translation, so an "
                          "index over the item vectors cannot rank its items: use exact retrieval "
                          "(approximate=False)")

    def recommend(
        self,
        userid: int | Sequence[int] | np.ndarray,
        user_items: sp.spmatrix | None,
        N: int = 10,
        filter_already_liked_items: bool = True,
        filter_items: Sequence[int] | np.ndarray | None = None,
        recalculate_user: bool = False,
        items: Sequence[int] | np.ndarray | None = None,
        approximate: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-N items for one or many users (implicit's signature).

        Parameters
        ----------
        userid : int or array of int
            User indices. A scalar gives 1-D results, an array 2-D results (one row per user).
        user_items : scipy.sparse matrix, shape (len(userid), n_items), or None
            These users' interaction rows: used to filter already-liked items and, with
            ``recalculate_user``, to fold the users in. Required unless
            ``filter_already_liked_items=False`` (see :meth:`recommend_raw` to use the training
            rows kept in the model instead).
        N : int
        filter_already_liked_items : bool
        filter_items : array of int, optional
            Item indices never to return.
        recalculate_user : bool
            Fold the users in from ``user_items`` against the frozen items (all at once) instead
            of using their trained vectors; ``userid`` then only sets the output shape.
        items : array of int, optional
            Restrict the candidates to these item indices.
        approximate : bool
            Use the model's approximate index (:attr:`ann_index`), over-fetching and then applying
            the same filters as exact retrieval.

        Returns
        -------
        ids : numpy.ndarray of ``id_dtype`` (int32 by default: implicit's evaluation), shape (N,) or (n_users, N)
        scores : numpy.ndarray of float32, same shape
            Best first (negative Euclidean distances for a metric model). Where a user has fewer
            than N candidates left after filtering, the tail is id -1 and score -inf.
        """
        user, item = self._fitted()
        scalar, uids = _query_ids(userid, "user")
        if not recalculate_user:
            _check_range(uids, user.shape[0], "user")
        rows = _user_rows(user_items, uids.size, item.shape[0])
        if rows is None and (filter_already_liked_items or recalculate_user):
            raise DataError("user_items is required when filter_already_liked_items or recalculate_user is set")
        if recalculate_user:
            q = self.fold_in_rows(rows).detach().cpu().numpy()
        else:
            q = self._user_queries(uids)
        ids, scores = self._retrieve(q, check_n(N), rows if filter_already_liked_items else None,
                                     _indices(filter_items, item.shape[0], "filter_items"),
                                     _indices(items, item.shape[0], "items"), approximate, None)
        return (ids[0], scores[0]) if scalar else (ids, scores)

    def similar_items(self, itemid: int | Sequence[int] | np.ndarray, N: int = 10,
                      filter_items: Sequence[int] | np.ndarray | None = None,
                      items: Sequence[int] | np.ndarray | None = None, approximate: bool = False):
        """Nearest items (the query item itself first, at score 0 for a metric model) -- same
        shapes as :meth:`recommend`."""
        _, item = self._fitted()
        return self._similar(item, itemid, N, filter_items, items, "item", approximate)

    def similar_users(self, userid: int | Sequence[int] | np.ndarray, N: int = 10,
                      filter_users: Sequence[int] | np.ndarray | None = None,
                      users: Sequence[int] | np.ndarray | None = None):
        """Nearest users (the query user first) -- same shapes as :meth:`recommend`."""
        user, _ = self._fitted()
        return self._similar(user, userid, N, filter_users, users, "user", False)

    def _similar(self, table: torch.Tensor, qid: Any, N: int, filter_ids: Any, only_ids: Any, what: str,
                 approximate: bool):
        scalar, q = _query_ids(qid, what)
        _check_range(q, table.shape[0], what)
        vectors = table.index_select(0, torch.from_numpy(q.astype(np.int64)).to(table.device)).cpu().numpy()
        n = table.shape[0]
        ids, scores = self._retrieve(vectors, check_n(N), None, _indices(filter_ids, n, f"filter_{what}s"),
                                     _indices(only_ids, n, f"{what}s"), approximate, table)
        return (ids[0], scores[0]) if scalar else (ids, scores)

    # ------------------------------------------------------------------ the batch engine
    def recommend_vectors(self, vectors: Any, N: int = 10, *, exclude: sp.spmatrix | None = None,
                          filter_items: Any = None, items: Any = None, approximate: bool = False,
                          candidates: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-N items for query vectors (users, folded-in users, items), in memory-bounded chunks.

        Parameters
        ----------
        vectors : array or tensor, shape (n, d)
        N : int
        exclude : scipy.sparse matrix, shape (n, n_items), optional
            Per-row items never returned (already liked).
        filter_items, items : array of int, optional
            Item indices never returned / the only ones that may be returned.
        approximate : bool
            Through :attr:`ann_index` (over-fetch, then the same filters).

        Returns
        -------
        ids, scores : numpy.ndarray, shape (n, N)
            As :meth:`recommend`; chunks of rows keep each score block under
            :data:`SCORE_BLOCK_BYTES`.
        """
        cand_t = self._fitted()[1] if candidates is None else candidates
        n_cand = cand_t.shape[0]
        q = _as_matrix(vectors, self._query_width() if candidates is None else cand_t.shape[1])
        excl = None if exclude is None else _user_rows(exclude, q.shape[0], n_cand)
        return self._retrieve(q, check_n(N), excl, _indices(filter_items, n_cand, "filter_items"),
                              _indices(items, n_cand, "items"), approximate, candidates)

    def _retrieve(self, q: np.ndarray, N: int, excl: sp.csr_matrix | None, filt: np.ndarray | None,
                  only: np.ndarray | None, approximate: bool, candidates: torch.Tensor | None):
        cand_t = self._fitted()[1] if candidates is None else candidates
        k = min(N, max(cand_t.shape[0], 1))  # never allocate for more than the candidates; padding last
        if candidates is None and self.custom_user_scores:
            if approximate:
                ids, scores = self._approximate_custom(q, k, excl, filt, only)
            else:
                ids, scores = self._top_n_custom(q, k, excl, filt, only, cand_t.shape[0])
        elif approximate:
            from .approximate import approximate_top_n

            ids, scores = approximate_top_n(self, q, k, excl, filt, only)
        elif cand_t.device.type != "cpu":
            ids, scores = _top_n_on_device(q, cand_t, k, excl, filt, only, self.distance)
        else:
            ids, scores = self._top_n_chunks(q, cand_t, k, excl, filt, only, candidates is None)
        dtype = self.id_dtype if cand_t.shape[0] <= _INT32_MAX else np.dtype(np.int64)  # never wraps
        return _padded(ids.astype(dtype, copy=False), scores, N)

    def _top_n_chunks(self, q, cand_t, N, excl, filt, only, items_table: bool):
        cand = cand_t.detach().numpy()
        cand_sq = self._item_sq_norms() if items_table else np.einsum("ij,ij->i", cand, cand)
        step = max(1, SCORE_BLOCK_BYTES // (4 * max(cand.shape[0], 1)))
        if q.shape[0] <= step:  # one chunk: no slicing
            return top_n(q, cand, N, distance=self.distance, cand_sq=cand_sq, exclude=excl, filter_ids=filt,
                         only_ids=only)
        ids = np.empty((q.shape[0], N), dtype=np.int64)
        scores = np.empty((q.shape[0], N), dtype=np.float32)
        for lo in range(0, q.shape[0], step):
            part = None if excl is None else excl[lo: lo + step]
            ids[lo: lo + step], scores[lo: lo + step] = top_n(
                q[lo: lo + step], cand, N, distance=self.distance, cand_sq=cand_sq, exclude=part,
                filter_ids=filt, only_ids=only)
        return ids, scores


    def _top_n_custom(self, q, N, excl, filt, only, n_items: int):
        """Exact top-N of a custom-scored model, in chunks of users whose score block stays under
        :data:`SCORE_BLOCK_BYTES`."""
        step = max(1, SCORE_BLOCK_BYTES // (4 * max(n_items, 1)))
        ids = np.empty((q.shape[0], N), dtype=np.int64)
        scores = np.empty((q.shape[0], N), dtype=np.float32)
        for lo in range(0, q.shape[0], step):
            part = None if excl is None else excl[lo: lo + step]
            ids[lo: lo + step], scores[lo: lo + step] = top_n_of_scores(
                self._query_scores(q[lo: lo + step]), N, exclude=part, filter_ids=filt, only_ids=only)
        return ids, scores


def _padded(ids: np.ndarray, scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``ids``/``scores`` padded to ``n`` columns (id -1, score -inf); :class:`ConfigError` when ``n``
    exceeds the candidates by so much that the padding alone would pass :data:`SCORE_BLOCK_BYTES`."""
    if ids.shape[1] >= n:
        return ids, scores
    need = ids.shape[0] * n * (ids.itemsize + scores.itemsize)
    if need > SCORE_BLOCK_BYTES:
        raise ConfigError(f"N={n:,} is more than the {ids.shape[1]:,} candidates and padding the result to N "
                          f"would take {need / 2**20:,.0f} MiB; ask for N <= {ids.shape[1]:,}")
    pad = ((0, 0), (0, n - ids.shape[1]))
    return np.pad(ids, pad, constant_values=-1), np.pad(scores, pad, constant_values=-np.inf)


def _indices(ids: Any, n: int, name: str) -> np.ndarray | None:
    return None if ids is None else check_indices(ids, n, name)


def _top_n_on_device(q, cand_t, N, excl, filt, only, distance):
    qt = torch.from_numpy(q).to(cand_t.device)
    mask = torch.ones(q.shape[0], cand_t.shape[0], dtype=torch.bool)
    if only is not None:
        allowed = torch.zeros(cand_t.shape[0], dtype=torch.bool)
        allowed[torch.from_numpy(only)] = True
        mask &= allowed
    if filt is not None:
        mask[:, torch.from_numpy(filt)] = False
    if excl is not None and excl.nnz:
        r = csr_rows(excl)
        keep = excl.data != 0
        mask[torch.from_numpy(r[keep]), torch.from_numpy(excl.indices[keep].astype(np.int64))] = False
    return top_n_torch(qt, cand_t, N, mask.to(cand_t.device), distance)


def _as_matrix(vectors: Any, d: int) -> np.ndarray:
    q = vectors.detach().cpu().numpy() if isinstance(vectors, torch.Tensor) else np.asarray(vectors)
    if q.ndim != 2 or q.shape[1] != d:
        raise DataError(f"query vectors must have shape (n, {d}), got {q.shape}")
    q = np.ascontiguousarray(q, dtype=np.float32)
    if not np.all(np.isfinite(q)):
        raise DataError("query vectors contain NaN or infinite values")
    return q


def _query_ids(qid: Any, what: str) -> tuple[bool, np.ndarray]:
    scalar = np.ndim(qid) == 0
    q = np.atleast_1d(np.asarray(qid))
    if q.dtype.kind not in "iu":
        raise TypeError(f"{what}id must be integer {what} indices, got dtype {q.dtype}")
    if q.ndim != 1:
        raise DataError(f"{what}id must be a scalar or a 1-D array, got shape {q.shape}")
    return scalar, q


def _check_range(q: np.ndarray, n: int, what: str) -> None:
    if q.size == 1:  # the latency path of one query: two comparisons, no boolean mask
        if 0 <= q[0] < n:
            return
        bad = q
    else:
        bad = q[(q < 0) | (q >= n)]
    if bad.size:
        raise UnknownIdError(f"unknown {what} index {bad[0]} (the model has {n} {what}s)")


def _user_rows(user_items: Any, n_rows: int, n_items: int) -> sp.csr_matrix | None:
    if user_items is None:
        return None
    if not sp.issparse(user_items):
        raise TypeError(f"user_items must be a scipy sparse matrix, got {type(user_items).__name__}")
    rows = user_items if sp.isspmatrix_csr(user_items) else sp.csr_matrix(user_items)
    if rows.shape != (n_rows, n_items):
        raise DataError(f"user_items must have shape (len(userid), n_items) = ({n_rows}, {n_items}), got {rows.shape}")
    return rows
