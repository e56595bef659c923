"""The training settings every embedding model shares, as a frozen dataclass.

Model configs derive from :class:`TrainingConfig` (through
:class:`metricrec.models.base.EmbeddingConfig`) and add their own fields; the whole config is
saved flat, as one JSON object, next to the weights.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping, TypeVar

from ..errors import ConfigError

__all__ = ["TrainingConfig", "OPTIMIZERS", "SAMPLERS", "check_finite", "check_positive_int", "check_choice"]

OPTIMIZERS = ("adagrad", "adam")
SAMPLERS = ("uniform", "popularity")

C = TypeVar("C", bound="TrainingConfig")


@dataclass(frozen=True)
class TrainingConfig:
    """How a model is trained: epochs, batches, negatives, optimiser, early stopping.

    Attributes
    ----------
    epochs : int
        Maximum number of epochs.
    patience : int
        Early stopping: epochs without a better valid Recall@50 before stopping (0: never stop early).
    batch_size : int or None
        Positive pairs per step. None: about an eighth of the training pairs, between 1,000 and
        50,000 (:meth:`resolved_batch_size`).
    learning_rate : float
    optimizer : {"adagrad", "adam"}
        Row-sparse optimiser of the embedding tables (:mod:`metricrec.training.optim`).
    n_negatives : int
        Negatives sampled per positive pair.
    negative_group : int
        Consecutive positives sharing one negative draw (1: independent draws; each row still never
        sees its own positives).
    sampler : {"uniform", "popularity"}
    sampler_alpha : float
        Exponent of the popularity sampler.
    max_norm : float or None
        Radius of the ball the rows are projected into after every update (None: no bound).
    seed : int
    valid_users : int or None
        Validation users ranked after each epoch for early stopping: a fixed, seeded sample of this
        many users with a validation item when there are more (default 2,000; None: all). The full
        metric set on all users is computed once, at the end, by whoever reports it.
    eval_every : int
        Validate every this many epochs (default 1); patience still counts epochs.
    """

    epochs: int = 100
    patience: int = 10
    batch_size: int | None = None
    learning_rate: float = 0.1
    optimizer: str = "adagrad"
    n_negatives: int = 10
    negative_group: int = 16
    sampler: str = "uniform"
    sampler_alpha: float = 0.75
    max_norm: float | None = None
    seed: int = 0
    valid_users: int | None = 2000
    eval_every: int = 1

    def __post_init__(self) -> None:
        check_positive_int(self, "epochs", "n_negatives", "negative_group", "eval_every")
        if self.valid_users is not None:
            check_positive_int(self, "valid_users")
        if self.batch_size is not None:
            check_positive_int(self, "batch_size")
        for name in ("patience", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")
        if not check_finite(self.learning_rate) or not self.learning_rate > 0:
            raise ConfigError(f"learning_rate must be a positive number, got {self.learning_rate!r}")
        if not check_finite(self.sampler_alpha):
            raise ConfigError(f"sampler_alpha must be a finite number, got {self.sampler_alpha!r}")
        if self.max_norm is not None and (not check_finite(self.max_norm) or not self.max_norm > 0):
            raise ConfigError(f"max_norm must be > 0 or None, got {self.max_norm!r}")
        check_choice(self, "optimizer", OPTIMIZERS)
        check_choice(self, "sampler", SAMPLERS)

    def resolved_batch_size(self, n_pairs: int, n_rows: int = 0) -> int:
        """The batch size used for ``n_pairs`` training pairs over ``n_rows`` table rows (users +
        items): ``batch_size``, or the default rule ``min(max(1000, n_pairs // 8), max(50000, 5 * n_rows))``.

        An eighth of the pairs, at least 1,000, capped at 50,000 -- or at five times the rows when
        the tables are larger: the covariance term and the optimiser pay per touched row, and rows
        touched per pair grow with the tables at a fixed batch (1.21 at the ML-20M shape against 0.19
        at ML-1M with 50,000), so only a cap that grows with them keeps the cost per pair flat
        (benchmarks/results/scale.md). Every data set up to about 10,000 rows (ml-100k, ML-1M,
        citeulike-a) gets the same batch as under the former fixed cap of 50,000.
        """
        if self.batch_size is not None:
            return self.batch_size
        return int(min(max(1_000, n_pairs // 8), max(50_000, 5 * int(n_rows))))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        """Inverse of :meth:`to_dict`; unknown keys are an error (a foreign or newer file)."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"a {cls.__name__} must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(map(str, set(data) - names))
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} keys: {', '.join(unknown)}")
        return cls(**dict(data))

    def replace(self: C, **changes: Any) -> C:
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)


def check_finite(value: Any) -> bool:
    """True for a real number (not a bool or a string), neither NaN nor infinite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_positive_int(cfg: Any, *names: str) -> None:
    """Raise :class:`ConfigError` unless every named field is an int >= 1."""
    for name in names:
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def check_choice(cfg: Any, name: str, choices: tuple[str, ...]) -> None:
    """Raise :class:`ConfigError` unless the field is one of ``choices``."""
    value = getattr(cfg, name)
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
