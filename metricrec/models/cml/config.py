"""The CML hyperparameters as one frozen dataclass, saved next to the weights."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import ConfigError
from ...limits import MAX_HIDDEN_LAYERS, MAX_HIDDEN_WIDTH, MAX_MLP_BYTES, mlp_bytes
from ...training.config import check_choice, check_finite
from ..config import AdaptiveMetricConfig

__all__ = ["CMLConfig"]


#: Formulas of the covariance regulariser (:func:`metricrec.models.cml.losses.covariance_loss`).
COV_FORMULAS = ("paper", "offdiag", "tf_signed")


@dataclass(frozen=True)
class CMLConfig(AdaptiveMetricConfig):
    """Hyperparameters of a CML model and its training (the shared fields are documented on
    :class:`~metricrec.models.config.EmbeddingConfig` and :class:`~metricrec.training.config.TrainingConfig`;
    CML's defaults are listed here).

    Defaults follow the paper (Hsieh et al., WWW 2017) in the loss -- unit ball, WARP rank weight,
    hinge on the closest of U sampled negatives, AdaGrad, the covariance and transformation
    regularisers available -- and were chosen for time to quality on the benchmarks where it is not
    specific (``benchmarks/results/convergence.md`` records every change tried): a spectral start,
    a warmed-up, linearly decaying learning rate over 20 epochs, U from the catalogue's density.
    Plain ``metricrec train`` gives test Recall@50 0.542 on ml-100k and 0.363 on citeulike-a in
    ~2 and ~5 s of training (benchmarks/results/defaults.md).

    Attributes
    ----------
    factors : int
        Embedding dimension d (default 256: chosen across the ten development sets with
        leave-one-set-out, benchmarks/results/rules.md -- +1.0% of the mean Recall@50 against the best
        tuned peer over 128, no set more than 0.3% lower, at about twice the seconds per epoch).
    margin : float
        m in ``[m + d(i,j)^2 - d(i,k)^2]_+``. Squared distances inside the unit ball lie in [0, 4].
        Default 1.25: with the schedule it matched 1.5 on ml-100k and beat it on citeulike-a (0.357
        against 0.350 valid Recall@50 after 15 epochs; 1.0: 0.356).
    n_negatives : int or None
        U, negatives sampled per positive pair. None (default): ``0.1 x items / positives per
        user`` within [3, 20] (:meth:`~metricrec.training.config.TrainingConfig.resolved_n_negatives`):
        a dense catalogue needs few (ml-100k: 5; 20 lost 0.07), a sparse one many (citeulike-a: 20;
        10 lost 0.013).
    use_rank_weight : bool
        WARP-style ``w_ij = log(floor(J*M/U) + 1)``; False gives the plain triplet loss.
    cov_weight : float
        lambda_c of the covariance regulariser (0 disables it). Default 0: with the spectral start
        (whose components are decorrelated already) lambda_c = 1 changed valid Recall@50 by less
        than 0.002 on citeulike-a and ml-100k, and it doubled the time of a step.
    cov_formula : {"paper", "offdiag", "tf_signed"}
        See :func:`metricrec.losses.covariance_loss`.
    max_norm : float or None
        Radius of the ball the vectors are projected into after every update (None: no bound).
    optimizer : {"adagrad", "adam"}
        Default AdaGrad (Adam kept the spectral start better for a few epochs, then stalled 0.01
        lower on citeulike-a).
    learning_rate, lr_schedule, warmup_epochs : see :class:`~metricrec.training.config.TrainingConfig`
        Defaults 0.3, ``"adaptive"``, 1 (0.3 is the rate chosen across the ten development sets with
        leave-one-set-out, benchmarks/results/rules.md: chosen with every set and without each one).
    valid_users, valid_pairs, eval_every : see :class:`~metricrec.training.config.TrainingConfig`
        Defaults 1,000 users, grown to hold 5,000 validation pairs, and every 5 epochs.
    batch_size : int or None
        Positive pairs per step. None (default): about an eighth of the training pairs, between
        1,000 and 50,000 (more for very large tables; see ``TrainingConfig.resolved_batch_size``).
    negative_group : int
        Consecutive positives sharing one negative draw (1 = independent draws per positive as in
        the paper; each row still never sees its own positives). Sharing cuts the cost of
        gathering negative vectors G-fold (4 instead of 16 changed nothing on citeulike-a).
    sampler : {"uniform", "popularity"}
    sampler_alpha : float
        Exponent of the popularity sampler.
    epochs : int
        The most epochs the run takes (default 60); the adaptive budget (``lr_schedule``, default
        ``"adaptive"``, :mod:`metricrec.training.budget`) decides how many it needs: a decay over
        ``horizon_epochs`` (default 20) that validation extends while it gains beyond noise and
        brings forward on a plateau, then the floor rate until an epoch fails to improve.
    patience : int
        Early stopping of the non-adaptive schedules: epochs without a better valid Recall@50 before
        stopping (0: never stop early). The default adaptive budget decides by its own rule.
    init, init_std : see :class:`~metricrec.models.config.EmbeddingConfig`
        Default ``"spectral"``.
    seed : int
    feature_weight : float
        lambda_f of the transformation regulariser ``lambda_f * sum_j ||f(x_j) - v_j||^2`` (CML+F,
        :mod:`metricrec.models.cml.feature_reg`). 0 (the default) turns features off; give item
        features to ``CML.fit`` and a positive weight to turn them on. ``--item-features`` alone
        uses :func:`~metricrec.models.cml.feature_reg.default_feature_weight`: 100 times the square
        of the share of distinct feature rows -- 99 for citeulike-a's tags (test Recall@50 0.386
        against 0.358 without features, +8%; 30 to 100 were as good, 3 gave +5%; the former 1 with a
        hidden layer gave nothing), 4.7 for
        ml-100k's genres (100 there stacked the movies of a genre together: 0.436 against 0.539).
    feature_hidden : tuple of int
        Hidden widths of the feature MLP f (``()``: a linear map, the default). f must generalise,
        not memorise: on citeulike-a a linear f predicted held-out items' vectors best (MSE 0.75
        against 0.78-0.89 for one hidden layer of 256, 0.98 for the mean), and with lambda_f = 30 the
        hidden layer fell to 0.276 valid Recall@50 while the linear f reached 0.388.
    feature_dropout : float in [0, 1)
        Dropout after every hidden ReLU of f (default 0.5; unused by a linear f).
    feature_lr : float
        Adam learning rate of f (default 0.005: 0.01 gave the best warm items (+9%) but placed cold
        items worse, 0.444 against 0.465 Recall@50 on the cold-start protocol; 0.003 the reverse).
    feature_row_norm : bool
        Scale every feature row to unit L2 norm before f (default True): 0.388 against 0.373 valid
        Recall@50 on citeulike-a, where items carry 1 to 100+ tags.
    init_from_features : bool
        Start item vectors (that have features) at f(x) of the untrained f instead of at random
        (default False).
    """

    factors: int = 256
    margin: float = 1.25
    use_rank_weight: bool = True
    cov_weight: float = 0.0
    cov_formula: str = "paper"
    feature_weight: float = 0.0
    feature_hidden: tuple[int, ...] = ()
    feature_dropout: float = 0.5
    feature_lr: float = 0.005
    feature_row_norm: bool = True
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
        if len(hidden) > MAX_HIDDEN_LAYERS or max(hidden, default=1) > MAX_HIDDEN_WIDTH:  # the loader's bounds
            raise ConfigError(f"feature_hidden must be at most {MAX_HIDDEN_LAYERS} widths in [1, {MAX_HIDDEN_WIDTH:,}] "
                              f"(the most a model file may hold), got {tuple(hidden)!r}")
        if hidden and mlp_bytes(1, tuple(hidden), self.factors) > MAX_MLP_BYTES:  # before the input layer
            raise ConfigError(f"feature_hidden {tuple(hidden)!r} with {self.factors} factors makes a feature network of "
                              f"more than the {MAX_MLP_BYTES:,} bytes a model file may hold")
        object.__setattr__(self, "feature_hidden", tuple(hidden))  # a JSON list comes back as a tuple
        if not check_finite(self.feature_dropout) or not 0 <= self.feature_dropout < 1:
            raise ConfigError(f"feature_dropout must be in [0, 1), got {self.feature_dropout!r}")
        if not check_finite(self.feature_lr) or not self.feature_lr > 0:
            raise ConfigError(f"feature_lr must be a positive number, got {self.feature_lr!r}")
        if not isinstance(self.feature_row_norm, bool):
            raise ConfigError(f"feature_row_norm must be True or False, got {self.feature_row_norm!r}")
        if not isinstance(self.init_from_features, bool):
            raise ConfigError(f"init_from_features must be True or False, got {self.init_from_features!r}")

