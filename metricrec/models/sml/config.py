"""SML's hyperparameters as one frozen dataclass, saved next to the weights."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import ConfigError
from ...training.config import check_choice, check_finite
from ..config import AdaptiveMetricConfig

__all__ = ["SMLConfig", "NEGATIVE_MODES"]

#: How the U sampled negatives of a positive enter its two hinges (see :mod:`metricrec.models.sml.step`).
NEGATIVE_MODES = ("all", "hardest")


@dataclass(frozen=True)
class SMLConfig(AdaptiveMetricConfig):
    """Hyperparameters of an SML model (Li et al., AAAI 2020) and its training.

    The shared fields are documented on :class:`~metricrec.models.config.EmbeddingConfig` and
    :class:`~metricrec.training.config.TrainingConfig`. SML trains in CML's space (spectral start, the
    unit ball, as :class:`~metricrec.models.cml.config.CMLConfig`) on CML's adaptive budget (at most
    60 epochs, a first horizon of 20, validation grown to about 5,000 pairs) at SML's own peak rate of
    0.2, with 128 factors. The budget and ``margin_reg`` 0.15 were chosen together by the
    leave-one-set-out rules of ``benchmarks/rules.py`` on six development sets
    (``benchmarks/results/rules-sml.md``): against the fixed linear decay over 20 epochs and
    ``margin_reg`` 0.05 they replace, Recall@50 +5.4% on ml-100k, +6.6% on ml-100k-all, +4.6% on
    ml-100k-loo, worst set -0.6% (steam-200k), and the fixed decay's best epoch was its last on five
    of the six sets, the budget's on none. The fields below are SML's own.

    Attributes
    ----------
    margin_max : float
        l, the bound of every margin: ``m_u`` and ``n_i`` are kept in ``[0, l]`` (clamped after each
        update). Squared distances inside the unit ball lie in [0, 4]. Default 1.0.
    margin_init : float or None
        Where every margin starts (None, the default: at ``margin_max``; the regulariser pushes the
        margins up, the hinges pull down those that are violated too often).
    item_weight : float
        lambda, the weight of the item-centric hinge against the user-centric one (0: CML's loss with
        learned per-user margins). Default 0.1.
    margin_reg : float
        gamma, the weight of the margin regulariser ``-gamma * (mean m_u + mean n_i)``. With the
        per-positive normalisation of :mod:`metricrec.models.sml.step` a margin settles where about a
        fraction ``gamma`` of its sampled hinges are active (``gamma / lambda`` for an item margin).
        Default 0.15 (0.02, 0.05 and 0.3 lost on the development sets, see above). Above
        ``item_weight`` (as at the defaults) the item margins stay at ``margin_max``: only the user
        margins adapt.
    margin_lr : float
        AdaGrad rate of the margins (constant: the step updates them itself, outside the tables'
        schedule). Default 0.1.
    negatives : {"all", "hardest"}
        ``"all"`` (default, the paper's sum over negative items estimated by the mean over the U
        sampled ones): every sampled negative forms a hinge on each side; ``"hardest"``: only the
        most violating negative of each side (the closest to the user, resp. to the positive item),
        as CML's closest-of-U heuristic.
    """

    factors: int = 128
    learning_rate: float = 0.2
    margin_max: float = 1.0
    margin_init: float | None = None
    item_weight: float = 0.1
    margin_reg: float = 0.15
    margin_lr: float = 0.1
    negatives: str = "all"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not check_finite(self.margin_max) or not self.margin_max > 0:
            raise ConfigError(f"margin_max must be a positive number, got {self.margin_max!r}")
        if self.margin_init is not None and (not check_finite(self.margin_init)
                                             or not 0 <= self.margin_init <= self.margin_max):
            raise ConfigError(f"margin_init must be None or a number in [0, margin_max={self.margin_max!r}], "
                              f"got {self.margin_init!r}")
        if not check_finite(self.item_weight) or not self.item_weight >= 0:
            raise ConfigError(f"item_weight must be >= 0, got {self.item_weight!r}")
        if not check_finite(self.margin_reg) or not self.margin_reg >= 0:
            raise ConfigError(f"margin_reg must be >= 0, got {self.margin_reg!r}")
        if not check_finite(self.margin_lr) or not self.margin_lr > 0:
            raise ConfigError(f"margin_lr must be a positive number, got {self.margin_lr!r}")
        check_choice(self, "negatives", NEGATIVE_MODES)

    @property
    def initial_margin(self) -> float:
        """The value every margin starts at (``margin_init``, or ``margin_max`` when None)."""
        return float(self.margin_max if self.margin_init is None else self.margin_init)
