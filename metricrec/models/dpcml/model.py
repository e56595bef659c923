"""`DPCML`: Diversity-Promoting Collaborative Metric Learning (Bao et al., NeurIPS 2022).

CML's space with C vectors per user: the user table's row u holds ``g_u^1 .. g_u^C`` side by side
(shape (n_users, C * d)), so the trainer's row-sparse optimiser, checkpoints, persistence and fold-in
work per user unchanged; the trainer keeps each of the C vectors in the ball alone
(:attr:`~metricrec.models.dpcml.step.DPCMLStep.user_clip_block`). A user scores an item by its
nearest vector, so retrieval goes through the custom-score hooks of
:class:`~metricrec.models.retrieval_api.RetrievalMixin`.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp
import torch

from ...errors import ConfigError
from ...metrics import Scorer
from ...training.backends import NUMBA, TORCH
from ..approximate import _liked
from ..base import EmbeddingRecommender
from ..init import INSIDE
from ..retrieval import check_n, top_n_of_scores
from ..retrieval_api import SCORE_BLOCK_BYTES, _check_range, _indices, _padded, _query_ids
from .config import DPCMLConfig
from .step import DPCMLStep, diversity, min_distance_scorer

__all__ = ["DPCML"]

#: Offset of the seed of the vectors' start (``init_spread``) from ``config.seed``: not the stream
#: the tables' random start or the trainer's shuffle draw from.
_SPREAD_SEED = 7919


class DPCML(EmbeddingRecommender):
    """Diversity-Promoting Collaborative Metric Learning (Bao, Xu, Yang, He, Cao and Huang, NeurIPS 2022).

    Every user has C vectors (``n_vectors``) and scores an item by the squared distance to the
    nearest of them, ``s(u, v) = min_c ||g_u^c - g_v||^2``: one vector can sit with each interest of
    a user, a minority one included, where CML's single vector is pulled to the majority. Trained on
    CML's hinge with that distance and the paper's diversity control regulariser, which keeps the
    spread of a user's vectors in a band (:mod:`metricrec.models.dpcml.step`). With ``n_vectors=1``
    and ``diversity_weight=0`` it is CML (same start, same gradients). Parameters and attributes as
    :class:`~metricrec.models.base.EmbeddingRecommender`, with a :class:`DPCMLConfig`.

    Retrieval: ``recommend`` (and ``recommend_raw``, ``recommend_vectors``, the service) ranks by
    ``s(u, v)`` and returns ``-sqrt(s(u, v))``, the negative Euclidean distance from the user's
    nearest vector (as CML's scores are negative distances); ``approximate=True`` queries the item
    index with each of the user's C vectors and ranks the merged candidates exactly.
    ``similar_items`` is plain Euclidean over the items; ``similar_users`` is
    :meth:`similar_users`. :meth:`scorer` (evaluation) gives ``-s(u, v)``.

    Attributes
    ----------
    user_embeddings : numpy.ndarray, shape (n_users, C * d)
        Row u is the user's C vectors side by side (what is saved, folded in and given to
        ``recommend_vectors``); :attr:`user_vectors` is the same as (n_users, C, d).
    """

    config_class = DPCMLConfig
    model_name = "DPCML"
    distance = "euclidean"
    backends = (TORCH, NUMBA)
    custom_user_scores = True
    config: DPCMLConfig

    def __init__(self, config: DPCMLConfig | None = None, **kw: Any) -> None:
        super().__init__(config, **kw)
        self._items64: tuple[tuple[Any, ...], np.ndarray, np.ndarray] | None = None

    @classmethod
    def _user_width(cls, config: DPCMLConfig) -> int:
        """A user row holds C vectors of ``factors`` each."""
        return int(config.n_vectors * config.factors)

    # ------------------------------------------------------------------ tables and training
    def _init_tables(self, n_users: int, n_items: int, train: sp.csr_matrix | None = None) -> None:
        """CML's start (``config.init``) for the items and the first vector of every user; the
        other C - 1 vectors spread from it by ``init_spread`` (:meth:`_spread`)."""
        t0 = time.perf_counter()
        super()._init_tables(n_users, n_items, train=train)
        self._user = self._spread(self._fitted()[0])
        self.init_seconds = time.perf_counter() - t0

    def _spread(self, start: torch.Tensor) -> torch.Tensor:
        """(n, d) starts as (n, C * d) rows: vector 1 at the start (so that C = 1 starts as CML), each
        other one moved from it by a seeded normal step of expected length ``init_spread`` and
        scaled into the ball (to just inside its surface, as :mod:`metricrec.models.init` does, so
        that the trainer's first clip moves nothing)."""
        cfg = self.config
        c_n = cfg.n_vectors
        n, d = start.shape
        rows = np.repeat(start.detach().cpu().numpy().astype(np.float64)[:, None, :], c_n, axis=1)
        if c_n > 1 and cfg.init_spread > 0 and n:
            gen = torch.Generator().manual_seed(cfg.seed + _SPREAD_SEED)
            noise = torch.randn(n, c_n - 1, d, generator=gen, dtype=torch.float64).numpy()
            rows[:, 1:] += noise * (cfg.init_spread / np.sqrt(d))
            if cfg.max_norm is not None:
                norms = np.linalg.norm(rows[:, 1:], axis=2, keepdims=True)
                rows[:, 1:] *= np.minimum(1.0, cfg.max_norm * INSIDE / np.maximum(norms, 1e-300))
        return torch.from_numpy(rows.reshape(n, c_n * d).astype(np.float32)).to(start.device)

    def _make_step(self, config: DPCMLConfig, user_emb: torch.Tensor, item_emb: torch.Tensor, train: sp.csr_matrix,
                   user_items: Any, backend: str, **fit_kw: Any) -> DPCMLStep:
        if fit_kw:
            raise TypeError(f"DPCML.fit got unexpected keyword arguments: {', '.join(sorted(fit_kw))}")
        # the compiled kernel is DPCML2's (negatives "hardest"); DPCML1 trains with the torch step
        # under torch's thread policy whatever was asked for
        if backend == NUMBA and config.negatives != "hardest":
            backend = TORCH
        return DPCMLStep(config, user_emb, item_emb, backend)

    def _fold_in_start(self, m: sp.csr_matrix, item: torch.Tensor) -> torch.Tensor:
        """C vectors per new user: the centroid of its items (the base's start) spread as at training
        (:meth:`_spread`); shape (n, C * d)."""
        return self._spread(super()._fold_in_start(m, item)).contiguous()

    # ------------------------------------------------------------------ the vectors
    @property
    def user_vectors(self) -> np.ndarray:
        """The users' vectors, shape (n_users, C, d), as numpy (on CPU; a view of
        :attr:`user_embeddings`' layout)."""
        return self.user_embeddings.reshape(-1, self.config.n_vectors, self.config.factors)

    def user_diversity(self) -> np.ndarray:
        """delta_u of every user, shape (n_users,): the paper's average pairwise distance of its
        vectors (``sum_c ||g^c - mean||^2 / (C - 1)``; 0 for C = 1), what the regulariser keeps in
        ``[diversity_min, diversity_max]``."""
        user, _ = self._fitted()
        vecs = user.detach().reshape(user.shape[0], self.config.n_vectors, -1)
        return diversity(vecs).cpu().numpy()

    def scorer(self) -> Scorer:
        """``scorer(users) -> (len(users), n_items)`` tensor of ``-min_c ||g_u^c - g_v||^2`` (higher
        is better; the ranking of :meth:`recommend`), on the tables' device."""
        user, item = self._fitted()
        return min_distance_scorer(user, item, self.config.n_vectors)

    # ------------------------------------------------------------------ retrieval hooks
    def _query_width(self) -> int:
        return self._user_width(self.config)

    def _item_table64(self) -> tuple[np.ndarray, np.ndarray]:
        """The item table in float64 and its squared norms, cached until the table changes.

        Retrieval scores in float64 so that the exact path (one product with every item) and the
        approximate one (products with the candidates) give the same float32 scores, hence the
        same lists, whatever order each product sums in.
        """
        item = self._fitted()[1]
        key = (item.data_ptr(), getattr(item, "_version", None), tuple(item.shape), str(item.device))
        if self._items64 is None or self._items64[0] != key:
            v = item.detach().cpu().numpy().astype(np.float64)
            self._items64 = (key, v, np.einsum("ij,ij->i", v, v))
        return self._items64[1], self._items64[2]

    def _query_scores(self, q: np.ndarray) -> np.ndarray:
        """``-min_c ||q_c - v||`` for every item, shape (n, n_items), float32: one product of the
        n C sub-vectors with the item table, then the minimum over each query's C rows (in chunks of
        at most :data:`~metricrec.models.retrieval_api.SCORE_BLOCK_BYTES` of float64 distances)."""
        item, item_sq = self._item_table64()
        c_n, d = self.config.n_vectors, self.config.factors
        out = np.empty((q.shape[0], item.shape[0]), dtype=np.float32)
        step = max(1, SCORE_BLOCK_BYTES // (8 * c_n * max(item.shape[0], 1)))
        for lo in range(0, q.shape[0], step):
            qc = np.asarray(q[lo: lo + step], dtype=np.float64).reshape(-1, d)
            s = qc @ item.T
            s *= -2.0
            s += item_sq
            s += np.einsum("ij,ij->i", qc, qc)[:, None]
            out[lo: lo + step] = _neg_root(s.reshape(-1, c_n, item.shape[0]).min(1))
        return out

    def _candidate_scores(self, q: np.ndarray, cand: np.ndarray) -> np.ndarray:
        """:meth:`_query_scores` of given candidates only: shape (n, K) for ``cand`` (n, K) (-1: no
        candidate, score -inf); chunks of at most SCORE_BLOCK_BYTES of gathered float64 vectors."""
        item, item_sq = self._item_table64()
        c_n, d = self.config.n_vectors, self.config.factors
        n, k = cand.shape
        out = np.full((n, k), -np.inf, dtype=np.float32)
        step = max(1, SCORE_BLOCK_BYTES // (8 * max(k, 1) * (d + c_n)))
        for lo in range(0, n, step):
            c = cand[lo: lo + step]
            safe = np.maximum(c, 0)
            qc = np.asarray(q[lo: lo + step], dtype=np.float64).reshape(-1, c_n, d)
            s = np.matmul(qc, item[safe].transpose(0, 2, 1))  # (r, C, K), summed as the exact path's product
            s *= -2.0
            s += item_sq[safe][:, None, :]
            s += np.einsum("rcd,rcd->rc", qc, qc)[:, :, None]
            out[lo: lo + step] = np.where(c >= 0, _neg_root(s.min(1)), -np.inf)
        return out

    def _approximate_custom(self, q: np.ndarray, n: int, excl: sp.csr_matrix | None, filt: np.ndarray | None,
                            only: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Top-n through :attr:`ann_index` (an index over the items): each of a user's C vectors is a
        query, over-fetching n plus the most items the row may lose to its filters (as
        :mod:`metricrec.models.approximate`); the C candidate lists are merged, filtered and ranked by
        their exact ``s(u, v)``. Rows left with too few candidates, and an allow list (``items``),
        are ranked exactly. With an exact index (``"flat"``) the lists are exact retrieval's: an item
        of a user's true top n is, for the user's vector nearest it, among that vector's n + lost
        nearest items."""
        index = self.ann_index
        if index is None:
            raise ConfigError("approximate=True needs an index: build one with `metricrec index` or "
                              "model.attach_index()")
        n_items = self._fitted()[1].shape[0]
        if only is not None:  # an allow list defeats the index: rank those candidates exactly
            return self._top_n_custom(q, n, excl, filt, only, n_items)
        c_n, d = self.config.n_vectors, self.config.factors
        lost = (0 if excl is None else int(np.diff(excl.indptr).max(initial=0))) + (0 if filt is None else len(filt))
        k = min(n_items, n + lost)
        _, found = index.search(np.ascontiguousarray(q.reshape(-1, d)), k)
        cand = np.sort(np.asarray(found, dtype=np.int64).reshape(q.shape[0], c_n * k), axis=1)
        blocked = cand < 0
        blocked[:, 1:] |= cand[:, 1:] == cand[:, :-1]  # an item several vectors found: once
        if filt is not None and filt.size:
            blocked |= np.isin(cand, filt)
        if excl is not None and excl.nnz:
            blocked |= _liked(excl, cand)
        cand = np.where(blocked, -1, cand)
        scores = self._candidate_scores(q, cand)
        order = np.lexsort((cand, -scores), axis=1)[:, :n]  # best first, ties to the lower id
        ids = np.take_along_axis(cand, order, 1)
        top = np.take_along_axis(scores, order, 1)
        ids[~np.isfinite(top)] = -1
        if ids.shape[1] < n:
            pad = ((0, 0), (0, n - ids.shape[1]))
            ids, top = np.pad(ids, pad, constant_values=-1), np.pad(top, pad, constant_values=-np.inf)
        short = np.flatnonzero((ids[:, -1] < 0) & (np.count_nonzero(~blocked, 1) < min(n, n_items)))
        if short.size:  # the index returned too few survivors: exact for those rows
            ids[short], top[short] = self._top_n_custom(q[short], n, None if excl is None else excl[short], filt,
                                                        None, n_items)
        return ids, top

    def similar_users(self, userid: int | Sequence[int] | np.ndarray, N: int = 10,
                      filter_users: Sequence[int] | np.ndarray | None = None,
                      users: Sequence[int] | np.ndarray | None = None):
        """Nearest users by the distance between their nearest vectors,
        ``min_{c, c'} ||g_u^c - g_w^c'||``: two users are near when some interest of one is near some
        interest of the other. The query user first, at score 0; scores are negative distances.
        Same shapes and filters as :meth:`recommend` (``filter_users``: never returned; ``users``:
        the only candidates). Exact (there is no index over the users)."""
        user, _ = self._fitted()
        n_users = user.shape[0]
        scalar, qid = _query_ids(userid, "user")
        _check_range(qid, n_users, "user")
        n = check_n(N)
        filt = _indices(filter_users, n_users, "filter_users")
        only = _indices(users, n_users, "users")
        c_n, d = self.config.n_vectors, self.config.factors
        table = self.user_embeddings.astype(np.float64).reshape(-1, d)  # (n_users * C, d)
        sq = np.einsum("ij,ij->i", table, table)
        k = min(n, max(n_users, 1))
        ids = np.empty((qid.size, k), dtype=np.int64)
        scores = np.empty((qid.size, k), dtype=np.float32)
        step = max(1, SCORE_BLOCK_BYTES // (8 * c_n * c_n * max(n_users, 1)))
        for lo in range(0, qid.size, step):
            rows = qid[lo: lo + step].astype(np.int64)
            sub = (rows[:, None] * c_n + np.arange(c_n)).reshape(-1)
            s = table[sub] @ table.T
            s *= -2.0
            s += sq
            s += sq[sub][:, None]
            block = _neg_root(s.reshape(rows.size, c_n, n_users, c_n).min(axis=(1, 3)))
            block[np.arange(rows.size), rows] = 0.0  # a user is at distance 0 from itself
            ids[lo: lo + step], scores[lo: lo + step] = top_n_of_scores(block, k, filter_ids=filt, only_ids=only)
        dtype = self.id_dtype if n_users <= np.iinfo(np.int32).max else np.dtype(np.int64)
        ids, scores = _padded(ids.astype(dtype, copy=False), scores, n)
        return (ids[0], scores[0]) if scalar else (ids, scores)


def _neg_root(sq: np.ndarray) -> np.ndarray:
    """``-sqrt(max(sq, 0))`` as float32, -0.0 turned into 0.0."""
    return (-np.sqrt(np.maximum(sq, 0.0))).astype(np.float32) + np.float32(0.0)
