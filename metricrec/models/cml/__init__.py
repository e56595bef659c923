"""Collaborative Metric Learning: the model, its config, reference losses and training steps."""

from .config import CMLConfig
from .model import CML

__all__ = ["CML", "CMLConfig"]
