"""BPR matrix factorisation (Rendle et al., UAI 2009): a second embedding model, for comparison.

It is what adding a model to metricrec takes: a config (:mod:`.config`), a training step
(:mod:`.step`) and a ten-line class (:mod:`.model`); fitting, retrieval, ids and persistence come
from :class:`~metricrec.models.base.EmbeddingRecommender`.
"""

from .config import BPRConfig
from .model import BPR

__all__ = ["BPR", "BPRConfig"]
