"""BPR's hyperparameters."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import ConfigError
from ...training.config import check_finite
from ..config import EmbeddingConfig

__all__ = ["BPRConfig"]


@dataclass(frozen=True)
class BPRConfig(EmbeddingConfig):
    """A :class:`~metricrec.models.config.EmbeddingConfig` with BPR's defaults.

    Attributes
    ----------
    regularization : float
        L2 weight on the rows of each triple (user, positive, negative), as implicit's BPR.
    n_negatives : int
        One sampled negative per positive (default 1), the plain BPR triple.
    negative_group : int
        Independent draws (default 1).
    learning_rate : float
        Default 0.05 (AdaGrad).
    """

    n_negatives: int = 1
    negative_group: int = 1
    learning_rate: float = 0.05
    regularization: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        if not check_finite(self.regularization) or self.regularization < 0:
            raise ConfigError(f"regularization must be >= 0, got {self.regularization!r}")
