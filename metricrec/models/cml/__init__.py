"""Collaborative Metric Learning: the model, its config, reference losses and training steps.

``CML`` is imported on first use (PEP 562), so reading :class:`CMLConfig` (the CLI's flag defaults)
does not import torch."""

from __future__ import annotations

from ..lazy import lazy_class
from .config import CMLConfig

__all__ = ["CML", "CMLConfig"]


__getattr__ = lazy_class(__name__, "CML")
