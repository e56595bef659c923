"""`BPR`: matrix factorisation trained with Bayesian Personalised Ranking."""

from __future__ import annotations

from typing import Any

import scipy.sparse as sp

from ...training.backends import TORCH
from ..base import EmbeddingRecommender
from .config import BPRConfig
from .step import BPRStep

__all__ = ["BPR"]


class BPR(EmbeddingRecommender):
    """BPR matrix factorisation (Rendle et al., UAI 2009); scores are inner products.

    Parameters and attributes as :class:`~metricrec.models.base.EmbeddingRecommender`, with a
    :class:`BPRConfig`. It has no fold-in (``recommend(..., recalculate_user=True)`` is refused).
    """

    config_class = BPRConfig
    model_name = "BPR"
    distance = "dot"
    backends = (TORCH,)

    def _make_step(self, train: sp.csr_matrix, user_items: Any, backend: str, **fit_kw: Any) -> BPRStep:
        return BPRStep(self.config, self._user, self._item, backend)
