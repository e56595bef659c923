"""metricrec's CML behind the benchmark peer protocol (see :mod:`benchmarks.peers`).

One step is one :meth:`metricrec.CML.fit_partial` epoch, which continues the tables and optimiser
state of the previous one; its seconds are the model's own ``last_epoch_seconds`` (training only,
evaluation excluded). The scorer is the same kind as every other peer's: a ``metricrec.metrics``
scorer over copies of the tables, here by negative squared Euclidean distance.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import scipy.sparse as sp
import torch

from metricrec import CML
from metricrec.metrics import embedding_scorer
from metricrec.training.backends import resolve_backend

__all__ = ["CMLPeer", "CMLScorer"]

# Run by the benchmark loop, not by the model's own fit: recorded elsewhere in the results.
_LOOP_FIELDS = ("epochs", "patience")


class CMLScorer:
    """Scores of a CML model as it was when the scorer was made.

    Parameters
    ----------
    model : metricrec.CML
        A fitted model; its tables are copied, so later training does not change this scorer.
    snapshot : callable, optional
        ``snapshot(model) -> Any``, kept as :attr:`extra` (e.g. vectors placed from item features at
        this epoch, for an evaluation that needs more than the tables).

    Attributes
    ----------
    extra : Any
        What ``snapshot`` returned (None without one).
    """

    def __init__(self, model: CML, snapshot: Callable[[CML], Any] | None = None) -> None:
        user = torch.from_numpy(np.array(model.user_embeddings, dtype=np.float32, copy=True))
        item = torch.from_numpy(np.array(model.item_embeddings, dtype=np.float32, copy=True))
        self.user_embeddings, self.item_embeddings = user, item
        self._score = embedding_scorer(user, item, kind="neg_sq_distance")
        self.extra = snapshot(model) if snapshot is not None else None

    def __call__(self, users: np.ndarray) -> torch.Tensor:
        """Scores of shape (len(users), n_items), higher is better."""
        return self._score(users)


class CMLPeer:
    """CML (or CML+F with ``item_features``), one ``fit_partial`` epoch per step.

    Parameters
    ----------
    num_threads : int, default 2
        Torch / kernel threads while training.
    kernel : str, default "auto"
        Training backend (see :class:`metricrec.CML`).
    item_features : Features or sparse matrix, shape (n_items, n_features), optional
        CML+F's item features (with ``feature_weight > 0`` among ``config``).
    snapshot : callable, optional
        Passed to every :class:`CMLScorer` (see there).
    **config
        Any :class:`metricrec.CMLConfig` field (``margin``, ``n_negatives``, ``batch_size``, ...).
        ``epochs`` and ``patience`` are not used: the caller's loop decides when to stop.
    """

    def __init__(self, num_threads: int = 2, kernel: str = "auto", item_features: Any = None,
                 snapshot: Callable[[CML], Any] | None = None, **config: Any) -> None:
        self.model = CML(num_threads=num_threads, kernel=kernel, show_progress=False, verbose=False, **config)
        self.item_features = item_features
        self.snapshot = snapshot
        self.num_threads = num_threads
        self.name = "cml+f" if item_features is not None else "cml"

    def partial_fit_epoch(self, train: sp.spmatrix) -> float:
        """One more epoch on ``train``; returns its training seconds."""
        self.model.fit_partial(train, epochs=1, item_features=self.item_features)
        return float(self.model.last_epoch_seconds)

    def profiled_epoch(self, train: sp.spmatrix) -> tuple[float, dict[str, float]]:
        """One more epoch with the trainer's phase clock on (needs an earlier epoch on ``train``).

        Returns
        -------
        (float, dict)
            The epoch's training seconds, and its wall seconds per phase of the library's trainer
            (``shuffle``, ``pairs``, ``sampling``, ``step``, ``optimiser``, ...).
        """
        # The trainer fit_partial keeps; its phase clock is the library's hook for benchmark profiles.
        trainer = self.model._trainer
        if trainer is None:
            raise RuntimeError("CMLPeer.profiled_epoch: train one epoch first (partial_fit_epoch)")
        trainer.phase_seconds = {}
        try:
            seconds = self.partial_fit_epoch(train)
            phases = dict(trainer.phase_seconds)
        finally:
            trainer.phase_seconds = None
        return seconds, phases

    def scorer(self) -> CMLScorer:
        """A scorer over copies of the current tables."""
        return CMLScorer(self.model, self.snapshot)

    def backend(self) -> str:
        """The training backend in use (``"numba"`` or ``"torch"``)."""
        return resolve_backend(self.model.kernel, self.model.device)

    def params(self) -> dict[str, Any]:
        """The model's config (less the loop's fields), backend and threads."""
        cfg = {k: v for k, v in self.model.config.to_dict().items() if k not in _LOOP_FIELDS}
        return {**cfg, "kernel": self.backend(), "num_threads": self.num_threads}
