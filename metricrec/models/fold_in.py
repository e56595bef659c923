"""Fold-in: vectors for new or changed users fitted against the frozen item table, all users at
once (one vectorised optimisation through the trainer, not a loop over users; or, for a model with
its own compiled fold-in such as CML's on the CPU, the same optimisation in one kernel call), and
catalogue updates (new users, new items)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp
import torch

from ..errors import DataError
from .retrieval import check_indices
from ..training.backends import resolve_backend
from ..training.optim import clip_rows
from ..training.trainer import Trainer

__all__ = ["FoldInMixin", "FOLD_IN_BATCHES", "FOLD_IN_EPOCHS"]

#: Epochs of a fold-in: passes over the new users' pairs in :data:`FOLD_IN_BATCHES` batches (about
#: 190 updates per user). On ml-100k (a model trained with margin 1.5, U = 5) the 942 users with a
#: training item, folded in this way, reached 0.994-1.005 of the test Recall@50 of their trained
#: vectors with 160-200 updates, 0.978-0.987 with 40-80, and a learning rate of 0.3 was worse
#: (0.94-0.98); benchmarks/results/recommend.md has the current figures.
FOLD_IN_EPOCHS = 12
#: Batches per fold-in epoch (each user takes about this many updates an epoch).
FOLD_IN_BATCHES = 16


class FoldInMixin:
    """Needs ``_fitted()``, ``config``, ``device``, ``kernel``, ``_make_step``, ``_fold_in_config``."""

    def fold_in_rows(self, rows: sp.spmatrix, *, epochs: int | None = None) -> torch.Tensor:
        """Fit one vector per row of ``rows`` (users' liked items) against the frozen items.

        Parameters
        ----------
        rows : scipy.sparse matrix, shape (n, n_items)
            Non-zero entries are the liked items. Every row needs at least one, and not all items.
        epochs : int, optional
            Default :data:`FOLD_IN_EPOCHS`.

        Returns
        -------
        torch.Tensor, shape (n, d), on the model's device
        """
        _, item = self._fitted()
        m = sp.csr_matrix(rows, dtype=np.float32, copy=True)
        m.eliminate_zeros()
        m.sum_duplicates()
        counts = np.diff(m.indptr)
        if m.shape[0] and counts.min() == 0:
            raise DataError(f"row {int(np.argmin(counts))} has no liked item: a user needs at least one to be folded in")
        if m.shape[0] and counts.max() >= item.shape[0]:
            raise DataError(f"row {int(np.argmax(counts))} likes every item: no negatives to learn from")
        user = self._fold_in_start(m, item)
        if m.shape[0] == 0:
            return user
        cfg = self._fold_in_config(FOLD_IN_EPOCHS if epochs is None else epochs)
        cfg = cfg.replace(batch_size=max(1, -(-m.nnz // FOLD_IN_BATCHES)))
        backend = resolve_backend(self.kernel, self.device, self.backends)
        if self._compiled_fold_in(m, user, item, cfg, backend):
            return user
        step = self._make_step(cfg, user, item, m, None, backend)
        trainer = Trainer(step, m, config=cfg, device=self.device, progress=False, verbose=False, frozen_items=True)
        for _ in range(cfg.epochs):
            trainer.run_epoch()
        return user

    def recalculate_user(self, liked_items: sp.spmatrix | Sequence[int] | np.ndarray, *,
                         epochs: int | None = None) -> np.ndarray:
        """Fit a vector for a user unseen in training, against the frozen item vectors.

        The user starts at the centroid of its items and is trained on the model's own loss (for
        CML: margin, U negatives, rank weight, unit ball) while the items stay fixed; many users at
        once: :meth:`fold_in_rows`.

        Parameters
        ----------
        liked_items : 1 x n_items sparse row or array of item indices
        epochs : int, optional

        Returns
        -------
        numpy.ndarray, shape (d,)
        """
        _, item = self._fitted()
        n_items = item.shape[0]
        if sp.issparse(liked_items):
            row = sp.csr_matrix(liked_items)
            if row.shape != (1, n_items):
                raise DataError(f"liked_items must be a 1 x {n_items} row, got shape {row.shape}")
        else:
            idx = np.unique(check_indices(liked_items, n_items, "liked_items"))
            row = sp.csr_matrix((np.ones(idx.size, np.float32), idx, [0, idx.size]), shape=(1, n_items))
        if row.nnz == 0 or not np.any(row.data):
            raise DataError("liked_items is empty: a user needs at least one item to be folded in")
        if np.count_nonzero(row.data) >= n_items:
            raise DataError("liked_items covers every item: no negatives to learn from")
        return self.fold_in_rows(row, epochs=epochs)[0].detach().cpu().numpy()

    def _compiled_fold_in(self, m: sp.csr_matrix, user: torch.Tensor, item: torch.Tensor, cfg: Any,
                          backend: str) -> bool:
        """Run the whole fold-in of ``m`` in place on ``user`` with a model's own compiled kernel, the
        trainer's optimisation in one call; False (the default) when the model has none for this
        configuration, and the trainer runs it."""
        return False

    def _fold_in_start(self, m: sp.csr_matrix, item: torch.Tensor) -> torch.Tensor:
        """Start at the centroid of each row's liked items (inside the ball)."""
        counts = np.maximum(np.diff(m.indptr), 1).astype(np.float32)
        avg = sp.diags(1.0 / counts) @ m
        start = torch.from_numpy(np.asarray(avg @ item.detach().cpu().numpy(), dtype=np.float32)).to(item.device)
        return clip_rows(start.contiguous(), self.config.max_norm)

    def fold_in(self, liked: Sequence[Sequence[Any]] | sp.spmatrix, *, epochs: int | None = None) -> np.ndarray:
        """Vectors for new users from their liked items (raw item ids, or a sparse matrix of rows).

        Parameters
        ----------
        liked : list of lists of raw item ids, or scipy.sparse matrix (n, n_items)
            Unknown raw ids raise :class:`~metricrec.errors.UnknownIdError` naming them.

        Returns
        -------
        numpy.ndarray, shape (n, d)
        """
        rows = liked if sp.issparse(liked) else self.liked_matrix(liked)
        return self.fold_in_rows(rows, epochs=epochs).detach().cpu().numpy()

    def liked_matrix(self, liked: Sequence[Sequence[Any]]) -> sp.csr_matrix:
        """(n, n_items) binary CSR of lists of raw item ids (through :attr:`item_map`)."""
        n_items = self._fitted()[1].shape[0]
        lengths = np.array([len(x) for x in liked], dtype=np.int64)
        flat = [x for row in liked for x in row]
        cols = self.item_index(flat) if flat else np.zeros(0, dtype=np.int64)
        m = sp.csr_matrix((np.ones(len(cols), np.float32), np.asarray(cols, dtype=np.int64),
                           np.concatenate([[0], np.cumsum(lengths)])), shape=(len(lengths), n_items))
        m.sum_duplicates()
        m.data[:] = 1.0
        return m

    def partial_fit_users(self, users: Sequence[Any], liked: Sequence[Sequence[Any]] | sp.spmatrix, *,
                          epochs: int | None = None) -> np.ndarray:
        """Fold in the given raw users from their liked items and keep them in the model: known
        users get new vectors and liked rows, unknown ones are appended. Returns their row indices."""
        rows = liked if sp.issparse(liked) else self.liked_matrix(liked)
        if rows.shape[0] != len(users):
            raise DataError(f"{len(users)} users but {rows.shape[0]} rows of liked items")
        vectors = self.fold_in_rows(rows, epochs=epochs)
        index = self._grow_users(list(users))
        self._user[torch.from_numpy(index).to(self._user.device)] = vectors
        self._set_liked_rows(index, sp.csr_matrix(rows))
        return index

    def add_items(self, items: Sequence[Any], vectors: np.ndarray) -> np.ndarray:
        """Append new items (raw ids and their vectors, e.g. from CML+F's features) to the catalogue so
        that they can be recommended. Returns their column indices."""
        _, item = self._fitted()
        v = np.asarray(vectors, dtype=np.float32)
        if v.shape != (len(items), item.shape[1]) or not np.all(np.isfinite(v)):
            raise DataError(f"vectors must be finite with shape ({len(items)}, {item.shape[1]}), got {v.shape}")
        cols = self._grow_items(list(items))
        self._item[torch.from_numpy(cols).to(item.device)] = clip_rows(torch.from_numpy(v).to(item.device),
                                                                       self.config.max_norm)
        self._item_sq = None
        return cols
