"""CML's :class:`~metricrec.training.trainer.TrainingStep`: the fused metric + covariance step on
the chosen backend, plus the CML+F feature term when item features are on."""

from __future__ import annotations

from typing import Any

import torch

from ...metrics import Scorer, embedding_scorer
from ...training.backends import NUMBA, TORCH
from ...training.optim import GradBuffer
from ...training.sampling import NegativeDraw
from . import step_numba
from .config import CMLConfig
from .feature_reg import FeatureRegularizer
from .step_torch import cml_step

__all__ = ["CMLStep", "STEPS"]

#: CML's step function for each backend of :mod:`metricrec.training.backends`.
STEPS = {TORCH: cml_step, NUMBA: step_numba.cml_step_numba}


class CMLStep:
    """One CML training batch: hinge on the closest of U negatives with the rank weight, covariance
    regulariser, and (CML+F) the transformation regulariser.

    Parameters
    ----------
    config : CMLConfig
    user_emb, item_emb : torch.Tensor, shapes (n_users, d), (n_items, d)
        Trained in place.
    backend : str
        A resolved backend name (:func:`metricrec.training.backends.resolve_backend`).
    feature_reg : FeatureRegularizer, optional
        The CML+F term, trained jointly.
    """

    name = "CML"

    def __init__(self, config: CMLConfig, user_emb: torch.Tensor, item_emb: torch.Tensor, backend: str,
                 feature_reg: FeatureRegularizer | None = None) -> None:
        self.config, self.backend = config, backend
        self.user_emb, self.item_emb = user_emb, item_emb
        self.feature_reg = feature_reg
        self._fn = STEPS[backend]
        if backend == NUMBA:
            step_numba.warm_up()  # compile (or load the cache) now, not inside the first timed epoch

    def batch(self, users: torch.Tensor, items: torch.Tensor, draw: NegativeDraw,
              user_grad: GradBuffer, item_grad: GradBuffer) -> tuple[float, dict[str, float]]:
        """Gradients of the batch into the buffers; (total loss, {metric_loss, cov_loss[, feature_loss]})."""
        cfg = self.config
        stats = self._fn(self.user_emb, self.item_emb, users, items, draw, user_grad, item_grad,
                         margin=cfg.margin, use_rank_weight=cfg.use_rank_weight,
                         cov_weight=cfg.cov_weight, cov_formula=cfg.cov_formula)
        parts = {"metric_loss": stats.metric_loss, "cov_loss": stats.cov_loss}
        total = stats.metric_loss + cfg.cov_weight * stats.cov_loss
        if self.feature_reg is not None:
            parts["feature_loss"] = self.feature_reg.on_batch(self.user_emb, self.item_emb, users, items, draw,
                                                              user_grad, item_grad)
            total += parts["feature_loss"]
        return total, parts

    def epoch_end(self) -> None:
        """CML+F places its cold items from f."""
        if self.feature_reg is not None:
            self.feature_reg.on_epoch_end(self.user_emb, self.item_emb)

    def state(self) -> Any:
        """Copies of both tables and of f (with features)."""
        reg = None if self.feature_reg is None else self.feature_reg.state()
        return self.user_emb.detach().clone(), self.item_emb.detach().clone(), reg

    def restore(self, state: Any) -> None:
        """Put a :meth:`state` snapshot back (in place)."""
        self.user_emb.copy_(state[0])
        self.item_emb.copy_(state[1])
        if self.feature_reg is not None:
            self.feature_reg.restore(state[2])

    def resume_state(self) -> Any:
        """What a training checkpoint needs besides :meth:`state`: the Adam state of f (None without
        features); see :mod:`metricrec.training.checkpoint`."""
        return None if self.feature_reg is None else self.feature_reg.opt.state_dict()

    def load_resume_state(self, state: Any) -> None:
        """Put a :meth:`resume_state` back."""
        if self.feature_reg is not None and state is not None:
            self.feature_reg.opt.load_state_dict(state)

    def scorer(self) -> Scorer:
        """Negative squared distances (the ranking of Euclidean distance)."""
        return embedding_scorer(self.user_emb, self.item_emb)
