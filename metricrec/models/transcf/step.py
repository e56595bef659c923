"""TransCF's training step: translations from neighbourhoods, the hinge and two regularisers, with
hand-written gradients.

The model (Park, Kim, Xie and Yu, "Collaborative Translational Metric Learning", ICDM 2018,
arXiv:1906.01637), with the user table ``u`` (the paper's alpha) and the item table ``v`` (beta):

- the neighbourhood embeddings ``alpha_u = mean of v_k over the items k of u`` and
  ``beta_i = mean of u_w over the users w of i`` (the training positives; 0 for a row with none);
- the translation ``r_ui = alpha_u * beta_i`` (element-wise) and the distance
  ``d(u,i) = ||u + r_ui - v_i||^2``: the user is translated towards the item by a vector specific
  to the pair;
- the hinge ``[gamma + d(u,i) - d(u,k)]_+`` over positives i and sampled negatives k, each pair with
  its own translation (``r_uk`` from k's users);
- the distance regulariser ``reg_dist = sum over positives of d(u,i)`` (``u + r_ui ~ v_i``, the
  translation principle) and the neighbourhood regulariser ``reg_nbr = sum over positives of
  ||u - alpha_u||^2 + ||v_i - beta_i||^2``, weighted by lambda_dist and lambda_nbr;
- subject to ``||u||, ||v|| <= 1`` (the trainer's ball). The paper bounds ``||r_ui|| <= 1`` too; that
  holds by construction here: alpha_u and beta_i are means of vectors in the ball, so
  ``||alpha_u * beta_i|| <= ||alpha_u|| max_t |beta_it| <= 1``.

What one batch B of positive pairs, each with U sampled negatives, computes::

    L_B = sum_{(u,i) in B} [ (1/U) sum_k [gamma + d(u,i) - d(u,k)]_+
                             + lambda_dist d(u,i) + lambda_nbr (||u - alpha_u||^2 + ||v_i - beta_i||^2) ]

the paper's sum over negatives estimated by the mean over the U sampled ones (so the lambdas keep
their meaning whatever U), the regularisers over the batch's positives as in the authors' code
(per positive pair, so a user or item counts once per positive it has). alpha and beta are
functions of the tables: gradients flow through them into every neighbour row (an item's gradient
reaches all the users of that item), as in the authors' code, where they are ``EmbeddingBag`` means.
The neighbourhood means of the whole tables are sparse products computed once per batch,
O(nnz(train) d); their gradients are the transposed products. The negatives of a shared draw are
handled as CML's and SML's steps do (batched products over each group's shared items).

In a fold-in (new users against frozen items) beta is the trained model's, fixed, and alpha comes
from the new users' rows over the frozen item table: only the user terms train.

Scores are ``-d(u,i)`` (:func:`transcf_scores`). The tests check every gradient against autograd on
:func:`transcf_loss_reference`, the batch loss written with loops.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from ...metrics import Scorer
from ...training.backends import NUMBA
from ...training.trainer import TablesStep
from ...training.optim import GradBuffer
from ...training.sampling import NegativeDraw
from .config import TransCFConfig

__all__ = ["TransCFStep", "Neighbourhoods", "transcf_gradients", "transcf_loss_reference", "transcf_scores",
           "item_features", "pair_scorer"]


class Neighbourhoods:
    """The mean operators of a binary user x item matrix R, as torch sparse matrices on a device.

    Parameters
    ----------
    liked : scipy.sparse matrix, shape (n_users, n_items)
        Non-zero entries are the positives (weights ignored).
    device : torch.device or str
    dtype : torch.dtype
        Of the tables the operators multiply.
    """

    def __init__(self, liked: sp.spmatrix, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        r = sp.csr_matrix(liked, dtype=np.float64, copy=True)
        r.eliminate_zeros()
        r.sum_duplicates()
        r.data[:] = 1.0
        self.shape = r.shape
        inv_u = 1.0 / np.maximum(np.diff(r.indptr), 1)
        inv_i = 1.0 / np.maximum(np.bincount(r.indices, minlength=r.shape[1]), 1)
        to_users = sp.diags(inv_u) @ r  # row u: 1/|N(u)| on u's items
        to_items = (r @ sp.diags(inv_i)).T  # row i: 1/|N(i)| on i's users
        self._user_mean = _torch_sparse(to_users, device, dtype)
        self._user_mean_t = _torch_sparse(to_users.T, device, dtype)
        self._item_mean = _torch_sparse(to_items, device, dtype)
        self._item_mean_t = _torch_sparse(to_items.T, device, dtype)

    def user_means(self, item: torch.Tensor) -> torch.Tensor:
        """alpha: (n_users, d), row u the mean of the item vectors of u's items (0 without any)."""
        return torch.sparse.mm(self._user_mean, item)

    def item_means(self, user: torch.Tensor) -> torch.Tensor:
        """beta: (n_items, d), row i the mean of the user vectors of i's users (0 without any)."""
        return torch.sparse.mm(self._item_mean, user)

    def items_from_user_means(self, grad: torch.Tensor) -> torch.Tensor:
        """(n_items, d) gradient on the item table of a (n_users, d) gradient on alpha."""
        return torch.sparse.mm(self._user_mean_t, grad)

    def users_from_item_means(self, grad: torch.Tensor) -> torch.Tensor:
        """(n_users, d) gradient on the user table of a (n_items, d) gradient on beta."""
        return torch.sparse.mm(self._item_mean_t, grad)


