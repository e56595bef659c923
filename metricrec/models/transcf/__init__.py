"""TransCF: Collaborative Translational Metric Learning (Park, Kim, Xie and Yu, ICDM 2018).

CML's metric space with a translation vector per user-item pair built from the two neighbourhoods
(the mean vector of the user's items times the mean vector of the item's users): a config
(:mod:`.config`), a training step with hand-written gradients (:mod:`.step`) and the model class
(:mod:`.model`), whose retrieval ranks the pair scores.

``TransCF`` is imported on first use (PEP 562), so reading :class:`TransCFConfig` does not import torch.
"""

from __future__ import annotations

from ..lazy import lazy_class
from .config import TransCFConfig

__all__ = ["TransCF", "TransCFConfig"]


__getattr__ = lazy_class(__name__, "TransCF")
