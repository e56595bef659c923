"""The fused kernel against the reference losses with autograd, and the losses by hand."""

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from metricrec.training.optim import GradBuffer
from metricrec.models.cml.step_torch import cml_step, covariance_gradient
from metricrec.models.cml.losses import covariance_loss, metric_loss, rank_weight
from metricrec.training.sampling import UniformSampler


def test_rank_weight_by_hand():
    # J = 100 items, U = 10 samples: M = 0 -> log(1) = 0; M = 3 -> floor(30) -> log 31; M = 10 -> log 101
    w = rank_weight(torch.tensor([0, 3, 10]), 100, 10)
    assert torch.allclose(w, torch.tensor([0.0, math.log(31.0), math.log(101.0)]))
    # floor matters: J = 7, U = 3, M = 2 -> floor(14 / 3) = 4 -> log 5
    assert rank_weight(torch.tensor([2]), 7, 3).item() == pytest.approx(math.log(5.0))


def test_metric_loss_by_hand():
    # 1-d embeddings: u = 0, p = 0.5 (d_pos = 0.25); negatives at 0.6, 2.0, 0.1 (d^2 = .36, 4, .01)
    u = torch.tensor([[0.0]])
    p = torch.tensor([[0.5]])
    n = torch.tensor([[[0.6], [2.0], [0.1]]])
    # margin 1: violations 1 + .25 - d^2 = .89, -2.75, 1.24 -> M = 2, closest is 0.1 -> hinge 1.24
    # J = 30: rank = floor(30 * 2 / 3) = 20 -> w = log 21
    loss = metric_loss(u, p, n, margin=1.0, n_items=30)
    assert loss.item() == pytest.approx(math.log(21.0) * 1.24, rel=1e-6)
    plain = metric_loss(u, p, n, margin=1.0, n_items=30, use_rank_weight=False)
    assert plain.item() == pytest.approx(1.24, rel=1e-6)
    # without the 0.1 negative and with margin 0.1: .1 + .25 - .36 < 0, so no impostor and no loss
    assert metric_loss(u, p, n[:, :2], margin=0.1, n_items=30).item() == 0.0


def test_covariance_formulas_by_hand():
    # rows (objects): (1, 0), (-1, 0), (0, 2), (0, -2): means 0, C = [[0.5, 0], [0, 2]] / no covariance
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
    c_fro = math.sqrt(0.5**2 + 2.0**2)
    assert covariance_loss(x, "paper").item() == pytest.approx((c_fro - (0.25 + 4.0)) / 4, rel=1e-6)
    assert covariance_loss(x, "offdiag").item() == pytest.approx(0.0, abs=1e-7)
    # correlated: (1, 1), (-1, -1): C = [[1, 1], [1, 1]]; off-diagonal sum 2, squares 2
    y = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    assert covariance_loss(y, "offdiag").item() == pytest.approx(2.0 / 2)
    assert covariance_loss(y, "tf_signed").item() == pytest.approx(2.0 / 2)
    assert covariance_loss(y, "paper").item() == pytest.approx((2.0 - 2.0) / 2, abs=1e-6)
    with pytest.raises(ValueError, match="unknown covariance formula"):
        covariance_loss(y, "nope")


@pytest.mark.parametrize("formula", ["paper", "offdiag", "tf_signed"])
def test_covariance_gradient_matches_autograd(formula):
    x = torch.randn(37, 5, dtype=torch.float64)
    value, grad = covariance_gradient(x, formula)
    xr = x.clone().requires_grad_(True)
    ref = covariance_loss(xr, formula)
    ref.backward()
    assert value == pytest.approx(ref.item(), rel=1e-9, abs=1e-12)
    assert torch.allclose(grad, xr.grad, atol=1e-10)


def _problem(seed=0, n_users=30, n_items=50, d=6, density=0.2):
    rng = np.random.default_rng(seed)
    train = sp.random(n_users, n_items, density=density, random_state=rng, format="csr")
    train.data[:] = 1.0
    gen = torch.Generator().manual_seed(seed)
    ue = torch.randn(n_users, d, generator=gen, dtype=torch.float64) * 0.4
    ie = torch.randn(n_items, d, generator=gen, dtype=torch.float64) * 0.4
    rows = np.repeat(np.arange(n_users), np.diff(train.indptr))
    return train, ue, ie, torch.from_numpy(rows), torch.from_numpy(train.indices.astype(np.int64))


@pytest.mark.parametrize("group_size", [1, 4, 7])
@pytest.mark.parametrize("rank_w", [True, False])
@pytest.mark.parametrize("cov_weight", [0.0, 3.0])
@pytest.mark.parametrize("margin", [0.8, -1.5])  # most rows active (dense path) / few (row selection; any margin value is valid maths)
def test_kernel_matches_reference_autograd(group_size, rank_w, cov_weight, margin):
    train, ue, ie, users, pos = _problem()
    sampler = UniformSampler(train, seed=1)
    draw = sampler.sample(users, 5, group_size)
    ug, ig = GradBuffer(*ue.shape, dtype=ue.dtype), GradBuffer(*ie.shape, dtype=ie.dtype)
    stats = cml_step(ue, ie, users, pos, draw, ug, ig, margin=margin, use_rank_weight=rank_w,
                     cov_weight=cov_weight, cov_formula="paper")

    # reference: gather the (B, U, d) negatives and let autograd differentiate the plain formulas
    uer, ier = ue.clone().requires_grad_(True), ie.clone().requires_grad_(True)
    lm = metric_loss(uer[users], ier[pos], ier[draw.negatives], margin=margin, n_items=ie.shape[0],
                     use_rank_weight=rank_w)
    total = lm
    if cov_weight:
        dist = ((ue[users][:, None, :] - ie[draw.negatives]) ** 2).sum(-1)
        closest = draw.negatives.gather(1, dist.argmin(1)[:, None]).squeeze(1)
        uu = torch.unique(users)
        ii = torch.unique(torch.cat([pos, closest]))
        lc = covariance_loss(torch.cat([uer[uu], ier[ii]]), "paper")
        assert stats.cov_loss == pytest.approx(lc.item(), rel=1e-9)
        total = lm + cov_weight * lc
    total.backward()
    assert stats.metric_loss == pytest.approx(lm.item(), rel=1e-9)
    assert 0 < stats.n_active
    assert (stats.n_active > users.numel() // 2) == (margin > 0)  # both code paths are exercised
    assert torch.allclose(ug.grad, uer.grad, atol=1e-9)
    assert torch.allclose(ig.grad, ier.grad, atol=1e-9)
    rows, grads = ug.pop()
    assert torch.equal(rows, torch.nonzero(uer.grad.abs().sum(1) > 0).squeeze(1)) or cov_weight
    assert float(ug.grad.abs().sum()) == 0.0 and not ug.touched.any()
