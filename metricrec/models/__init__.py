"""Models: embedding recommenders (the shared base) and the models built on it.

:func:`load_model` reads any saved model; :data:`MODELS` lists the model classes by saved name.
The names are imported on first use (PEP 562): configs can be read without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "MODELS": ".base", "EmbeddingRecommender": ".base", "load_model": ".base",
    "BPR": ".bpr", "BPRConfig": ".bpr", "CML": ".cml", "CMLConfig": ".cml", "SML": ".sml", "SMLConfig": ".sml",
    "DPCML": ".dpcml", "DPCMLConfig": ".dpcml", "SFCML": ".sfcml", "SFCMLConfig": ".sfcml",
    "TransCF": ".transcf", "TransCFConfig": ".transcf", "LRML": ".lrml", "LRMLConfig": ".lrml",
}

__all__ = ["BPR", "BPRConfig", "CML", "CMLConfig", "DPCML", "DPCMLConfig", "EmbeddingRecommender", "LRML", "LRMLConfig",
           "MODELS", "SFCML", "SFCMLConfig", "SML", "SMLConfig", "TransCF", "TransCFConfig", "load_model"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name], __name__), name)
