"""Hyperparameter tuning of CML on Optuna (``metricrec tune``; needs ``pip install 'metricrec[tune]'``).

- :mod:`.space`: the documented search space (:data:`SEARCH_SPACE`);
- :mod:`.objective`: one trial = a CML fit on train, early-stopped and judged on valid Recall@50,
  pruned through a trainer callback;
- :mod:`.study`: the study in an Optuna storage (SQLite), resumable, and what ``study.json`` and
  ``best.json`` hold;
- :mod:`.run`: running a study to its target number of trials.

Optuna is imported only when a study is opened or run.
"""

from .objective import METRIC, Objective, PruningCallback
from .space import SEARCH_SPACE, Param, describe, select, suggest

__all__ = ["METRIC", "Objective", "PruningCallback", "SEARCH_SPACE", "Param", "describe", "select", "suggest"]
