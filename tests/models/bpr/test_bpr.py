"""BPR: the shared behaviour suite, and its hand-written gradients against autograd."""

import pytest
import scipy.sparse as sp
import torch

from metricrec.errors import ConfigError
from metricrec.models.bpr import BPR, BPRConfig
from metricrec.models.bpr.step import BPRStep
from metricrec.training.optim import GradBuffer
from metricrec.training.sampling import NegativeDraw
from recommender_behaviour import RecommenderBehaviour, data_split, fitted  # noqa: F401


class TestBPR(RecommenderBehaviour):
    def make(self, **kw):
        return BPR(factors=16, batch_size=500, learning_rate=0.1, show_progress=False, verbose=False, **kw)


def test_bpr_gradients_match_autograd():
    gen = torch.Generator().manual_seed(0)
    ue = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    ie = torch.randn(7, 3, generator=gen, dtype=torch.float64)
    users, pos = torch.tensor([0, 1, 1, 4]), torch.tensor([2, 3, 2, 6])
    neg = torch.tensor([[1, 5], [0, 6], [4, 4], [3, 1]])
    draw = NegativeDraw(neg, neg, torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), 1)
    cfg = BPRConfig(factors=3, n_negatives=2, regularization=0.1)
    gu, gi = GradBuffer(5, 3, dtype=torch.float64), GradBuffer(7, 3, dtype=torch.float64)
    total, parts = BPRStep(cfg, ue, ie, "torch").batch(users, pos, draw, gu, gi)

    u, i = ue.clone().requires_grad_(), ie.clone().requires_grad_()
    uu, pp, nn = users.repeat_interleave(2), pos.repeat_interleave(2), neg.reshape(-1)
    x = (u[uu] * (i[pp] - i[nn])).sum(1)
    ref = torch.nn.functional.softplus(-x).sum() + 0.05 * ((u[uu] ** 2).sum() + (i[pp] ** 2).sum() + (i[nn] ** 2).sum())
    ref.backward()
    assert total == pytest.approx(ref.item(), rel=1e-12)
    assert parts["bpr_loss"] == pytest.approx(torch.nn.functional.softplus(-x).sum().item(), rel=1e-12)
    rows, grads = gu.pop()
    assert torch.allclose(grads, u.grad[rows]) and torch.count_nonzero(u.grad.abs().sum(1)) == rows.numel()
    rows, grads = gi.pop()
    assert torch.allclose(grads, i.grad[rows])


def test_bpr_has_no_numba_backend():
    with pytest.raises(ConfigError, match="kernel"):
        BPR(kernel="numba")
