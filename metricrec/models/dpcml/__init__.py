"""DPCML: Diversity-Promoting Collaborative Metric Learning (Bao et al., NeurIPS 2022).

CML's metric space with C vectors per user, a user scoring an item by its nearest vector, trained
on CML's hinge with that distance and the paper's diversity control regulariser: a config
(:mod:`.config`), a training step with hand-written gradients (:mod:`.step`) and the model class
(:mod:`.model`), whose user rows hold the C vectors side by side.

``DPCML`` is imported on first use (PEP 562), so reading :class:`DPCMLConfig` does not import torch.
"""

from __future__ import annotations

from ..lazy import lazy_class
from .config import DPCMLConfig

__all__ = ["DPCML", "DPCMLConfig"]


__getattr__ = lazy_class(__name__, "DPCML")
