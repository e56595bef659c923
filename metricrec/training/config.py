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
from .schedule import SCHEDULES

__all__ = ["TrainingConfig", "OPTIMIZERS", "SAMPLERS", "check_finite", "check_positive_int", "check_choice"]

OPTIMIZERS = ("adagrad", "adam")
SAMPLERS = ("uniform", "popularity")

C = TypeVar("C", bound="TrainingConfig")

#: Seconds a collective of data-parallel training (:mod:`metricrec.training.distributed`) waits for
#: the other ranks before the job is given up. Rank 0's validation pass runs while the others wait
#: at the next collective, so this must exceed one validation.
DEFAULT_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class TrainingConfig:
    """How a model is trained: epochs, batches, negatives, optimiser, early stopping.

    The defaults here are the generic ones (a constant rate, validation every epoch); CML's own,
    chosen for time to quality, are on :class:`~metricrec.models.cml.config.CMLConfig` and the
    measurements behind them below and in ``benchmarks/results/convergence.md``.

    Attributes
    ----------
    epochs : int
        Maximum number of epochs (default 100; CML 20), and the length of the learning-rate schedule: the
        rate decays to zero over them, so the last epochs are the best and a longer run is a
        slower, more thorough one (citeulike-a: valid Recall@50 0.360 after 20, 0.361 after 25;
        the former constant rate needed 35-48 epochs for 0.338 at the old defaults).
    patience : int
        Early stopping: epochs without a better valid Recall@50 before stopping (0: never stop early).
        Not used by the ``"adaptive"`` schedule, whose own rule (:mod:`metricrec.training.budget`)
        decides when training is done.
    batch_size : int or None
        Positive pairs per step. None: about an eighth of the training pairs, between 1,000 and
        50,000 (:meth:`resolved_batch_size`).
    learning_rate : float
        Peak rate of the schedule (default 0.1; CML 0.3, chosen across the development sets with the
        adaptive budget: benchmarks/results/rules.md).
    lr_schedule : {"adaptive", "linear", "cosine", "constant"}
        Multiplier of the rate per step (:mod:`metricrec.training.schedule`): linear warm-up over
        ``warmup_epochs``, then ``"adaptive"`` (CML's default, :mod:`metricrec.training.budget`): a
        linear decay to ``lr_floor`` over ``epochs`` that validation extends while it gains beyond
        noise, then the floor until an epoch fails to improve; ``"linear"``: decay to zero at the end
        of ``epochs``; half a cosine (no better); or ``"constant"`` (the default here): the peak rate
        throughout.
    horizon_epochs : int or None
        ``"adaptive"`` only: the first horizon of the decay, at most ``epochs`` (None: ``epochs``;
        CML 20). Validation extends or shortens it; ``epochs`` stays the most the run takes.
    lr_floor : float in [0, 1)
        ``"adaptive"`` only: the multiplier of the peak rate the decay ends at and the tail keeps.
    budget_z : float
        ``"adaptive"`` only: paired standard errors a validation gain must exceed to extend the
        decay (:func:`metricrec.training.budget.paired_gain`).
    decay_knots : tuple of (epoch, multiplier) pairs
        ``"adaptive"`` only: replay this decay instead of letting validation decide -- the
        piecewise-linear multiplier through these points (epochs from 0, ascending; multipliers
        in [0, 1]), ``lr_floor`` after the last. What ``metricrec train --final`` uses to train on
        every interaction with the schedule a validated run found (default ``()``: decide).
    warmup_epochs : float
        Epochs of linear warm-up (default 0; CML 1): AdaGrad's first steps are its largest.
    optimizer : {"adagrad", "adam"}
        Row-sparse optimiser of the embedding tables (:mod:`metricrec.training.optim`).
    n_negatives : int or None
        U, negatives sampled per positive pair. None (default): from the catalogue's density,
        ``0.1 x items / positives per user`` within [3, 20] (:meth:`resolved_n_negatives`): 5 on
        ml-100k, 20 on citeulike-a.
    negative_group : int
        Consecutive positives sharing one negative draw (1: independent draws; each row still never
        sees its own positives).
    sampler : {"uniform", "popularity"}
    sampler_alpha : float
        Exponent of the popularity sampler.
    max_norm : float or None
        Radius of the ball the rows are projected into after every update (None: no bound).
    seed : int
    valid_pairs : int or None
        With ``valid_users``: the sample grows until it holds about this many validation pairs
        (None, the default here: no growth; CML 5,000). On sparse sets a user has one or two
        validation items, so 1,000 users are a noisy judge: on amazon-beauty (1.8 per user) the
        1,000-user sample picked an epoch 0.003 worse on test than 3,000 users did.
    valid_users : int or None
        Validation users ranked after each epoch for early stopping: a fixed, seeded sample of this
        many users with a validation item when there are more (default 2,000; CML 1,000; None: all). The full
        metric set on all users is computed once, at the end, by whoever reports it.
    eval_every : int
        Validate every this many epochs and after the last (default 1; CML 5); patience still counts
        epochs. With the decaying schedule the best epoch is nearly always one of the last, so
        validating every epoch bought nothing: with 5 and 1,000 users validation is ~5% of the
        wall time on citeulike-a (it was 65% with every epoch and all users).
    """

    epochs: int = 100
    patience: int = 10
    batch_size: int | None = None
    learning_rate: float = 0.1
    lr_schedule: str = "constant"
    warmup_epochs: float = 0.0
    optimizer: str = "adagrad"
    n_negatives: int | None = None
    negative_group: int = 16
    sampler: str = "uniform"
    sampler_alpha: float = 0.75
    max_norm: float | None = None
    seed: int = 0
    valid_users: int | None = 2000
    eval_every: int = 1
    valid_pairs: int | None = None
    horizon_epochs: int | None = None
    lr_floor: float = 0.05
    budget_z: float = 2.0
    decay_knots: tuple[tuple[float, float], ...] = ()

    def __post_init__(self) -> None:
        check_positive_int(self, "epochs", "negative_group", "eval_every")
        if self.n_negatives is not None:
            check_positive_int(self, "n_negatives")
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
        if not check_finite(self.warmup_epochs) or not self.warmup_epochs >= 0:
            raise ConfigError(f"warmup_epochs must be a number >= 0, got {self.warmup_epochs!r}")
        check_choice(self, "lr_schedule", SCHEDULES)
        self._check_budget()
        check_choice(self, "optimizer", OPTIMIZERS)
        check_choice(self, "sampler", SAMPLERS)

    def _check_budget(self) -> None:
        if self.horizon_epochs is not None:
            check_positive_int(self, "horizon_epochs")
        if self.valid_pairs is not None:
            check_positive_int(self, "valid_pairs")
        if not check_finite(self.lr_floor) or not 0 <= self.lr_floor < 1:
            raise ConfigError(f"lr_floor must be in [0, 1), got {self.lr_floor!r}")
        if not check_finite(self.budget_z) or not self.budget_z >= 0:
            raise ConfigError(f"budget_z must be a number >= 0, got {self.budget_z!r}")
        knots = self.decay_knots
        try:
            pairs = tuple((float(e), float(m)) for e, m in knots)
        except (TypeError, ValueError):
            raise ConfigError(f"decay_knots must be (epoch, multiplier) pairs, got {knots!r}") from None
        if pairs and (len(pairs) < 2 or pairs[0][0] != 0 or any(b[0] <= a[0] for a, b in zip(pairs, pairs[1:]))
                      or any(not (math.isfinite(e) and 0 <= m <= 1) for e, m in pairs)):
            raise ConfigError("decay_knots must start at epoch 0 and rise, with multipliers in [0, 1]; "
                              f"got {knots!r}")
        object.__setattr__(self, "decay_knots", pairs)  # a JSON list of lists comes back as tuples

    @property
    def adaptive(self) -> bool:
        """Whether validation decides the budget (``lr_schedule == "adaptive"``)."""
        return self.lr_schedule == "adaptive"

    def resolved_horizon(self) -> int:
        """The adaptive decay's first horizon: ``horizon_epochs`` (None: ``epochs``), at most ``epochs``."""
        return min(self.epochs, self.horizon_epochs if self.horizon_epochs is not None else self.epochs)

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

    def resolved_n_negatives(self, n_users: int, n_items: int, n_pairs: int) -> int:
        """U, the negatives drawn per positive: ``n_negatives``, or the default rule
        ``clip(round(0.1 * n_items / mean positives per user), 3, 20)``.

        Uniform negatives are sometimes items the user likes but has not been seen with; the hinge
        on the closest of U negatives then pushes exactly those away. The rule keeps the expected
        number of the user's own positives among the U draws, ``U * positives / n_items``, at 0.1,
        so the catalogue's density sets U: 5 on ml-100k (35 positives per user among 1,682 items),
        where U = 20 lost 0.07 of valid Recall@50 against 5, and the cap of 20 on citeulike-a (22
        among 16,980), where 20 beat 10 by 0.013 and 30 or 40 added nothing
        (benchmarks/results/convergence.md).
        """
        if self.n_negatives is not None:
            return self.n_negatives
        per_user = n_pairs / max(int(n_users), 1)
        return int(min(20, max(3, round(0.1 * n_items / max(per_user, 1e-12)))))

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
