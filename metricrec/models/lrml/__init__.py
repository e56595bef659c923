"""LRML: Latent Relational Metric Learning via memory-based attention (Tay, Tuan and Hui, WWW 2018).

CML's metric space with a relation vector per user-item pair read from a memory of key/value slots
by attention over the pair's joint embedding: a config (:mod:`.config`), a training step
(:mod:`.step`, gradients by autograd on the batch's rows) and the model class (:mod:`.model`), which
saves and restores the memory beside the tables and ranks the pair scores.

``LRML`` is imported on first use (PEP 562), so reading :class:`LRMLConfig` does not import torch.
"""

from __future__ import annotations

from ..lazy import lazy_class
from .config import LRMLConfig

__all__ = ["LRML", "LRMLConfig"]


__getattr__ = lazy_class(__name__, "LRML")
