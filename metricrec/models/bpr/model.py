"""`BPR`: matrix factorisation trained with Bayesian Personalised Ranking."""

from __future__ import annotations

from typing import Any

import scipy.sparse as sp
import torch

from ...training.backends import TORCH
from ..base import EmbeddingRecommender
from .config import BPRConfig
from .step import BPRStep

__all__ = ["BPR"]


class BPR(EmbeddingRecommender):
    """BPR matrix factorisation (Rendle et al., UAI 2009); scores are inner products.

    Parameters and attributes as :class:`~metricrec.models.base.EmbeddingRecommender`, with a
    :class:`BPRConfig`; fold-in trains new users on the BPR loss against the frozen items.
    """

    config_class = BPRConfig
    model_name = "BPR"
    distance = "dot"
    backends = (TORCH,)

    def _make_step(self, config: BPRConfig, user_emb: torch.Tensor, item_emb: torch.Tensor, train: sp.csr_matrix,
                   user_items: Any, backend: str, **fit_kw: Any) -> BPRStep:
        return BPRStep(config, user_emb, item_emb, backend)
