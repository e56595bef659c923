"""The CML hyperparameters as one frozen dataclass, saved next to the weights."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import ConfigError
from ...training.config import check_choice, check_finite
from ..config import EmbeddingConfig
from .losses import COV_FORMULAS

__all__ = ["CMLConfig"]


@dataclass(frozen=True)
class CMLConfig(EmbeddingConfig):
    """Hyperparameters of a CML model and its training (the shared fields are documented on
    :class:`~metricrec.models.config.EmbeddingConfig` and :class:`~metricrec.training.config.TrainingConfig`;
    CML's defaults are listed here).

    Defaults follow the paper (Hsieh et al., WWW 2017) where it is specific -- unit ball, WARP rank
    weight, U = 10 sampled negatives, AdaGrad, covariance regularisation -- and were tuned on the
    benchmarks in ``benchmarks/`` where it is not (margin, learning rate, batch size, lambda_c).

    Attributes
    ----------
    factors : int
        Embedding dimension d (default 100).
    margin : float
        m in ``[m + d(i,j)^2 - d(i,k)^2]_+``. Squared distances inside the unit ball lie in [0, 4]; margins
        of 1-2 work best (the authors' own example used 1.9).
    n_negatives : int
        U, negatives sampled per positive pair (default 10; 20 is common).
    use_rank_weight : bool
        WARP-style ``w_ij = log(floor(J*M/U) + 1)``; False gives the plain triplet loss.
    cov_weight : float
        lambda_c of the covariance regulariser (0 disables it).
    cov_formula : {"paper", "offdiag", "tf_signed"}
        See :func:`metricrec.losses.covariance_loss`.
    max_norm : float or None
        Radius of the ball the vectors are projected into after every update (None: no bound).
    optimizer : {"adagrad", "adam"}
    learning_rate : float
    batch_size : int or None
        Positive pairs per step. None (default): about an eighth of the training pairs, between
        1,000 and 50,000 -- tuned on the benchmarks: 5,000 was best on ml-100k (33k pairs), and on
        the ML-1M-shaped set (598k pairs) 50,000 matched 20,000 in valid Recall@50 at half the time
        per epoch.
    negative_group : int
        Consecutive positives sharing one negative draw (1 = independent draws per positive as in
        the paper; each row still never sees its own positives). Sharing cuts the cost of
        gathering negative vectors G-fold.
    sampler : {"uniform", "popularity"}
    sampler_alpha : float
        Exponent of the popularity sampler.
    epochs : int
        Maximum number of epochs.
    patience : int
        Early stopping: epochs without a better valid Recall@50 before stopping (0: never stop early).
    init_std : float or None
        Std of the normal initialisation (default ``1 / sqrt(factors)``).
    seed : int
    feature_weight : float
        lambda_f of the transformation regulariser ``lambda_f * sum_j ||f(x_j) - v_j||^2`` (CML+F,
        :mod:`metricrec.feature_reg`). 0 (the default) turns features off; give item features to
        ``CML.fit`` and a positive weight to turn them on. Recommended: 1.0
        (``metricrec.feature_reg.DEFAULT_FEATURE_WEIGHT``, what ``--item-features`` alone uses):
        best valid Recall@50 on citeulike-a tags among 0.1, 1, 3, 10 (10 over-smooths, 0.1 does
        nothing); on ml-100k genres a linear f with 10 was best, but no setting beat plain CML there
        (benchmarks/results/features*.md).
    feature_hidden : tuple of int
        Hidden widths of the feature MLP f (``()``: a linear map). Default (256,) -- one hidden
        layer, as the paper; a linear f is as good for a few dense-ish features such as genres.
    feature_dropout : float in [0, 1)
        Dropout after every hidden ReLU of f (default 0.5: on citeulike-a it beat 0.1 on valid
        Recall@50, 0.432 against 0.422, and on held-out cold items, 0.385 against 0.313 raw f(x)).
    feature_lr : float
        Adam learning rate of f (default 1e-3).
    init_from_features : bool
        Start item vectors (that have features) at f(x) of the untrained f instead of at random
        (default False).
    """

    margin: float = 1.5
    use_rank_weight: bool = True
    cov_weight: float = 1.0
    cov_formula: str = "paper"
    max_norm: float | None = 1.0
    feature_weight: float = 0.0
    feature_hidden: tuple[int, ...] = (256,)
    feature_dropout: float = 0.5
    feature_lr: float = 1e-3
    init_from_features: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.use_rank_weight, bool):
            raise ConfigError(f"use_rank_weight must be True or False, got {self.use_rank_weight!r}")
        if not check_finite(self.margin) or not self.margin > 0:
            raise ConfigError(f"margin must be a positive number, got {self.margin!r}")
        if not check_finite(self.cov_weight) or not self.cov_weight >= 0:
            raise ConfigError(f"cov_weight must be >= 0, got {self.cov_weight!r}")
        check_choice(self, "cov_formula", COV_FORMULAS)
        self._check_features()

    def _check_features(self) -> None:
        if not check_finite(self.feature_weight) or not self.feature_weight >= 0:
            raise ConfigError(f"feature_weight must be >= 0, got {self.feature_weight!r}")
        hidden = self.feature_hidden
        if isinstance(hidden, (str, bytes)) or not isinstance(hidden, (tuple, list)) or any(
                isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden):
            raise ConfigError(f"feature_hidden must be a sequence of positive integers, got {hidden!r}")
        object.__setattr__(self, "feature_hidden", tuple(hidden))  # a JSON list comes back as a tuple
        if not check_finite(self.feature_dropout) or not 0 <= self.feature_dropout < 1:
            raise ConfigError(f"feature_dropout must be in [0, 1), got {self.feature_dropout!r}")
        if not check_finite(self.feature_lr) or not self.feature_lr > 0:
            raise ConfigError(f"feature_lr must be a positive number, got {self.feature_lr!r}")
        if not isinstance(self.init_from_features, bool):
            raise ConfigError(f"init_from_features must be True or False, got {self.init_from_features!r}")

