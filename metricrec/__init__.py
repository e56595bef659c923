"""metricrec: Collaborative Metric Learning recommenders on PyTorch.

The public names below are imported on first use (PEP 562), so ``import metricrec`` -- and every
``metricrec`` command that does not train or load a model, ``--version`` and ``--help`` among them --
does not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name -> the module that defines it
_LAZY = {
    "CML": ".models.cml.model", "CMLConfig": ".models.cml.config", "DataWarning": ".data.interactions",
    "Features": ".data.interactions", "Interactions": ".data.interactions", "Split": ".data.splits",
}

__all__ = ["CML", "CMLConfig", "DataWarning", "Features", "Interactions", "Split", "__version__"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'metricrec' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
