"""BPR's training step: ``-log sigmoid(u . (v_i - v_j))`` per (user, positive, negative) triple,
plus L2 on the rows involved, with hand-written gradients (checked against autograd in the tests)."""

from __future__ import annotations

import torch

from ...metrics import Scorer, embedding_scorer
from ...training.trainer import TablesStep
from ...training.optim import GradBuffer
from ...training.sampling import NegativeDraw
from .config import BPRConfig

__all__ = ["BPRStep"]


class BPRStep(TablesStep):
    """A :class:`~metricrec.training.trainer.TrainingStep` for BPR (torch backend, any device).

    With ``n_negatives > 1`` every sampled negative forms its own triple.
    """

    name = "BPR"

    def __init__(self, config: BPRConfig, user_emb: torch.Tensor, item_emb: torch.Tensor, backend: str) -> None:
        self.config, self.backend = config, backend
        self.user_emb, self.item_emb = user_emb, item_emb

    def batch(self, users: torch.Tensor, items: torch.Tensor, draw: NegativeDraw,
              user_grad: GradBuffer, item_grad: GradBuffer) -> tuple[float, dict[str, float]]:
        """Gradients of the batch's triples into the buffers; (total, {bpr_loss, l2_loss})."""
        lam = self.config.regularization
        n_neg = draw.negatives.shape[1]
        u_idx = users.repeat_interleave(n_neg)
        i_idx = items.repeat_interleave(n_neg)
        j_idx = draw.negatives.reshape(-1)
        u, vi, vj = self.user_emb[u_idx], self.item_emb[i_idx], self.item_emb[j_idx]
        x = (u * (vi - vj)).sum(1)
        g = -torch.sigmoid(-x)[:, None]  # d(-log sigmoid(x))/dx
        user_grad.add(u_idx, g * (vi - vj) + lam * u)
        item_grad.add(i_idx, g * u + lam * vi)
        item_grad.add(j_idx, -g * u + lam * vj)
        bpr = float(torch.nn.functional.softplus(-x).sum())
        l2 = float(0.5 * lam * ((u * u).sum() + (vi * vi).sum() + (vj * vj).sum()))
        return bpr + l2, {"bpr_loss": bpr, "l2_loss": l2}

    def scorer(self) -> Scorer:
        """Inner products."""
        return embedding_scorer(self.user_emb, self.item_emb, "dot")
