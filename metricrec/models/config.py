"""Settings shared by every embedding model: the training settings plus the table shape."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..training.config import TrainingConfig, check_finite, check_positive_int

__all__ = ["EmbeddingConfig"]


@dataclass(frozen=True)
class EmbeddingConfig(TrainingConfig):
    """A :class:`~metricrec.training.config.TrainingConfig` plus the embedding tables' shape.

    Attributes
    ----------
    factors : int
        Embedding dimension d (default 100).
    init_std : float or None
        Std of the normal initialisation (default ``1 / sqrt(factors)``).
    """

    factors: int = 100
    init_std: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int(self, "factors")
        if self.init_std is not None and (not check_finite(self.init_std) or not self.init_std > 0):
            raise ConfigError(f"init_std must be > 0, got {self.init_std!r}")
