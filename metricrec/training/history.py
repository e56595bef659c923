"""What training did, epoch by epoch: the records every model's ``fit`` returns and saves."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = ["EpochRecord", "History"]


@dataclass
class EpochRecord:
    """What one epoch did.

    Attributes
    ----------
    epoch : int
        1-based.
    loss : float
        The total training loss summed over the epoch's batches.
    seconds : float
        Training seconds only (sampling, step, update); evaluation is ``eval_seconds``.
    eval_seconds : float
    valid : dict
        Validation metrics of this epoch (empty without a valid set).
    parts : dict
        The model's named loss terms summed over the epoch (CML: ``metric_loss``, ``cov_loss``
        unweighted, ``feature_loss`` with item features).
    """

    epoch: int
    loss: float
    seconds: float
    eval_seconds: float = 0.0
    valid: dict[str, float] = field(default_factory=dict)
    parts: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON-able dict; the loss parts sit beside ``loss`` under their own names."""
        return {"epoch": self.epoch, "loss": self.loss, **self.parts, "seconds": self.seconds,
                "eval_seconds": self.eval_seconds, "valid": dict(self.valid)}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> "EpochRecord":
        """Inverse of :meth:`to_dict`."""
        fixed = {"epoch", "loss", "seconds", "eval_seconds", "valid"}
        parts = {k: float(v) for k, v in doc.items() if k not in fixed}
        return cls(int(doc["epoch"]), float(doc["loss"]), float(doc["seconds"]), float(doc.get("eval_seconds", 0.0)),
                   {str(k): float(v) for k, v in dict(doc.get("valid") or {}).items()}, parts)


@dataclass
class History:
    """All epochs of one ``fit`` and the epoch whose weights were kept."""

    epochs: list[EpochRecord] = field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False
    #: The adaptive budget's record (:mod:`metricrec.training.budget`): the decay's final horizon
    #: ``end_epoch``, the epochs it was ``extensions``-ed at, ``max_epochs``, ``knots``; None otherwise.
    budget: dict[str, Any] | None = None

    @property
    def train_seconds(self) -> float:
        """Training seconds summed over all epochs run (evaluation excluded)."""
        return float(sum(e.seconds for e in self.epochs))

    @property
    def seconds_to_best(self) -> float:
        """Training seconds up to and including the best epoch."""
        if self.best_epoch is None:
            return self.train_seconds
        return float(sum(e.seconds for e in self.epochs if e.epoch <= self.best_epoch))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (the saved model and ``report.json`` carry it)."""
        return {
            "epochs": [e.to_dict() for e in self.epochs],
            "best_epoch": self.best_epoch,
            "stopped_early": self.stopped_early,
            "train_seconds": self.train_seconds,
            "seconds_to_best": self.seconds_to_best,
            **({"budget": self.budget} if self.budget is not None else {}),
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> "History":
        """Inverse of :meth:`to_dict` (``ValueError``/``KeyError``/``TypeError`` on a malformed doc)."""
        best = doc.get("best_epoch")
        budget = doc.get("budget")
        return cls([EpochRecord.from_dict(e) for e in doc.get("epochs") or []],
                   None if best is None else int(best), bool(doc.get("stopped_early", False)),
                   dict(budget) if isinstance(budget, Mapping) else None)
