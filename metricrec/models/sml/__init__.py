"""SML: Symmetric Metric Learning with adaptive margins (Li et al., AAAI 2020).

CML's metric space trained with a user-centric and an item-centric hinge whose margins are learned
per user and per item: a config (:mod:`.config`), a training step with hand-written gradients
(:mod:`.step`) and the model class (:mod:`.model`), which adds the margins to what
:class:`~metricrec.models.base.EmbeddingRecommender` saves and restores.

``SML`` is imported on first use (PEP 562), so reading :class:`SMLConfig` (the CLI's flag defaults)
does not import torch.
"""

from __future__ import annotations

from ..lazy import lazy_class
from .config import SMLConfig

__all__ = ["SML", "SMLConfig"]


__getattr__ = lazy_class(__name__, "SML")
