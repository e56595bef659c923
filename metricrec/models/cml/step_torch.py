"""Fused CML training step: loss values and hand-written gradients for one batch.

Autograd on a ``(B, U, d)`` tensor of gathered negatives is what makes naive CML slow. This kernel
computes exactly the loss of :mod:`metricrec.losses` but

- computes squared distances to negatives as ``|u|^2 + |v|^2 - 2 u.v`` with one batched matmul per
  group of rows sharing a negative draw (see :mod:`metricrec.sampling`), never materialising the
  gathered negatives;
- writes the gradient only for the rows that matter: the hinge is active for a subset of pairs and
  only the *closest* negative of each such pair receives gradient;
- returns gradients as (row index, row gradient) pairs for a row-sparse optimiser step.

The gradients are those of ``L = L_m + lambda_c * L_c`` with respect to the user and item vectors;
:func:`metricrec.losses.metric_loss` and :func:`metricrec.losses.covariance_loss` are the reference
definitions, and the tests check this kernel against them with autograd.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...training import distributed
from ...training.optim import GradBuffer
from .losses import COV_FORMULAS, rank_weight
from ...training.sampling import NegativeDraw

__all__ = ["StepStats", "cml_step", "covariance_gradient", "covariance_terms", "add_covariance_term"]


@dataclass
class StepStats:
    """Loss values of one batch (the gradients went into the GradBuffers)."""

    metric_loss: float
    cov_loss: float
    n_active: int


def covariance_gradient(
    x: torch.Tensor, formula: str, eps: float = 1e-12, *, center_inplace: bool = False
) -> tuple[float, torch.Tensor]:
    """Value and gradient (w.r.t. ``x``) of :func:`metricrec.losses.covariance_loss`.

    With ``C = Xc^T Xc / N`` and ``S = dL/dC`` (symmetric), ``dL/dX = (2/N) Xc S``: the centring
    term vanishes because the columns of ``Xc`` sum to zero. ``center_inplace`` centres ``x``
    itself (for a scratch copy), saving one allocation.
    """
    if formula not in COV_FORMULAS:
        raise ValueError(f"unknown covariance formula {formula!r}; choose one of {COV_FORMULAS}")
    n = x.shape[0]
    xc = x.sub_(x.mean(0, keepdim=True)) if center_inplace else x - x.mean(0, keepdim=True)
    value, s = covariance_terms((xc.T @ xc) / n, n, formula, eps)
    return value, xc @ s


def covariance_terms(c: torch.Tensor, n: int, formula: str, eps: float = 1e-12) -> tuple[float, torch.Tensor]:
    """From the covariance ``C`` of ``n`` rows: the loss value and ``(2 / n^2) dL/dC``, the matrix
    that maps centred rows to their gradients (``dL/dX = Xc @ it``)."""
    diag = torch.diagonal(c)
    if formula == "paper":
        fro = torch.sqrt((c * c).sum() + eps)
        value = (fro - (diag * diag).sum()) / n
        s = c / fro
        s.diagonal().sub_(2.0 * diag)
    elif formula == "offdiag":
        value = ((c * c).sum() - (diag * diag).sum()) / n
        s = 2.0 * c
        s.diagonal().zero_()
    else:
        value = (c.sum() - diag.sum()) / n
        s = torch.ones_like(c)
        s.diagonal().zero_()
    return float(value), s.mul_(2.0 / (n * n))


def cml_step(
    user_emb: torch.Tensor,
    item_emb: torch.Tensor,
    users: torch.Tensor,
    positives: torch.Tensor,
    draw: NegativeDraw,
    user_grad: GradBuffer,
    item_grad: GradBuffer,
    *,
    margin: float,
    use_rank_weight: bool = True,
    cov_weight: float = 0.0,
    cov_formula: str = "paper",
    item_sq_norms: torch.Tensor | None = None,
) -> StepStats:
    """Loss of one batch of positive pairs; adds its gradients into ``user_grad``/``item_grad``.

    Parameters
    ----------
    user_emb, item_emb : torch.Tensor, shapes (n_users, d), (n_items, d)
    users, positives : torch.LongTensor, shape (B,)
        The batch's positive pairs (i, j).
    draw : NegativeDraw
        U sampled negatives per row (from a sampler in :mod:`metricrec.sampling`).
    user_grad, item_grad : GradBuffer
        Receive the gradients of the batch loss w.r.t. the user and item tables.
    margin : float
    use_rank_weight : bool
        WARP-style rank weight on each hinge (the paper's default) or plain triplet.
    cov_weight : float
        lambda_c; 0 disables the covariance term.
    cov_formula : str
        See :func:`metricrec.losses.covariance_loss`. It is applied to the distinct users and the
        distinct items (positives and closest negatives) of the batch, each object counted once.
    item_sq_norms : torch.Tensor, shape (n_items,), optional
        Precomputed ``|v_k|^2``; computed here when omitted.
    """
    n_items = item_emb.shape[0]
    # index_select, not advanced indexing: several times faster for row gathers on CPU
    u = user_emb.index_select(0, users)
    p = item_emb.index_select(0, positives)
    if item_sq_norms is None:
        item_sq_norms = (item_emb * item_emb).sum(1)
    diff_up = u - p
    d_pos = (diff_up * diff_up).sum(1)
    dist = _negative_distances(u, item_emb, item_sq_norms, draw)

    violation = margin + d_pos[:, None] - dist
    closest_col = dist.argmin(1)
    hinge = violation.gather(1, closest_col[:, None]).squeeze(1).clamp_(min=0.0)
    is_active = hinge > 0
    n_active = int(is_active.sum())
    if use_rank_weight:
        weight = rank_weight((violation > 0).sum(1), n_items, draw.negatives.shape[1])
    else:
        weight = torch.ones_like(hinge)
    metric_value = float((weight * hinge).sum())
    closest = draw.negatives.gather(1, closest_col[:, None]).squeeze(1)
    _scatter_hinge_gradients(u, diff_up, item_emb, users, positives, closest, weight, is_active, n_active,
                             user_grad, item_grad)
    cov_value = 0.0
    if cov_weight:
        cov_value = add_covariance_term(user_emb, item_emb, users, positives, closest, user_grad, item_grad,
                                        cov_weight, cov_formula)
    return StepStats(metric_loss=metric_value, cov_loss=cov_value, n_active=n_active)


def _negative_distances(u: torch.Tensor, item_emb: torch.Tensor, item_sq_norms: torch.Tensor,
                        draw: NegativeDraw) -> torch.Tensor:
    """(B, U) squared distances from each row's user to its negatives, without gathering a
    (B, U, d) tensor: u.v_k for every row and every shared negative of its group is one batched
    matmul (n_groups, G, d) x (n_groups, d, U); rows whose negative was redrawn are fixed up."""
    b, d = u.shape
    g, shared = draw.group_size, draw.shared
    n_groups, n_neg = shared.shape
    pad = n_groups * g - b
    u_groups = torch.nn.functional.pad(u, (0, 0, 0, pad)) if pad else u
    neg_vecs = item_emb.index_select(0, shared.reshape(-1)).view(n_groups, n_neg, d)
    dots = torch.bmm(u_groups.view(n_groups, g, d), neg_vecs.transpose(1, 2)).reshape(n_groups * g, n_neg)[:b]
    negatives = draw.negatives
    dist = torch.take(item_sq_norms, negatives).add_((u * u).sum(1, keepdim=True)).sub_(dots, alpha=2.0)
    if draw.fix_rows.numel():
        fr, fc = draw.fix_rows, draw.fix_cols
        diff = u.index_select(0, fr) - item_emb.index_select(0, negatives[fr, fc])
        dist[fr, fc] = (diff * diff).sum(1)
    return dist


def _scatter_hinge_gradients(u, diff_up, item_emb, users, positives, closest, weight, is_active, n_active,
                             user_grad: GradBuffer, item_grad: GradBuffer) -> None:
    """Gradients of w * hinge: dL/dp = 2w(p - u), dL/dn = 2w(u - n), dL/du = -(dL/dp + dL/dn)."""
    if n_active > users.numel() // 2:
        # most rows active: compute every row with weight 0 on the inactive ones (no row selection)
        w2 = weight.mul_(is_active).mul_(2.0)[:, None]
        na = item_emb.index_select(0, closest)
        g_pos = diff_up.neg_().mul_(w2)
        g_neg = u.sub(na).mul_(w2)
        rows_u, rows_p, rows_n = users, positives, closest
    else:
        active = is_active.nonzero().squeeze(1)
        w2 = (2.0 * weight.index_select(0, active))[:, None]
        na = item_emb.index_select(0, closest.index_select(0, active))
        ua = u.index_select(0, active)
        g_pos = diff_up.index_select(0, active).neg_().mul_(w2)
        g_neg = ua.sub_(na).mul_(w2)
        rows_u, rows_p, rows_n = (t.index_select(0, active) for t in (users, positives, closest))
    item_grad.add(rows_p, g_pos)
    item_grad.add(rows_n, g_neg)
    user_grad.add(rows_u, g_pos.add_(g_neg).neg_())


def add_covariance_term(
    user_emb: torch.Tensor,
    item_emb: torch.Tensor,
    users: torch.Tensor,
    positives: torch.Tensor,
    closest: torch.Tensor,
    user_grad: GradBuffer,
    item_grad: GradBuffer,
    cov_weight: float,
    cov_formula: str,
) -> float:
    """Covariance regulariser over the batch's distinct users and items (positives and closest
    negatives), each object counted once; adds ``cov_weight`` times its gradient, returns its value.

    In data-parallel training (:func:`metricrec.training.distributed.current`) the batch is the
    global one: the rows are the union over the ranks, ``C`` is summed across them, and each rank
    adds the gradient of its share of the rows (the gradient exchange then sums the shares); the
    value returned is the rank's ``1 / world`` share, so that summing the ranks' losses counts it once.
    """
    if cov_formula not in COV_FORMULAS:
        raise ValueError(f"unknown covariance formula {cov_formula!r}; choose one of {COV_FORMULAS}")
    parallel = distributed.current()
    if parallel is not None:
        return _covariance_parallel(parallel, user_emb, item_emb, users, torch.cat([positives, closest]),
                                    user_grad, item_grad, cov_weight, cov_formula)
    uu = _distinct(users, user_emb.shape[0])
    ii = _distinct(torch.cat([positives, closest]), item_emb.shape[0])
    x = torch.cat([user_emb.index_select(0, uu), item_emb.index_select(0, ii)])
    value, gx = covariance_gradient(x, cov_formula, center_inplace=True)
    gx.mul_(cov_weight)
    user_grad.add(uu, gx[: uu.numel()])
    item_grad.add(ii, gx[uu.numel():])
    return value


def _covariance_parallel(parallel: "distributed.DataParallel", user_emb, item_emb, users, items,
                         user_grad: GradBuffer, item_grad: GradBuffer, cov_weight: float, formula: str) -> float:
    """:func:`add_covariance_term` over the union of the ranks' rows; this rank's share of the gradient."""
    mu, mi = _mask(users, user_emb.shape[0]), _mask(items, item_emb.shape[0])
    mu, mi = parallel.union(mu, mi)
    uu, ii = mu.nonzero().squeeze(1), mi.nonzero().squeeze(1)
    n, n_u = uu.numel() + ii.numel(), uu.numel()
    own = torch.arange(parallel.rank, n, parallel.world, device=uu.device)  # this rank's share of the rows
    own_u, own_i = own[own < n_u], own[own >= n_u] - n_u
    x = torch.cat([user_emb.index_select(0, uu.index_select(0, own_u)), item_emb.index_select(0, ii.index_select(0, own_i))])
    total = parallel.sum_(x.sum(0, dtype=torch.float64), "covariance means")
    x.sub_((total / n).to(x.dtype))
    c = parallel.sum_(x.T @ x, "covariance matrix") / n
    value, s = covariance_terms(c, n, formula)
    gx = (x @ s).mul_(cov_weight)
    user_grad.add(uu.index_select(0, own_u), gx[: own_u.numel()])
    item_grad.add(ii.index_select(0, own_i), gx[own_u.numel():])
    return value / parallel.world


def _mask(rows: torch.Tensor, n: int) -> torch.Tensor:
    mask = torch.zeros(n, dtype=torch.bool, device=rows.device)
    mask[rows] = True
    return mask


def _distinct(rows: torch.Tensor, n: int) -> torch.Tensor:
    """Sorted distinct values of ``rows`` (in [0, n)), via a mask rather than a sort."""
    return _mask(rows, n).nonzero().squeeze(1)
