"""`SML`: Symmetric Metric Learning with adaptive margins (Li et al., AAAI 2020)."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from ...serialization import ModelFormatError
from ...training.backends import NUMBA, TORCH
from ..base import EmbeddingRecommender
from .config import SMLConfig
from .step import SMLStep

__all__ = ["SML"]


class SML(EmbeddingRecommender):
    """Symmetric Metric Learning with adaptive margins (Li et al., AAAI 2020).

    CML's metric space with a symmetric loss: a user is pulled nearer its positive items than its
    negatives by its own margin m_u, and each positive item nearer the user than the negative is to
    the item by the item's margin n_i (:mod:`metricrec.models.sml.step`). Scores are negative
    squared Euclidean distances, as CML's (ranking by Euclidean distance; ``recommend`` and
    ``similar_items`` come from the base). Parameters and attributes as
    :class:`~metricrec.models.base.EmbeddingRecommender`, with an :class:`SMLConfig`; fold-in trains
    new users (and margins of their own, which are not kept) against the frozen items and item margins.

    Attributes
    ----------
    user_margins, item_margins : numpy.ndarray, shapes (n_users,), (n_items,)
        The learned margins m_u and n_i, in ``[0, margin_max]``; saved with the model and restored
        with the best epoch's tables.
    """

    config_class = SMLConfig
    model_name = "SML"
    distance = "euclidean"
    backends = (TORCH, NUMBA)
    config: SMLConfig

    def __init__(self, config: SMLConfig | None = None, **kw: Any) -> None:
        super().__init__(config, **kw)
        self._user_margin: torch.Tensor | None = None
        self._item_margin: torch.Tensor | None = None

    # ------------------------------------------------------------------ margins: parameters beside the tables
    def _init_tables(self, n_users: int, n_items: int, train: sp.csr_matrix | None = None) -> None:
        super()._init_tables(n_users, n_items, train=train)
        self._user_margin = self._fresh_margins(n_users)
        self._item_margin = self._fresh_margins(n_items)

    def _fresh_margins(self, n: int) -> torch.Tensor:
        user = self._fitted()[0]
        return torch.full((n,), self.config.initial_margin, dtype=user.dtype, device=user.device)

    def _make_step(self, config: SMLConfig, user_emb: torch.Tensor, item_emb: torch.Tensor, train: sp.csr_matrix,
                   user_items: Any, backend: str, **fit_kw: Any) -> SMLStep:
        if fit_kw:
            raise TypeError(f"SML.fit got unexpected keyword arguments: {', '.join(sorted(fit_kw))}")
        # the model's own user table: its margins train with it; any other (a fold-in's new users):
        # margins of their own, and the item side (table and margins) stays as trained
        own = user_emb is self._user
        user_margin = self._user_margin if own else self._fresh_margins(user_emb.shape[0])
        return SMLStep(config, user_emb, item_emb, user_margin, self._item_margin, backend, train_item_margins=own)

    def _adopt(self, step: SMLStep) -> None:
        self._user_margin, self._item_margin = step.user_margin, step.item_margin

    def _grow_users(self, raw: list[Any]) -> np.ndarray:
        rows = super()._grow_users(raw)
        self._user_margin = self._grown_margins(self._user_margin, self._fitted()[0].shape[0])
        return rows

    def _grow_items(self, raw: list[Any]) -> np.ndarray:
        cols = super()._grow_items(raw)
        self._item_margin = self._grown_margins(self._item_margin, self._fitted()[1].shape[0])
        return cols

    def _grown_margins(self, margin: torch.Tensor | None, n: int) -> torch.Tensor:
        """``margin`` extended to ``n`` rows; new users or items start at the initial margin."""
        assert margin is not None  # set with the tables
        return torch.cat([margin, self._fresh_margins(n - margin.shape[0])]) if n > margin.shape[0] else margin

    @property
    def user_margins(self) -> np.ndarray:
        """m_u of every user, shape (n_users,), as numpy (on CPU)."""
        self._fitted()
        return self._user_margin.detach().cpu().numpy()

    @property
    def item_margins(self) -> np.ndarray:
        """n_i of every item, shape (n_items,), as numpy (on CPU)."""
        self._fitted()
        return self._item_margin.detach().cpu().numpy()

    # ------------------------------------------------------------------ persistence
    def _extra_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return {"user_margins": self.user_margins.astype(np.float32),
                "item_margins": self.item_margins.astype(np.float32)}, {}

    @classmethod
    def _expected_extra(cls, doc: dict[str, Any], config: SMLConfig, where: Any) -> dict[str, tuple[int, ...]]:
        """SML saves its two margin vectors (checked before they are read)."""
        return {"user_margins": (doc["n_users"],), "item_margins": (doc["n_items"],)}

    def _load_extra(self, arrays: dict[str, np.ndarray], meta: dict[str, Any], path: Any) -> None:
        bound = self.config.margin_max
        # the margins are float32 and clamped in float32: compared with l as the float32 they were clamped to
        # (float32(0.1) is above the float64 0.1; a margin at its bound must not be refused)
        top = np.float32(bound)
        margins = []
        for name in ("user_margins", "item_margins"):
            arr = np.asarray(arrays[name], dtype=np.float32)  # present, of the right shape: see _expected_extra
            if not np.all(np.isfinite(arr)) or (arr.size and (arr.min() < 0 or arr.max() > top)):
                raise ModelFormatError(f"{path}: array {name!r} must hold finite margins in [0, {bound:g}]")
            margins.append(torch.from_numpy(arr.copy()).to(self.device))
        self._user_margin, self._item_margin = margins