def _torch_sparse(m: sp.spmatrix, device: Any, dtype: torch.dtype) -> torch.Tensor:
    """A coalesced torch COO copy of ``m`` (COO: stable in torch, no beta warning as CSR has)."""
    c = sp.csr_matrix(m)
    c.sort_indices()
    c = c.tocoo()
    idx = torch.from_numpy(np.vstack([c.row, c.col]).astype(np.int64))
    return torch.sparse_coo_tensor(idx, torch.from_numpy(c.data), size=c.shape, dtype=dtype, device=device,
                                   check_invariants=False, is_coalesced=True)


def item_features(item: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-item factors of :func:`transcf_scores`: ``[-2 v, beta^2, 2 beta, -2 beta v]`` (n_items,
    4d) and ``||v||^2`` (n_items,)."""
    return torch.cat([-2.0 * item, beta * beta, 2.0 * beta, -2.0 * beta * item], 1), (item * item).sum(1)


def transcf_scores(user: torch.Tensor, alpha: torch.Tensor, feats: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """``-||u + alpha_u * beta_i - v_i||^2`` of every query against every item, shape (n, n_items).

    Expanded so that no (n, n_items, d) tensor is built: ``||u - v + a b||^2 = |u|^2 + |v|^2 - 2 u.v
    + (a^2).(b^2) + 2 (u a).b - 2 a.(b v)``, one product of ``[u, a^2, u a, a]`` (n, 4d) with the
    item factors of :func:`item_features`.

    Parameters
    ----------
    user, alpha : torch.Tensor, shape (n, d)
        The queries' user vectors and their neighbourhood means.
    feats : (torch.Tensor, torch.Tensor)
        :func:`item_features` of the item table and beta.
    """
    w, v_sq = feats
    q = torch.cat([user, alpha * alpha, user * alpha, alpha], 1)
    out = torch.addmm(v_sq.unsqueeze(0), q, w.T)
    return out.add_((user * user).sum(1, keepdim=True)).neg_()


def transcf_gradients(user_emb: torch.Tensor, item_emb: torch.Tensor, hoods: Neighbourhoods,
                      users: torch.Tensor, positives: torch.Tensor, draw: NegativeDraw,
                      user_grad: GradBuffer, item_grad: GradBuffer | None, *, margin: float, dist_reg: float,
                      nbr_reg: float, beta: torch.Tensor | None = None) -> dict[str, float]:
    """The batch loss ``L_B`` of the module docstring; adds its gradients into the buffers.

    Rows sharing a negative draw (:class:`~metricrec.training.sampling.NegativeDraw`) are computed
    together: with ``y = u + alpha * beta_k - v_k``, ``|y|^2`` and every sum over negatives expand
    into products of per-row factors (``u, alpha``) with per-item factors (``beta_k, beta_k^2, v_k,
    beta_k v_k``), batched matrix products over each group's shared items, so no (B, U, d) tensor
    of gathered negatives is built; the entries redrawn for one row (``fix_rows``/``fix_cols``) are
    computed on their own.

    Parameters
    ----------
    user_emb, item_emb : torch.Tensor, shapes (n_users, d), (n_items, d)
    hoods : Neighbourhoods
        Of the training positives (n_users x n_items).
    users, positives : torch.LongTensor, shape (B,)
    draw : NegativeDraw
        U sampled negatives per pair.
    user_grad : GradBuffer
        Receives the user table's gradient: the batch's users and, through beta, the users of the
        batch's items.
    item_grad : GradBuffer or None
        Receives the item table's gradient: the batch's items and, through alpha, the items of the
        batch's users. None with ``beta`` given (a fold-in: the item side is frozen).
    margin, dist_reg, nbr_reg : float
        gamma, lambda_dist, lambda_nbr.
    beta : torch.Tensor, shape (n_items, d), optional
        Fixed item neighbourhood means (a fold-in); None: computed from ``user_emb``, with gradients.

    Returns
    -------
    dict
        ``hinge_loss``, ``dist_loss`` (lambda_dist times reg_dist) and ``nbr_loss`` (lambda_nbr times
        reg_nbr; the user half only in a fold-in).
    """
    frozen = beta is not None
    alpha = hoods.user_means(item_emb)
    if beta is None:
        beta = hoods.item_means(user_emb)
    negatives, d = draw.negatives, user_emb.shape[1]
    b, n_neg = negatives.shape
    groups = _Groups(draw, b)
    u, a = user_emb.index_select(0, users), alpha.index_select(0, users)
    p, bp = item_emb.index_select(0, positives), beta.index_select(0, positives)
    x = u + a * bp - p  # (B, d): the translated user minus its positive
    d_pos = (x * x).sum(1)
    # the groups' shared items as h = [beta, beta^2, v, beta v] (n_groups, U, 4d); the redrawn entries'
    shared = draw.shared.reshape(-1)
    sv, sb = item_emb.index_select(0, shared), beta.index_select(0, shared)
    h = torch.cat([sb, sb * sb, sv, sb * sv], 1).view(*draw.shared.shape, 4 * d)
    fj = negatives[groups.fr, groups.fc]
    fv, fb = item_emb.index_select(0, fj), beta.index_select(0, fj)
    fu, fa = u.index_select(0, groups.fr), a.index_select(0, groups.fr)
    fy = fu + fa * fb - fv
    # |y|^2 = |u|^2 + [2 u a, a^2, -2 u, -2 a] . h + |v|^2
    q = torch.cat([2.0 * u * a, a * a, -2.0 * u, -2.0 * a], 1)
    d_neg = groups.rows_times_items(q, h).add_(groups.ungrouped((sv * sv).sum(1).view(draw.shared.shape)))
    d_neg.add_((u * u).sum(1, keepdim=True))
    d_neg[groups.fr, groups.fc] = (fy * fy).sum(1)
    viol = d_pos.unsqueeze(1) - d_neg + margin
    w = (viol > 0).to(viol.dtype).div_(n_neg)  # dL/d viol per (row, negative)
    c = w.sum(1, keepdim=True)
    du, dv = u - a, p - bp
    parts = {"hinge_loss": float((w * viol).sum()), "dist_loss": dist_reg * float(d_pos.sum()),
             "nbr_loss": nbr_reg * float((du * du).sum() + (0.0 if frozen else (dv * dv).sum()))}
    gx = x.mul(c + dist_reg).mul_(2.0)  # dL/dx
    # dL/dy_k = -2 w_k y_k; its sums over k need sum_k w_k h_k per row
    wg = groups.without_fixes(w)
    fw = w[groups.fr, groups.fc].unsqueeze(1)
    wh = groups.weights_times_items(wg, h).index_add_(0, groups.fr, fw * torch.cat([fb, fb * fb, fv, fb * fv], 1))
    s_b, s_bb, s_v, s_bv = wh.split(d, 1)
    g_u = gx - 2.0 * (c * u + a * s_b - s_v) + (2.0 * nbr_reg) * du
    g_a = gx * bp - 2.0 * (u * s_b + a * s_bb - s_bv) - (2.0 * nbr_reg) * du
    user_grad.add(users, g_u)
    if frozen:  # alpha's gradient would go to the frozen items, beta is fixed
        return parts
    assert item_grad is not None
    item_grad.add(positives, (2.0 * nbr_reg) * dv - gx)
    g_beta = torch.zeros_like(beta).index_add_(0, positives, gx * a - (2.0 * nbr_reg) * dv)
    # per shared item k: sums over its group's rows of w_rk [u, a, u a, a^2]
    t, total = groups.items_times_rows(wg, torch.cat([u, a, u * a, a * a], 1))
    t_u, t_a, t_ua, t_aa = t.reshape(-1, 4 * d).split(d, 1)
    s = total.reshape(-1, 1)
    live = s.squeeze(1) > 0
    item_grad.add(shared[live], (2.0 * (t_u + sb * t_a - s * sv))[live])  # -dL/dy summed: 2 w y
    g_beta.index_add_(0, shared, -2.0 * (t_ua + sb * t_aa - sv * t_a))  # dL/dy * alpha summed
    item_grad.add(fj, (2.0 * fw) * fy)
    g_beta.index_add_(0, fj, (-2.0 * fw) * fy * fa)
    # through the neighbourhood means: alpha_u feeds the items of u, beta_j the users of j
    g_alpha = torch.zeros_like(alpha).index_add_(0, users, g_a)
    _add_dense(item_grad, hoods.items_from_user_means(g_alpha))
    _add_dense(user_grad, hoods.users_from_item_means(g_beta))
    return parts


class _Groups:
    """The batch's rows in the groups of a shared negative draw: ``n_groups`` runs of ``G`` rows
    (the last padded with zero rows), each seeing the group's U shared items except at the redrawn
    entries ``(fr, fc)``, which the callers compute on their own."""

    def __init__(self, draw: NegativeDraw, b: int) -> None:
        self.b, self.g = b, draw.group_size
        self.n_groups = draw.shared.shape[0]
        self.pad = self.n_groups * self.g - b
        self.fr, self.fc = draw.fix_rows, draw.fix_cols

    def _grouped(self, x: torch.Tensor) -> torch.Tensor:
        """(B, w) rows as (n_groups, G, w)."""
        x = torch.nn.functional.pad(x, (0, 0, 0, self.pad)) if self.pad else x
        return x.view(self.n_groups, self.g, x.shape[1])

    def ungrouped(self, per_group: torch.Tensor) -> torch.Tensor:
        """(n_groups, U) values of each group's shared items as (B, U), one row per batch row (a copy)."""
        return per_group.repeat_interleave(self.g, dim=0)[: self.b]

    def without_fixes(self, w: torch.Tensor) -> torch.Tensor:
        """``w`` (B, U) with the redrawn entries zeroed (a copy when there are any)."""
        if self.fr.numel():
            w = w.clone()
            w[self.fr, self.fc] = 0.0
        return w

    def rows_times_items(self, q: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """(B, U): each row's ``q`` (B, w) against its group's shared items' ``h`` (n_groups, U, w)."""
        return torch.bmm(self._grouped(q), h.transpose(1, 2)).reshape(-1, h.shape[1])[: self.b]

    def weights_times_items(self, w: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """(B, w'): ``sum_k w_rk h_k`` per row, ``w`` (B, U), ``h`` (n_groups, U, w')."""
        return torch.bmm(self._grouped(w), h).reshape(-1, h.shape[2])[: self.b]

    def items_times_rows(self, w: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per shared item: ``sum_r w_rk r_r`` over its group's rows (n_groups, U, w') and ``sum_r w_rk``
        (n_groups, U), ``w`` (B, U), ``r`` (B, w')."""
        wg = self._grouped(w)
        return torch.bmm(wg.transpose(1, 2), self._grouped(r)), wg.sum(1)


def _add_dense(buf: GradBuffer, grad: torch.Tensor) -> None:
    """Add a whole-table gradient to ``buf``, marking the rows where it is not zero."""
    rows = (grad != 0).any(1).nonzero().squeeze(1)
    if rows.numel():
        buf.add(rows, grad.index_select(0, rows))


def transcf_loss_reference(user_emb: torch.Tensor, item_emb: torch.Tensor, liked: sp.spmatrix,
                           users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor, *,
                           margin: float, dist_reg: float, nbr_reg: float,
                           beta: torch.Tensor | None = None) -> torch.Tensor:
    """``L_B`` written directly with Python loops (neighbourhood means, translations, hinges), for
    autograd in the tests: slow, small problems only. With ``beta`` (a fold-in) the item means are
    those fixed rows and the item half of the neighbourhood regulariser, constant then, is left out."""
    r = sp.csr_matrix(liked)
    n_items = r.shape[1]
    cols = [[] for _ in range(n_items)]
    for w in range(r.shape[0]):
        for k in r.indices[r.indptr[w]: r.indptr[w + 1]]:
            cols[k].append(w)

    def alpha(w: int) -> torch.Tensor:
        items = r.indices[r.indptr[w]: r.indptr[w + 1]]
        return sum((item_emb[k] for k in items), torch.zeros_like(item_emb[0])) / max(len(items), 1)

    def item_mean(j: int) -> torch.Tensor:
        if beta is not None:
            return beta[j]
        return sum((user_emb[w] for w in cols[j]), torch.zeros_like(user_emb[0])) / max(len(cols[j]), 1)

    def dist(w: int, j: int) -> torch.Tensor:
        return ((user_emb[w] + alpha(w) * item_mean(j) - item_emb[j]) ** 2).sum()

    total = torch.zeros((), dtype=user_emb.dtype)
    for row in range(users.numel()):
        w, i = int(users[row]), int(positives[row])
        d_pos = dist(w, i)
        for k in negatives[row].tolist():
            total = total + torch.relu(margin + d_pos - dist(w, k)) / negatives.shape[1]
        total = total + dist_reg * d_pos
        total = total + nbr_reg * ((user_emb[w] - alpha(w)) ** 2).sum()
        if beta is None:
            total = total + nbr_reg * ((item_emb[i] - item_mean(i)) ** 2).sum()
    return total


class TransCFStep(TablesStep):
    """A :class:`~metricrec.training.trainer.TrainingStep` for TransCF: the torch backend (any device)
    or the compiled CPU kernel (:mod:`metricrec.models.transcf.step_numba`, backend ``"numba"``).

    Parameters
    ----------
    config : TransCFConfig
    user_emb, item_emb : torch.Tensor, shapes (n_users, d), (n_items, d)
        Trained in place by the trainer.
    train : scipy.sparse.csr_matrix, shape (n_users, n_items)
        The positives the neighbourhoods are built from.
    backend : str
    beta : torch.Tensor, shape (n_items, d), optional
        The trained model's item neighbourhood means, fixed: a fold-in (the items are frozen).
    """

    name = "TransCF"

    def __init__(self, config: TransCFConfig, user_emb: torch.Tensor, item_emb: torch.Tensor, train: sp.csr_matrix,
                 backend: str, *, beta: torch.Tensor | None = None) -> None:
        if train.shape != (user_emb.shape[0], item_emb.shape[0]):
            raise ValueError(f"train has shape {train.shape}, the tables {user_emb.shape[0]} x {item_emb.shape[0]}")
        if beta is not None and beta.shape != item_emb.shape:
            raise ValueError(f"beta must have the item table's shape {tuple(item_emb.shape)}, got {tuple(beta.shape)}")
        self.config, self.backend = config, backend
        self.user_emb, self.item_emb = user_emb, item_emb
        self.beta = beta
        self.hoods = Neighbourhoods(train, user_emb.device, user_emb.dtype)
        self._gradients, self._positives = transcf_gradients, self.hoods
        if backend == NUMBA:
            from . import step_numba

            step_numba.warm_up()  # compile (or load the cache) now, not inside the first timed epoch
            self._gradients = step_numba.transcf_gradients_numba
            self._positives = step_numba.NeighbourhoodIndex(train, item_side=beta is None)  # index arrays, once

    def batch(self, users: torch.Tensor, items: torch.Tensor, draw: NegativeDraw,
              user_grad: GradBuffer, item_grad: GradBuffer) -> tuple[float, dict[str, float]]:
        """Gradients into the buffers; (total, {hinge_loss, dist_loss, nbr_loss})."""
        cfg = self.config
        parts = self._gradients(self.user_emb, self.item_emb, self._positives, users, items, draw, user_grad,
                                None if self.beta is not None else item_grad, margin=cfg.margin,
                                dist_reg=cfg.dist_reg, nbr_reg=cfg.nbr_reg, beta=self.beta)
        return sum(parts.values()), parts

    def translations(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha, beta) of the current tables."""
        beta = self.beta if self.beta is not None else self.hoods.item_means(self.user_emb)
        return self.hoods.user_means(self.item_emb), beta

    def scorer(self) -> Scorer:
        """``-d(u,i)`` with the translations of the current tables (fixed for this scorer)."""
        alpha, beta = self.translations()
        return pair_scorer(self.user_emb, alpha, item_features(self.item_emb, beta))


def pair_scorer(user: torch.Tensor, alpha: torch.Tensor, feats: tuple[torch.Tensor, torch.Tensor]) -> Scorer:
    """``scorer(users) -> (len(users), n_items)`` tensor of :func:`transcf_scores` (the contract of
    :func:`metricrec.metrics.embedding_scorer`)."""

    def scorer(ids: np.ndarray) -> torch.Tensor:
        idx = torch.as_tensor(np.asarray(ids, dtype=np.int64), device=user.device)
        return transcf_scores(user.index_select(0, idx), alpha.index_select(0, idx), feats)

    return scorer
