"""BPR matrix factorisation (Rendle et al., UAI 2009): a second embedding model, for comparison.

It is what adding a model to metricrec takes: a config (:mod:`.config`), a training step
(:mod:`.step`) and a ten-line class (:mod:`.model`); fitting, retrieval, ids and persistence come
from :class:`~metricrec.models.base.EmbeddingRecommender`.

``BPR`` is imported on first use (PEP 562), so reading :class:`BPRConfig` (the CLI's flag defaults)
does not import torch.
"""

from __future__ import annotations

from ..lazy import lazy_class
from .config import BPRConfig

__all__ = ["BPR", "BPRConfig"]


__getattr__ = lazy_class(__name__, "BPR")
