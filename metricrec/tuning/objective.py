"""One trial of ``metricrec tune``: a fit of the tuned model (CML by default) on the training part, judged
on the validation part.

The trial's value is the best validation Recall@50 of its fit (the epoch early stopping keeps; the
trainer's per-epoch validation -- on a fixed sample of users when there are many, see
``TrainingConfig.valid_users``). The test part is never looked at. After every validated epoch
the best value so far is reported to Optuna (``trial.report(value, epoch)``); when the pruner says
the trial is behind, the epoch callback stops the fit and the trial ends as PRUNED.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

from ..data.splits import Split
from ..errors import ConfigError, TrainingDivergedError
from ..models.cml.model import CML
from ..training.history import EpochRecord
from .space import Param, suggest

__all__ = ["DEFAULTS_ATTR", "Objective", "PruningCallback", "METRIC"]

#: The per-epoch validation metric a trial reports and maximises.
METRIC = "recall@50"
#: User attribute of the trial that trains the defaults (the base config, no drawn parameter).
DEFAULTS_ATTR = "defaults"


class PruningCallback:
    """Trainer callback: report each epoch's best-so-far validation metric; stop when pruned.

    Parameters
    ----------
    trial : optuna.Trial
    metric : str
        Key of ``record.valid`` to report.

    Attributes
    ----------
    pruned_at : int or None
        The epoch after which the pruner stopped the fit (None: not pruned).
    best : float
        The best value reported so far.
    """

    def __init__(self, trial: Any, metric: str = METRIC) -> None:
        self.trial, self.metric = trial, metric
        self.pruned_at: int | None = None
        self.best = float("-inf")

    def __call__(self, record: EpochRecord, trainer: Any) -> bool:
        """Report ``record``'s metric (epochs without validation are skipped); True stops training."""
        value = record.valid.get(self.metric) if record.valid else None
        if value is None:
            return False
        self.best = max(self.best, float(value))
        self.trial.report(self.best, record.epoch)
        if self.trial.should_prune():
            self.pruned_at = record.epoch
            return True
        return False


class Objective:
    """The function a study maximises: ``objective(trial) -> best valid Recall@50``.

    Parameters
    ----------
    split : Split
        Train part to fit on, valid part to judge on (test is not used).
    base : EmbeddingConfig
        Settings every trial shares (the fixed flags); the drawn parameters replace its fields. Its
        type is the tuned model's config (a :class:`CMLConfig` for CML).
    space : sequence of Param
    model_kw : dict, optional
        Passed to the model class (``device``, ``num_threads``, ``kernel``).
    fit_kw : dict, optional
        Passed to its ``fit`` (``item_features``).
    model_class : type, optional
        The model trained (default :class:`CML`): an :class:`~metricrec.models.base.EmbeddingRecommender`
        whose ``config_class`` is ``base``'s type.
    """

    def __init__(self, split: Split, base: Any, space: Sequence[Param], *, model_kw: dict[str, Any] | None = None,
                 fit_kw: dict[str, Any] | None = None, model_class: type | None = None) -> None:
        if split.valid.nnz == 0:
            raise ConfigError("tuning needs a validation part: the split's valid part is empty")
        self.model_class = CML if model_class is None else model_class
        if not isinstance(base, self.model_class.config_class):
            raise ConfigError(f"{self.model_class.__name__} is tuned from a {self.model_class.config_class.__name__}, "
                              f"got a {type(base).__name__}")
        self.split, self.base, self.space = split, base, tuple(space)
        self.model_kw, self.fit_kw = dict(model_kw or {}), dict(fit_kw or {})

    def config_for(self, params: dict[str, Any]) -> Any:
        """The full configuration of a trial with ``params``."""
        return self.base.replace(**params)

    def __call__(self, trial: Any) -> float:
        import optuna

        # trial 0 of a new study (run_study enqueues it): the defaults as they are, nothing drawn
        config = self.base if trial.user_attrs.get(DEFAULTS_ATTR) else self.config_for(suggest(trial, self.space))
        model = self.model_class(config, show_progress=False, verbose=False, **self.model_kw)
        prune = PruningCallback(trial)
        t0 = time.perf_counter()
        try:
            model.fit(self.split.train, self.split.valid, callbacks=[prune], **self.fit_kw)
        except TrainingDivergedError as exc:  # a FAIL trial; the study goes on
            trial.set_user_attr("failed_because", str(exc))
            raise
        hist = model.history
        trial.set_user_attr("seconds", time.perf_counter() - t0)
        trial.set_user_attr("train_seconds", hist.train_seconds)
        trial.set_user_attr("epochs", len(hist.epochs))
        trial.set_user_attr("best_epoch", hist.best_epoch)
        if prune.pruned_at is not None:
            raise optuna.TrialPruned(f"pruned after epoch {prune.pruned_at} (best {METRIC} {prune.best:.4f})")
        if prune.best == float("-inf"):
            raise ConfigError("no epoch was validated: raise --epochs or lower --eval-every")
        return prune.best
