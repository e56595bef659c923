"""SFCML's hyperparameters as one frozen dataclass, saved next to the weights."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import ConfigError
from ...training.config import check_choice, check_finite
from ..config import AdaptiveMetricConfig

__all__ = ["SFCMLConfig", "WEIGHTINGS"]

#: How the positive pairs of a user share its weight (see :mod:`metricrec.models.sfcml.step`).
WEIGHTINGS = ("user", "pair")


@dataclass(frozen=True)
class SFCMLConfig(AdaptiveMetricConfig):
    """Hyperparameters of an SFCML model (Bao et al., TPAMI 2023) and its training.

    The shared fields are documented on :class:`~metricrec.models.config.EmbeddingConfig` and
    :class:`~metricrec.training.config.TrainingConfig`. SFCML trains in CML's space and with CML's
    schedule (spectral start, the unit ball, AdaGrad, the adaptive budget over a first horizon of 20
    epochs after one warm-up epoch, 1,000 validation users grown to 5,000 pairs every 5 epochs, as
    :class:`~metricrec.models.cml.config.CMLConfig`), with 256 factors, a rate of 0.3, margin 1.5 and
    batches of a quarter of the pairs (:meth:`resolved_batch_size`). ``margin`` and ``factors`` were
    chosen together by the leave-one-set-out rules of ``benchmarks/rules.py`` on six development
    sets (``benchmarks/results/rules-sfcml.md``): against margin 2.0 and 128 factors, chosen on
    ml-100k's validation split alone, Recall@50 +9.9% on citeulike-a, within +-0.3% on filmtrust,
    ml-100k, ml-100k-all and steam-200k, +0.9% on ml-100k-loo, at about twice the seconds of a step
    (a step is ``O(d^2)`` per row). Margins 1.0 and 3.0, rate 0.15 and the "pair" weighting lost
    there; the rate and the batch size are from the first search on ml-100k (the grid is in the
    SFCML section of docs/models.md).

    Attributes
    ----------
    margin : float
        m, the target of ``d(u,j) - d(u,i)`` for every positive i and negative j: the square loss
        ``(m - (d(u,j) - d(u,i)))^2`` pulls every difference towards m, from both sides (squared
        distances inside the unit ball lie in [0, 4], so their differences in [-4, 4]). Default 1.5
        (the authors' value for ml-100k, 2.0, lost on citeulike-a: see above).
    weighting : {"user", "pair"}
        ``"user"`` (default, the paper's): every user weighs the same, its pairs ``1 / |P_u|`` each
        (scaled by the mean positives per user); ``"pair"``: every positive pair weighs 1, as the
        sampled CML loss weighs them.
    n_negatives : int or None
        Not used by SFCML (every negative is): default 1, which keeps the trainer's draw cheap.
    """

    factors: int = 256
    n_negatives: int | None = 1
    margin: float = 1.5
    weighting: str = "user"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not check_finite(self.margin) or not self.margin > 0:
            raise ConfigError(f"margin must be a positive number, got {self.margin!r}")
        check_choice(self, "weighting", WEIGHTINGS)

    def resolved_batch_size(self, n_pairs: int, n_rows: int = 0) -> int:
        """The batch size used for ``n_pairs`` training pairs over ``n_rows`` table rows: ``batch_size``,
        or SFCML's rule ``min(max(1000, n_pairs // 4), max(50000, 5 * n_rows))`` -- a quarter of the
        pairs where CML takes an eighth. A step's cost hardly depends on its pairs (the item statistics
        and the dense item gradient are ``O(n_items d^2)`` a batch, the positives of the batch's users
        ``O(nnz d)``), so fewer, larger batches make a cheaper epoch: on ml-100k a quarter matched an
        eighth on valid Recall@50 at half the seconds per epoch, and a half lost 0.005.
        """
        if self.batch_size is not None:
            return self.batch_size
        return int(min(max(1_000, n_pairs // 4), max(50_000, 5 * int(n_rows))))
