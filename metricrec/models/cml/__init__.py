"""Collaborative Metric Learning: the model, its config, reference losses and training steps.

``CML`` is imported on first use (PEP 562), so reading :class:`CMLConfig` (the CLI's flag defaults)
does not import torch."""

from __future__ import annotations

from typing import Any

from .config import CMLConfig

__all__ = ["CML", "CMLConfig"]


def __getattr__(name: str) -> Any:
    if name == "CML":
        from .model import CML

        return CML
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
