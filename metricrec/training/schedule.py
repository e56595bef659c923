"""Learning-rate schedule of the trainer: a per-step multiplier of the optimiser's learning rate.

Two effects, both measured on the benchmarks (``benchmarks/results/convergence.md``):

- **Warm-up.** AdaGrad's first steps are its largest: its accumulators start near zero, so the very
  first update moves every touched coordinate by about the full learning rate, whatever the
  gradient's size. A linear warm-up over the first ``warmup_epochs`` keeps those steps from throwing
  the tables about (and lets a good initialisation, :mod:`metricrec.models.init`, survive).
- **Decay to zero.** Decaying the rate linearly to zero over the ``epochs`` of the run averages out
  the noise of the sampled negatives at the end of the run, so the last epochs are also the best
  ones: the same quality in far fewer epochs than a constant rate, and a larger peak rate is safe.

:class:`LRSchedule` maps a 0-based global step to the multiplier; the trainer counts steps over all
epochs (and over successive ``fit_partial`` calls on the same data).
"""

from __future__ import annotations

import math

__all__ = ["LRSchedule", "SCHEDULES"]

#: ``"adaptive"``: warm-up, then a linear decay whose horizon validation extends, then a floor until
#: validation stops improving (:mod:`metricrec.training.budget`); ``"linear"``: warm-up, then linear
#: decay to zero at the end of the run; ``"cosine"``: warm-up, then half a cosine to zero;
#: ``"constant"``: warm-up, then the base rate throughout.
SCHEDULES = ("adaptive", "linear", "cosine", "constant")


class LRSchedule:
    """Multiplier of the base learning rate at each optimiser step.

    Parameters
    ----------
    kind : {"linear", "cosine", "constant"}
    total_steps : int
        Steps of the whole run (epochs x steps per epoch); the decay reaches zero there. Steps past
        it keep the last step's multiplier.
    warmup_steps : int
        Steps of the linear warm-up from ``1 / warmup_steps`` to 1 (0: none).
    """

    def __init__(self, kind: str, total_steps: int, warmup_steps: int = 0) -> None:
        if kind == "adaptive":
            raise ValueError("the 'adaptive' schedule is metricrec.training.budget.AdaptiveSchedule")
        if kind not in SCHEDULES:
            raise ValueError(f"unknown learning-rate schedule {kind!r}; choose one of {', '.join(SCHEDULES)}")
        if total_steps < 1 or warmup_steps < 0:
            raise ValueError(f"need total_steps >= 1 and warmup_steps >= 0, got {total_steps}, {warmup_steps}")
        self.kind, self.total, self.warmup = kind, int(total_steps), min(int(warmup_steps), int(total_steps))

    @classmethod
    def for_run(cls, kind: str, epochs: int, steps_per_epoch: int, warmup_epochs: float) -> "LRSchedule":
        """The schedule of a run of ``epochs`` epochs of ``steps_per_epoch`` steps."""
        steps_per_epoch = max(1, int(steps_per_epoch))
        return cls(kind, epochs * steps_per_epoch, int(round(warmup_epochs * steps_per_epoch)))

    def factor(self, step: int) -> float:
        """The multiplier at 0-based ``step`` (in (0, 1])."""
        step = min(max(int(step), 0), self.total - 1)
        warm = (step + 1) / self.warmup if step < self.warmup else 1.0
        if self.kind == "constant":
            return warm
        # progress of the step's midpoint: the last step still moves (by 1/(2 total)), none is zero
        p = (step + 0.5) / self.total
        decay = 1.0 - p if self.kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * p))
        return warm * decay
