"""Settings shared by every embedding model: the training settings plus the table shape."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..limits import MAX_FACTORS, limit_problem
from ..training.config import TrainingConfig, check_choice, check_finite, check_positive_int
from .init import INITS

__all__ = ["EmbeddingConfig", "MetricSpaceConfig", "AdaptiveMetricConfig"]


@dataclass(frozen=True)
class EmbeddingConfig(TrainingConfig):
    """A :class:`~metricrec.training.config.TrainingConfig` plus the embedding tables' shape.

    Attributes
    ----------
    factors : int
        Embedding dimension d (default 100; CML 128: on citeulike-a 0.363 test Recall@50 over three
        seeds against 0.360 with 100, at ~10% more time per epoch; the same on ml-100k).
    init : {"spectral", "random"}
        Initial tables (:mod:`metricrec.models.init`): ``"spectral"`` (CML's default) starts from a
        truncated SVD of the training matrix mapped into the ball -- valid Recall@50 of 0.49
        (ml-100k) and 0.30 (citeulike-a) before the first epoch, +0.01 after 15 epochs on
        citeulike-a --; ``"random"`` (the default here) from a seeded normal.
    init_std : float or None
        Std of the normal initialisation (default ``1 / sqrt(factors)``).
    """

    factors: int = 100
    init: str = "random"
    init_std: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int(self, "factors")
        if self.factors > MAX_FACTORS:  # the loader's bound (metricrec.limits): never train what it refuses
            raise ConfigError(limit_problem("factors", self.factors, 1, MAX_FACTORS) + " (the widest embedding a "
                              "model file may hold)")
        check_choice(self, "init", INITS)
        if self.init_std is not None and (not check_finite(self.init_std) or not self.init_std > 0):
            raise ConfigError(f"init_std must be > 0, got {self.init_std!r}")


@dataclass(frozen=True)
class MetricSpaceConfig(EmbeddingConfig):
    """An :class:`EmbeddingConfig` in CML's space, the base of the metric models' configs: the spectral
    start, every row in the unit ball, one warm-up epoch, validation of 1,000 users every 5 epochs."""

    warmup_epochs: float = 1.0
    valid_users: int | None = 1000
    eval_every: int = 5
    init: str = "spectral"
    max_norm: float | None = 1.0


@dataclass(frozen=True)
class AdaptiveMetricConfig(MetricSpaceConfig):
    """A :class:`MetricSpaceConfig` trained on CML's adaptive budget (:mod:`metricrec.training.budget`):
    at most 60 epochs, a first decay horizon of 20, peak rate 0.3 (chosen by the leave-one-set-out
    rules of ``benchmarks/rules.py``), validation grown to about 5,000 pairs."""

    epochs: int = 60
    horizon_epochs: int | None = 20
    learning_rate: float = 0.3
    lr_schedule: str = "adaptive"
    valid_pairs: int | None = 5000
