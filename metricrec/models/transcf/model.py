"""`TransCF`: Collaborative Translational Metric Learning (Park, Kim, Xie and Yu, ICDM 2018)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp
import torch

from ...errors import DataError, NotFittedError
from ...metrics import Scorer
from ...serialization import ModelFormatError
from ...training.backends import NUMBA, TORCH
from ..base import EmbeddingRecommender
from .config import TransCFConfig
from .step import Neighbourhoods, TransCFStep, item_features, pair_scorer, transcf_scores

__all__ = ["TransCF"]


class TransCF(EmbeddingRecommender):
    """Collaborative Translational Metric Learning (Park, Kim, Xie and Yu, ICDM 2018).

    CML's space with a translation per user-item pair: user u is moved by ``r_ui = alpha_u * beta_i``
    before it is compared with item i, where alpha_u is the mean of the vectors of u's training items
    and beta_i the mean of the vectors of i's training users; the score is ``-||u + r_ui - v_i||^2``
    (:mod:`metricrec.models.transcf.step`). Parameters and attributes as
    :class:`~metricrec.models.base.EmbeddingRecommender`, with a :class:`TransCFConfig`.

    The score depends on the pair, so retrieval ranks the model's own scores
    (:attr:`custom_user_scores`): a user's query is ``[u, alpha_u]``, width 2d, and exact top-N is a
    full pass over the catalogue; ``approximate=True`` is refused (an index over the item vectors
    does not rank translated pairs). ``similar_items`` and ``similar_users`` stay plain Euclidean
    neighbours in the tables.

    alpha and beta are derived tables: computed from the tables and the training positives kept in
    the model (:attr:`user_items`) whenever they are needed after a change (the end of ``fit``, a
    fold-in that keeps users, new items) and at load, so a model file holds no more than CML's.
    Fold-in (``fold_in``, ``recalculate_user``, ``recommend(..., recalculate_user=True)``) trains new
    user vectors against the frozen items and the frozen beta, and returns queries ``[u, alpha_u]``
    (alpha_u from the rows' items); ``partial_fit_users`` keeps the users and their liked items, so
    the beta of those items then includes them.

    Attributes
    ----------
    user_translations : numpy.ndarray, shape (n_users, d)
        alpha_u of every user (its items' mean vector; 0 for a user without training items).
    item_translations : numpy.ndarray, shape (n_items, d)
        beta_i of every item (its users' mean vector; 0 for an item without training users).
    """

    config_class = TransCFConfig
    model_name = "TransCF"
    distance = "euclidean"
    backends = (TORCH, NUMBA)
    custom_user_scores = True
    config: TransCFConfig

    def __init__(self, config: TransCFConfig | None = None, **kw: Any) -> None:
        super().__init__(config, **kw)
        self._derived: tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]] | None = None

    # ------------------------------------------------------------------ training
    def _make_step(self, config: TransCFConfig, user_emb: torch.Tensor, item_emb: torch.Tensor, train: sp.csr_matrix,
                   user_items: Any, backend: str, **fit_kw: Any) -> TransCFStep:
        if fit_kw:
            raise TypeError(f"TransCF.fit got unexpected keyword arguments: {', '.join(sorted(fit_kw))}")
        # the model's own user table: both neighbourhoods train; any other (a fold-in's new users)
        # is translated by the trained items' beta, fixed with the items
        beta = None if user_emb is self._user else self._translations()[1]
        return TransCFStep(config, user_emb, item_emb, train, backend, beta=beta)

    def _init_tables(self, n_users: int, n_items: int, train: sp.csr_matrix | None = None) -> None:
        super()._init_tables(n_users, n_items, train=train)
        self._derived = None

    def _finish(self, trainer: Any, user_items: Any) -> None:
        super()._finish(trainer, user_items)
        self._derived = None  # new tables and positives: the translations follow on first use

    # ------------------------------------------------------------------ the derived tables
    def _translations(self) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """(alpha, beta, item factors of the scores), computed from the tables and :attr:`user_items`
        when something changed since the last call."""
        if self._derived is None:
            user, item = self._fitted()
            if self.user_items is None:
                raise NotFittedError("this TransCF model has no training positives (user_items): its translations "
                                     "are built from them; call fit()")
            hoods = Neighbourhoods(self.user_items, user.device, user.dtype)
            alpha, beta = hoods.user_means(item), hoods.item_means(user)
            self._derived = (alpha, beta, item_features(item, beta))
        return self._derived

    @property
    def user_translations(self) -> np.ndarray:
        """alpha_u of every user, shape (n_users, d), as numpy (on CPU)."""
        return self._translations()[0].detach().cpu().numpy()

    @property
    def item_translations(self) -> np.ndarray:
        """beta_i of every item, shape (n_items, d), as numpy (on CPU)."""
        return self._translations()[1].detach().cpu().numpy()

    def _grow_users(self, raw: list[Any]) -> np.ndarray:
        self._derived = None
        return super()._grow_users(raw)

    def _grow_items(self, raw: list[Any]) -> np.ndarray:
        self._derived = None
        return super()._grow_items(raw)

    def _set_liked_rows(self, rows: np.ndarray, liked: sp.csr_matrix) -> None:
        super()._set_liked_rows(rows, liked)
        self._derived = None

    def add_items(self, items: Sequence[Any], vectors: np.ndarray) -> np.ndarray:
        """Append new items (raw ids and their vectors) to the catalogue; they have no users yet, so
        their beta is 0 (no translation). Returns their column indices."""
        cols = super().add_items(items, vectors)
        self._derived = None
        return cols

    # ------------------------------------------------------------------ retrieval: the pair scores
    def _query_width(self) -> int:
        """``[u, alpha_u]``: 2d."""
        return 2 * int(self._fitted()[1].shape[1])

    def _user_queries(self, uids: np.ndarray) -> np.ndarray:
        """``[u, alpha_u]`` of the users ``uids``, float32, shape (n, 2d)."""
        user = self._fitted()[0]
        alpha = self._translations()[0]
        idx = torch.from_numpy(np.asarray(uids, dtype=np.int64)).to(user.device)
        return torch.cat([user.index_select(0, idx), alpha.index_select(0, idx)], 1).cpu().numpy()

    def _query_scores(self, q: np.ndarray) -> np.ndarray:
        """``-||u + alpha_u * beta_i - v_i||^2`` of every item for each query ``[u, alpha_u]``."""
        user, item = self._fitted()
        d = item.shape[1]
        qt = torch.from_numpy(np.ascontiguousarray(q)).to(device=user.device, dtype=user.dtype)
        return transcf_scores(qt[:, :d], qt[:, d:], self._translations()[2]).cpu().numpy()

    def scorer(self) -> Scorer:
        """The pair scores for :mod:`metricrec.metrics`: ``scorer(users) -> (len(users), n_items)``
        tensor, higher is better (ranking exactly as :meth:`recommend`)."""
        user = self._fitted()[0]
        alpha, _, feats = self._translations()
        return pair_scorer(user, alpha, feats)

    # ------------------------------------------------------------------ fold-in: queries, not table rows
    def fold_in_rows(self, rows: sp.spmatrix, *, epochs: int | None = None) -> torch.Tensor:
        """Queries for the users of ``rows`` (their liked items), trained against the frozen items.

        The user vectors are fitted on TransCF's loss with the items and their beta fixed (see
        :meth:`~metricrec.models.fold_in.FoldInMixin.fold_in_rows` for ``rows`` and ``epochs``);
        alpha_u is the mean of each row's item vectors.

        Returns
        -------
        torch.Tensor, shape (n, 2d), on the model's device
            ``[u, alpha_u]`` per row: what :meth:`recommend_vectors` ranks (``recalculate_user`` and
            :meth:`fold_in` return the same).
        """
        user = super().fold_in_rows(rows, epochs=epochs)
        item = self._fitted()[1]
        alpha = Neighbourhoods(rows, item.device, item.dtype).user_means(item)
        return torch.cat([user, alpha], 1)

    def partial_fit_users(self, users: Sequence[Any], liked: Sequence[Sequence[Any]] | sp.spmatrix, *,
                          epochs: int | None = None) -> np.ndarray:
        """Fold in the given raw users from their liked items and keep them (vectors and liked rows):
        known users are refitted, unknown ones appended; alpha and beta are then recomputed. Returns
        their row indices."""
        rows = liked if sp.issparse(liked) else self.liked_matrix(liked)
        if rows.shape[0] != len(users):
            raise DataError(f"{len(users)} users but {rows.shape[0]} rows of liked items")
        vectors = super().fold_in_rows(rows, epochs=epochs)  # the user vectors alone
        index = self._grow_users(list(users))
        self._user[torch.from_numpy(index).to(self._user.device)] = vectors
        self._set_liked_rows(index, sp.csr_matrix(rows))
        return index

    # ------------------------------------------------------------------ persistence
    def _load_extra(self, arrays: dict[str, np.ndarray], meta: dict[str, Any], path: Any) -> None:
        """Nothing besides CML's arrays: the translations are recomputed from the saved positives,
        which a TransCF file must therefore hold."""
        if self.user_items is None:
            raise ModelFormatError(f"{path}: a TransCF model needs its training positives (user_items.*), "
                                   "its translations are built from them")
        self._derived = None
