"""Models: embedding recommenders (the shared base) and the models built on it.

:func:`load_model` reads any saved model; :data:`MODELS` lists the model classes by saved name.
"""

from .base import MODELS, EmbeddingRecommender, load_model
from .bpr import BPR, BPRConfig
from .cml import CML, CMLConfig

__all__ = ["BPR", "BPRConfig", "CML", "CMLConfig", "EmbeddingRecommender", "MODELS", "load_model"]
