"""`SFCML`: Sampling-Free Collaborative Metric Learning (Bao et al., IEEE TPAMI 2023)."""

from __future__ import annotations

from typing import Any

import scipy.sparse as sp
import torch

from ...training.backends import NUMBA, TORCH
from ..base import EmbeddingRecommender
from .config import SFCMLConfig
from .step import SFCMLStep

__all__ = ["SFCML"]


class SFCML(EmbeddingRecommender):
    """Sampling-Free Collaborative Metric Learning (Bao, Xu, Yang, Cao and Huang, TPAMI 2023).

    CML's metric space with the margin loss over *all* negatives: every positive pair (u, i) is
    pulled towards ``d(u,j) - d(u,i) = m`` for every item j the user has not interacted with,
    through the square loss, whose sums over all items reduce to moments of the item table
    (:mod:`metricrec.models.sfcml.step`); no negatives are sampled. Scores are negative squared
    Euclidean distances, as CML's (``recommend`` and ``similar_items`` come from the base).
    Parameters and attributes as :class:`~metricrec.models.base.EmbeddingRecommender`, with an
    :class:`SFCMLConfig`; fold-in trains new users on the same loss against the frozen items. On
    the CPU the step runs as a compiled numba kernel where numba is installed (``kernel="auto"``).

    Examples
    --------
    >>> model = SFCML(margin=1.0, show_progress=False)          # doctest: +SKIP
    >>> model.fit(split.train, valid=split.valid)                # doctest: +SKIP
    >>> ids, scores = model.recommend(0, split.train.matrix[0])  # doctest: +SKIP
    """

    config_class = SFCMLConfig
    model_name = "SFCML"
    distance = "euclidean"
    backends = (TORCH, NUMBA)
    config: SFCMLConfig

    def _make_step(self, config: SFCMLConfig, user_emb: torch.Tensor, item_emb: torch.Tensor, train: sp.csr_matrix,
                   user_items: Any, backend: str, **fit_kw: Any) -> SFCMLStep:
        if fit_kw:
            raise TypeError(f"SFCML.fit got unexpected keyword arguments: {', '.join(sorted(fit_kw))}")
        # the model's own user table trains the items too; any other (a fold-in's new users) does not
        return SFCMLStep(config, user_emb, item_emb, train, backend, train_items=user_emb is self._user)
