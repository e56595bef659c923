"""Train / valid / test splits, all deterministic given a seed.

Every split returns a :class:`Split` whose three parts share one id universe (same users, same items,
same features), so a model trained on ``split.train`` can be scored on ``split.valid``/``split.test``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from .interactions import Interactions

__all__ = ["Split"]


@dataclass(frozen=True)
class Split:
    """Three disjoint parts of one data set over the same users and items.

    Attributes
    ----------
    train, valid, test : Interactions
        Same ``user_ids``, ``item_ids`` and features; disjoint (user, item) pairs.
    meta : mapping
        How the split was made (``method``, ``seed``, ratios, counts of dropped pairs, ...).
    """

    train: Interactions
    valid: Interactions
    test: Interactions
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("valid", "test"):
            part = getattr(self, name)
            if part.shape != self.train.shape:
                raise ValueError(f"split part '{name}' has shape {part.shape}, train has {self.train.shape}")

    def sizes(self) -> dict[str, int]:
        """Number of (user, item) pairs in each part."""
        return {"train": self.train.nnz, "valid": self.valid.nnz, "test": self.test.nnz}
