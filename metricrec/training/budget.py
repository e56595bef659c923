"""A training budget that adapts to the data: when the learning rate decays and when training ends.

A fixed budget (the rate decaying linearly to zero over a fixed number of epochs) ends every run on
its last epoch: the decay's final, smallest steps average out the sampled negatives' noise, so the
last epoch is always the best one and nothing says whether more epochs would have paid. On the
development sets the best epoch was the last of the run on every one of them
(``benchmarks/results/convergence.md``, section 8). The ``"adaptive"`` schedule lets validation decide:

1. **Decay, extended while it pays, brought forward when it does not.** After the warm-up the rate
   decays linearly from the peak to ``floor x peak`` over a first horizon of ``epochs``. At the last
   validation before the horizon's end, a gain over the best epoch so far larger than ``z`` paired
   standard errors (below) extends the horizon by half the first one, up to ``max_epochs``. At any
   validation of the decay a gain within noise (a plateau, or validation falling on a small, sparse
   set) brings the horizon forward: the rest of the decay runs over the next validation interval.
   Either way the decay goes on from the rate it has reached, so the rate stays continuous.
2. **A tail at the floor, ended by the first epoch that does not improve.** Past the horizon the
   rate stays at the floor and every epoch is validated; the run stops at the first one that does
   not beat the best so far (or at ``max_epochs``), and the best epoch's weights are restored.
   The one epoch past the best is the cost of knowing that training stopped improving.

**The noise of a gain.** Validation ranks the same users every epoch, so two epochs are compared
user by user: the gain is the mean of the per-user differences of Recall@50 and its standard error
``sd(differences) / sqrt(users)`` (:func:`paired_gain`). That is far smaller than the standard error
of either mean (users differ much more from each other than from themselves an epoch later), so a
real gain of a few thousandths is told from noise on a thousand users.

:class:`AdaptiveSchedule` is the multiplier of the rate per step (a drop-in for
:class:`~metricrec.training.schedule.LRSchedule`) plus its horizon; :func:`decide` is the rule
applied after each validation. Both are plain and deterministic: the schedule's state is a few
numbers a checkpoint stores, so a resumed run continues exactly.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

__all__ = ["AdaptiveSchedule", "decide", "paired_gain", "GO", "EXTEND", "SHORTEN", "STOP"]

#: Decisions of :func:`decide`.
GO, EXTEND, SHORTEN, STOP = "go", "extend", "shorten", "stop"


class AdaptiveSchedule:
    """Warm-up, then a piecewise-linear decay from 1 to ``floor`` whose end can move, then ``floor``.

    Parameters
    ----------
    steps_per_epoch : int
    horizon_epochs : int
        The first decay horizon (the config's ``epochs``).
    warmup_epochs : float
        Epochs of linear warm-up from ``1 / warmup_steps`` to 1 (multiplies the decay, as in
        :class:`~metricrec.training.schedule.LRSchedule`).
    floor : float in [0, 1)
        The multiplier the decay reaches at the horizon and keeps in the tail.
    max_epochs : int
        No horizon extends past this; the run stops there at the latest.

    Attributes
    ----------
    end_epoch : int
        The epoch the decay reaches the floor (the current horizon).
    extensions, shortenings : list of int
        The epochs at which the horizon was extended, and brought forward.
    """

    def __init__(self, steps_per_epoch: int, horizon_epochs: int, warmup_epochs: float, floor: float,
                 max_epochs: int) -> None:
        if not 0.0 <= floor < 1.0:
            raise ValueError(f"floor must be in [0, 1), got {floor!r}")
        if horizon_epochs < 1 or max_epochs < horizon_epochs:
            raise ValueError(f"need 1 <= horizon_epochs <= max_epochs, got {horizon_epochs}, {max_epochs}")
        self.spe = max(1, int(steps_per_epoch))
        self.floor, self.max_epochs = float(floor), int(max_epochs)
        self.warmup = min(int(round(warmup_epochs * self.spe)), horizon_epochs * self.spe)
        self.end_epoch = int(horizon_epochs)
        self.extensions: list[int] = []
        self.shortenings: list[int] = []
        #: (step, multiplier) knots of the decay; linear between them, ``floor`` after the last
        self.knots: list[tuple[float, float]] = [(0.0, 1.0), (float(self.end_epoch * self.spe), self.floor)]

    def _decay(self, x: float) -> float:
        steps = [k[0] for k in self.knots]
        values = [k[1] for k in self.knots]
        return float(np.interp(x, steps, values, left=1.0, right=self.floor))

    def factor(self, step: int) -> float:
        """The multiplier at 0-based global ``step`` (in (0, 1]); the decay is read at the step's
        midpoint, as :class:`~metricrec.training.schedule.LRSchedule` does."""
        step = max(int(step), 0)
        warm = (step + 1) / self.warmup if step < self.warmup else 1.0
        return warm * self._decay(step + 0.5)

    def replay(self, knots: "tuple[tuple[float, float], ...]") -> None:
        """Follow a decay given as (epoch, multiplier) points (a validated run's, :meth:`epoch_knots`)
        instead of the first horizon; its last point is the new end."""
        self.knots = [(float(e) * self.spe, float(m)) for e, m in knots]
        self.end_epoch = int(math.ceil(knots[-1][0]))
        self.floor = float(knots[-1][1])

    def epoch_knots(self) -> list[list[float]]:
        """The decay's points in epochs (independent of the steps per epoch): what :meth:`replay` takes."""
        return [[s / self.spe, m] for s, m in self.knots]

    def in_tail(self, epoch: int) -> bool:
        """Whether 1-based ``epoch`` is past the decay (at the floor)."""
        return epoch > self.end_epoch

    def extend(self, epoch: int, epochs: int) -> int:
        """Move the horizon ``epochs`` further (capped at ``max_epochs``), the decay going on from the
        multiplier reached at the end of 1-based ``epoch``; return the new horizon."""
        new_end = min(self.max_epochs, self.end_epoch + max(int(epochs), 1))
        if new_end > self.end_epoch:
            self._retarget(epoch, new_end)
            self.extensions.append(int(epoch))
        return self.end_epoch

    def shorten(self, epoch: int, epochs: int) -> int:
        """Bring the horizon forward to ``epoch + epochs`` when that is sooner: the rest of the decay, from
        the multiplier reached at the end of ``epoch``, is run over ``epochs`` epochs; return the horizon."""
        new_end = int(epoch) + max(int(epochs), 1)
        if new_end < self.end_epoch:
            self._retarget(epoch, new_end)
            self.shortenings.append(int(epoch))
        return self.end_epoch

    def _retarget(self, epoch: int, new_end: int) -> None:
        at = float(epoch * self.spe)
        here = self._decay(at)
        self.knots = [k for k in self.knots if k[0] < at] + [(at, here), (float(new_end * self.spe), self.floor)]
        self.end_epoch = int(new_end)

    def state(self) -> dict[str, Any]:
        """The schedule's state as plain JSON (what a checkpoint stores)."""
        return {"end_epoch": self.end_epoch, "extensions": list(self.extensions),
                "shortenings": list(self.shortenings), "knots": [[float(s), float(m)] for s, m in self.knots],
                "epoch_knots": self.epoch_knots(), "floor": self.floor}

    def load_state(self, doc: Mapping[str, Any]) -> None:
        """Put a :meth:`state` back."""
        self.end_epoch = int(doc["end_epoch"])
        self.extensions = [int(e) for e in doc["extensions"]]
        self.shortenings = [int(e) for e in doc.get("shortenings", [])]
        self.knots = [(float(s), float(m)) for s, m in doc["knots"]]
        self.floor = float(doc.get("floor", self.floor))


def paired_gain(now: np.ndarray, before: np.ndarray | None) -> tuple[float, float]:
    """(mean gain, its standard error) of per-user values ``now`` over ``before`` (same users, same
    order). With no ``before`` (the first validation) the gain is the mean itself and the error 0.

    The error is ``sd(now - before, ddof=1) / sqrt(n)`` (0 for a single user).
    """
    now = np.asarray(now, dtype=np.float64)
    if before is None:
        return (float(now.mean()) if now.size else 0.0), 0.0
    diff = now - np.asarray(before, dtype=np.float64)
    if diff.size == 0:
        return 0.0, 0.0
    se = float(diff.std(ddof=1) / math.sqrt(diff.size)) if diff.size > 1 else 0.0
    return float(diff.mean()), se


def decide(schedule: AdaptiveSchedule, epoch: int, improved: bool, gain: float, gain_se: float, *,
           eval_every: int, z: float) -> str:
    """What the adaptive budget does after the validation of 1-based ``epoch``.

    Parameters
    ----------
    schedule : AdaptiveSchedule
    epoch : int
    improved : bool
        Whether this epoch beat the best so far (strictly).
    gain, gain_se : float
        Its gain over the best so far and the gain's paired standard error (:func:`paired_gain`).
    eval_every : int
        Epochs between validations inside the decay.
    z : float
        Standard errors a gain must exceed to extend the horizon.

    Returns
    -------
    str
        Inside the decay: :data:`EXTEND` at the last validation before the horizon's end when the
        gain is beyond noise; :data:`SHORTEN` when it is not (a plateau, or validation falling: the
        rest of the decay is run over the next ``eval_every`` epochs, which is where its last, small
        steps still pay); else :data:`GO`. At the horizon's end :data:`GO` (on to the tail). In the
        tail: :data:`GO` while every epoch improves, :data:`STOP` at the first that does not. At
        ``max_epochs``: :data:`STOP`.
    """
    if epoch >= schedule.max_epochs:
        return STOP
    if schedule.in_tail(epoch):
        return GO if improved else STOP
    if epoch == schedule.end_epoch:
        return GO
    beyond_noise = improved and gain > z * gain_se
    if not beyond_noise:
        return SHORTEN if schedule.end_epoch - epoch > eval_every else GO
    if schedule.end_epoch - epoch <= eval_every and schedule.end_epoch < schedule.max_epochs:
        return EXTEND
    return GO
