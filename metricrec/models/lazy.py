"""The model packages' lazy class attribute (PEP 562): ``from metricrec.models.cml import CML`` imports
the model module (and torch) only then, so reading a package's config class -- the CLI's flag
defaults -- imports no torch."""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_class(package: str, name: str, module: str = ".model") -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that imports ``name`` from ``package + module`` on
    first use and raises AttributeError for anything else."""
    def __getattr__(attr: str) -> Any:
        if attr == name:
            return getattr(importlib.import_module(module, package), name)
        raise AttributeError(f"module {package!r} has no attribute {attr!r}")
    return __getattr__
