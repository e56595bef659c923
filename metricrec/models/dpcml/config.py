"""DPCML's hyperparameters as one frozen dataclass, saved next to the weights."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import ConfigError
from ...limits import MAX_FACTORS
from ...training.config import check_choice, check_finite, check_positive_int
from ..config import AdaptiveMetricConfig

__all__ = ["DPCMLConfig", "NEGATIVE_MODES", "MAX_VECTORS"]

#: How the U sampled negatives of a positive enter its hinge (see :mod:`metricrec.models.dpcml.step`):
#: ``"hardest"`` is the paper's DPCML2 (hard negatives), ``"all"`` its DPCML1 (uniform negatives).
NEGATIVE_MODES = ("hardest", "all")
#: The most vectors a user may have (C).
MAX_VECTORS = 64


@dataclass(frozen=True)
class DPCMLConfig(AdaptiveMetricConfig):
    """Hyperparameters of a DPCML model (Bao, Xu, Yang, He, Cao and Huang, NeurIPS 2022) and its training.

    The shared fields are documented on :class:`~metricrec.models.config.EmbeddingConfig` and
    :class:`~metricrec.training.config.TrainingConfig`. DPCML trains in CML's space with CML's
    schedule and hinge (:class:`~metricrec.models.cml.config.CMLConfig`: 256 factors, spectral start,
    unit ball, AdaGrad at 0.3 with one warm-up epoch and the adaptive budget, margin 1.25, the
    closest of U sampled negatives with the WARP rank weight, validation of 1,000 users every 5
    epochs), so that ``n_vectors=1, diversity_weight=0`` is CML exactly. ``n_vectors``,
    ``diversity_weight`` and the band were chosen on ml-100k's validation split alone (C in 2, 3, 5 x
    eta in 0, 0.1, 1, 10 with the band [0.05, 0.25], and the band [0.02, 0.1] at eta = 1 for C = 3,
    5; the best three again on two more seeds): valid Recall@50 0.5218 over three seeds against
    CML's 0.5205, a gap inside the seeds' spread (about 0.004); ``docs/models.md``, DPCML. The
    fields below are DPCML's own.

    Attributes
    ----------
    n_vectors : int
        C, vectors per user (the paper's code uses 5). A user scores an item by its nearest vector,
        ``s(u, v) = min_c ||g_u^c - g_v||^2`` (Eq. 3). 1 is CML. Default 3 (ml-100k validation: 5
        was 0.005-0.01 lower, 2 as good as 3 within noise).
    margin : float
        lambda of the hinge ``[lambda + s(u, v+) - s(u, v-)]_+`` (Eq. 6). Squared distances inside
        the unit ball lie in [0, 4]. Default 1.25 (CML's).
    negatives : {"hardest", "all"}
        ``"hardest"`` (default, the paper's DPCML2): the hinge of the sampled negative nearest the
        user (CML's closest-of-U rule); ``"all"`` (DPCML1, uniform negatives): the mean of the
        hinges of all U sampled negatives (with U = 1: one uniform negative per positive, as the
        paper's code trains DPCML1).
    use_rank_weight : bool
        The WARP weight ``log(floor(J M / U) + 1)`` of CML on the hinge (M of the U negatives
        violate the margin, J items): CML's default, True. Only with ``negatives="hardest"``.
    diversity_weight : float
        eta, the weight of the diversity control regulariser (Eq. 7, 9) against the mean hinge per
        positive pair (0 turns it off). The paper's code adds ``10 * Omega`` to a batch sum of 256
        hinges, about eta = 0.04 here. Default 1.0 (ml-100k validation: without it the vectors
        drift apart, to a mean delta_u of 0.7 at C = 3, and valid Recall@50 fell by 0.01).
    diversity_min, diversity_max : float
        delta_1 <= delta_2, the band the regulariser keeps a user's diversity
        ``delta_u = sum_c ||g_u^c - mean_c g_u^c||^2 / (C - 1)`` in (the paper's average pairwise
        distance, Sec. 2.4: half the mean squared distance between two of the user's vectors).
        Defaults 0.02 and 0.1 (ml-100k validation; the trained users' median delta_u is then 0.15).
    init_spread : float
        Where the C vectors start: the first at the user's start (spectral or random, as CML's),
        each other one moved from it by a seeded normal step of expected length ``init_spread``,
        then into the ball. 0 starts them identical. Default 0.1. Fold-in starts the same way from
        the centroid of the user's items.
    """

    factors: int = 256
    n_vectors: int = 3
    margin: float = 1.25
    negatives: str = "hardest"
    use_rank_weight: bool = True
    diversity_weight: float = 1.0
    diversity_min: float = 0.02
    diversity_max: float = 0.1
    init_spread: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int(self, "n_vectors")
        if self.n_vectors > MAX_VECTORS:
            raise ConfigError(f"n_vectors must be at most {MAX_VECTORS}, got {self.n_vectors!r}")
        if self.n_vectors * self.factors > MAX_FACTORS:  # the loader's bound on a row's width
            raise ConfigError(f"n_vectors x factors = {self.n_vectors * self.factors:,} is wider than the "
                              f"{MAX_FACTORS:,} columns a model file's user table may hold")
        if not check_finite(self.margin) or not self.margin > 0:
            raise ConfigError(f"margin must be a positive number, got {self.margin!r}")
        check_choice(self, "negatives", NEGATIVE_MODES)
        if not isinstance(self.use_rank_weight, bool):
            raise ConfigError(f"use_rank_weight must be True or False, got {self.use_rank_weight!r}")
        if self.use_rank_weight and self.negatives != "hardest":
            raise ConfigError("use_rank_weight=True weighs the hinge of the hardest negative: it needs "
                              f"negatives='hardest' (got negatives={self.negatives!r}); pass use_rank_weight=False")
        if not check_finite(self.diversity_weight) or not self.diversity_weight >= 0:
            raise ConfigError(f"diversity_weight must be >= 0, got {self.diversity_weight!r}")
        for name in ("diversity_min", "diversity_max"):
            value = getattr(self, name)
            if not check_finite(value) or not value >= 0:
                raise ConfigError(f"{name} must be a number >= 0, got {value!r}")
        if not self.diversity_min <= self.diversity_max:
            raise ConfigError(f"diversity_min must be <= diversity_max, got {self.diversity_min!r} > "
                              f"{self.diversity_max!r}")
        if not check_finite(self.init_spread) or not self.init_spread >= 0:
            raise ConfigError(f"init_spread must be >= 0, got {self.init_spread!r}")
