"""SFCML: Sampling-Free Collaborative Metric Learning (Bao et al., IEEE TPAMI 2023).

CML's metric space trained on the square loss over every (positive, negative) pair of a user, with
no negative sampling: a config (:mod:`.config`), a training step whose sums over all items reduce to
moments of the item table, with hand-written gradients (:mod:`.step`), and the model class
(:mod:`.model`).

``SFCML`` is imported on first use (PEP 562), so reading :class:`SFCMLConfig` (the CLI's flag
defaults) does not import torch.
"""

from __future__ import annotations

from ..lazy import lazy_class
from .config import SFCMLConfig

__all__ = ["SFCML", "SFCMLConfig"]


__getattr__ = lazy_class(__name__, "SFCML")
