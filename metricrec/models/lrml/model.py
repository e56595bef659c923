"""`LRML`: Latent Relational Metric Learning via memory-based attention (Tay, Tuan and Hui, WWW 2018)."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from ...metrics import Scorer
from ...serialization import ModelFormatError
from ...training.backends import NUMBA, TORCH
from ..base import EmbeddingRecommender
from .config import LRMLConfig
from .step import LRMLStep, lrml_scores, pair_scorer

__all__ = ["LRML"]


class LRML(EmbeddingRecommender):
    """Latent Relational Metric Learning (Tay, Tuan and Hui, WWW 2018).

    CML's space with a relation vector per user-item pair: user u is translated by
    ``r = softmax(K (u * v)) @ M``, read by attention from a memory of N key/value slots, before it
    is compared with item v; the score is ``-||u + r - v||^2`` (or ``-||u + r - v||_1``,
    ``metric="l1"``; :mod:`metricrec.models.lrml.step`). Parameters and attributes as
    :class:`~metricrec.models.base.EmbeddingRecommender`, with an :class:`LRMLConfig`.

    The score depends on the pair, so retrieval ranks the model's own scores
    (:attr:`custom_user_scores`): a user's query is its vector u, and exact top-N is a pass over the
    catalogue with the attention of every (user, item) pair; ``approximate=True`` is refused.
    ``similar_items`` and ``similar_users`` stay plain Euclidean neighbours in the tables. Fold-in
    trains new users against the frozen items and memory.

    Attributes
    ----------
    memory_keys, memory_values : numpy.ndarray, shape (memory_slots, d)
        K and M of the memory; saved with the model and restored with the best epoch's tables.
    """

    config_class = LRMLConfig
    model_name = "LRML"
    distance = "euclidean"
    backends = (TORCH, NUMBA)
    custom_user_scores = True
    config: LRMLConfig

    def __init__(self, config: LRMLConfig | None = None, **kw: Any) -> None:
        super().__init__(config, **kw)
        self._keys: torch.Tensor | None = None
        self._memory: torch.Tensor | None = None

    # ------------------------------------------------------------------ the memory: parameters beside the tables
    def _init_tables(self, n_users: int, n_items: int, train: sp.csr_matrix | None = None) -> None:
        super()._init_tables(n_users, n_items, train=train)
        cfg = self.config
        user = self._fitted()[0]
        std = cfg.memory_init_std if cfg.memory_init_std is not None else 1.0 / np.sqrt(cfg.factors)
        gen = torch.Generator().manual_seed(cfg.seed + 7)  # its own stream: the tables' start is unchanged
        shape = (cfg.memory_slots, cfg.factors)
        self._keys = (std * torch.randn(shape, generator=gen)).to(device=user.device, dtype=user.dtype)
        self._memory = (std * torch.randn(shape, generator=gen)).to(device=user.device, dtype=user.dtype)

    def _make_step(self, config: LRMLConfig, user_emb: torch.Tensor, item_emb: torch.Tensor, train: sp.csr_matrix,
                   user_items: Any, backend: str, **fit_kw: Any) -> LRMLStep:
        if fit_kw:
            raise TypeError(f"LRML.fit got unexpected keyword arguments: {', '.join(sorted(fit_kw))}")
        # the model's own user table: the memory trains with it; a fold-in's new users: frozen memory
        own = user_emb is self._user
        return LRMLStep(config, user_emb, item_emb, self._keys, self._memory, backend, train_memory=own)

    def _adopt(self, step: LRMLStep) -> None:
        if step.train_memory:
            self._keys, self._memory = step.keys, step.memory

    @property
    def memory_keys(self) -> np.ndarray:
        """K, shape (memory_slots, d), as numpy (on CPU)."""
        self._fitted()
        return self._keys.detach().cpu().numpy()

    @property
    def memory_values(self) -> np.ndarray:
        """M, shape (memory_slots, d), as numpy (on CPU)."""
        self._fitted()
        return self._memory.detach().cpu().numpy()

    # ------------------------------------------------------------------ retrieval: the pair scores
    def _query_scores(self, q: np.ndarray) -> np.ndarray:
        """``-s(u, v)`` of every item for each query user vector, each pair with its own relation."""
        user, item = self._fitted()
        qt = torch.from_numpy(np.ascontiguousarray(q)).to(device=user.device, dtype=user.dtype)
        return lrml_scores(qt, item, self._keys, self._memory, self.config.metric).cpu().numpy()

    def scorer(self) -> Scorer:
        """The pair scores for :mod:`metricrec.metrics`: ``scorer(users) -> (len(users), n_items)``
        tensor, higher is better (ranking exactly as :meth:`recommend`)."""
        user, item = self._fitted()
        return pair_scorer(user, item, self._keys, self._memory, self.config.metric)

    # ------------------------------------------------------------------ persistence
    def _extra_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return {"memory_keys": self.memory_keys.astype(np.float32),
                "memory_values": self.memory_values.astype(np.float32)}, {}

    @classmethod
    def _expected_extra(cls, doc: dict[str, Any], config: LRMLConfig, where: Any) -> dict[str, tuple[int, ...]]:
        """LRML saves its memory's keys and values (checked before they are read)."""
        shape = (config.memory_slots, config.factors)
        return {"memory_keys": shape, "memory_values": shape}

    def _load_extra(self, arrays: dict[str, np.ndarray], meta: dict[str, Any], path: Any) -> None:
        loaded = []
        for name in ("memory_keys", "memory_values"):
            arr = np.asarray(arrays[name], dtype=np.float32)  # present, of the right shape: see _expected_extra
            if not np.all(np.isfinite(arr)):
                raise ModelFormatError(f"{path}: array {name!r} contains NaN or infinite values")
            loaded.append(torch.from_numpy(arr.copy()).to(self.device))
        self._keys, self._memory = loaded
