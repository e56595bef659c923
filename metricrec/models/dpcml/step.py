"""DPCML's training step: CML's hinge on the distance to a user's nearest vector, the diversity
control regulariser, and their hand-written gradients.

The loss (Bao, Xu, Yang, He, Cao and Huang, "The Minority Matters: A Diversity-Promoting
Collaborative Metric Learning Algorithm", NeurIPS 2022; arXiv 2209.15292, Sec. 2.3-2.5). Every user
u has C vectors ``g_u^1 .. g_u^C`` and every item v one, ``g_v``, all in one Euclidean space:

- the score of an item is the squared distance to the user's nearest vector (Eq. 3)::

      s(u, v) = min_c ||g_u^c - g_v||^2

- the pairwise risk (Eq. 5, 6): for a user's positive v+ and negative v-, the hinge
  ``l = [lambda + s(u, v+) - s(u, v-)]_+`` with margin lambda, averaged over the pairs;
- the diversity of a user's vectors, their average pairwise distance::

      delta_u = 1 / (2 C (C - 1)) sum_{c1, c2} ||g_u^c1 - g_u^c2||^2
              = 1 / (C - 1) sum_c ||g_u^c - mean_c g_u^c||^2

  and the diversity control regulariser (Eq. 7), a hinge on each side of the band
  ``[delta_1, delta_2]``: ``psi(u) = [delta_1 - delta_u]_+ + [delta_u - delta_2]_+``,
  ``Omega = mean over users of psi(u)``;
- the objective (Eq. 8, 9): ``R + eta * Omega`` subject to every vector in the unit ball (the
  trainer's ball holds for each of a user's C vectors alone: ``DPCMLStep.user_clip_block``).

What one batch B of positive pairs, each with U sampled negatives ``k``, computes here::

    L_B = sum_{(u,p) in B} sum_k a_{pk} [lambda + s(u,p) - s(u,k)]_+
          + eta |B| mean_{u in users(B)} psi(u)

with ``a_{pk} = 1/U`` (``negatives="all"``: the paper's DPCML1, its sum over negatives estimated by
the mean of U uniform ones) or, for ``negatives="hardest"`` (DPCML2, the default), weight only on
the sampled negative with the smallest s(u, k) -- CML's closest-of-U rule -- times CML's WARP rank
weight ``log(floor(J M / U) + 1)`` when ``use_rank_weight`` (M of the U violate the margin, J items).
That is |B| times the per-pair risk (CML's weighting of pairs: every positive pair counts once,
where Eq. 5 averages per user first) plus the regulariser over the users the batch touches, scaled
by |B| as the hinge sum is: its mean over batches is ``eta * Omega`` per pair whatever the batch
size and every gradient stays on rows the batch touched. The paper's code (statusrank/DPCML) adds
``eta * Omega`` over all users to the sum of a batch of 256 hinges, i.e. eta = 10 there is about
0.04 here, and its Omega hinges each pair of vectors, ``mean_{c1 != c2} [delta_1 - D]_+ + [D -
delta_2]_+`` with ``D = ||g^c1 - g^c2||^2``, where Eq. 7 hinges the user's average; this module
follows the paper. With C = 1 the regulariser is 0 (a single vector has no diversity) and the loss
is CML's.

The minimum passes the gradient to the vector that attains it (the nearest vector of the positive,
and of each negative, may differ): ``d s(u, v) / d g_u^c = 2 (g_u^c - g_v)`` for that c only. The
tests check every gradient against autograd on :func:`dpcml_loss_reference`, the loss written
directly.
"""

from __future__ import annotations


import numpy as np
import torch

from ...metrics import Scorer
from ...training.backends import NUMBA
from ...training.trainer import TablesStep
from ...training.optim import GradBuffer
from ...training.sampling import NegativeDraw
from ..cml.losses import rank_weight
from .config import DPCMLConfig

__all__ = ["DPCMLStep", "dpcml_gradients", "dpcml_loss_reference", "min_distance_scorer", "diversity"]


def dpcml_gradients(user_emb: torch.Tensor, item_emb: torch.Tensor, users: torch.Tensor, positives: torch.Tensor,
                    draw: NegativeDraw, user_grad: GradBuffer, item_grad: GradBuffer, *, n_vectors: int,
                    margin: float, hardest: bool = True, use_rank_weight: bool = True,
                    diversity_weight: float = 0.0, diversity_min: float = 0.0,
                    diversity_max: float = 0.0) -> dict[str, float]:
    """The batch loss ``L_B`` of the module docstring; adds its gradients into the two buffers.

    Rows sharing a negative draw (:class:`~metricrec.training.sampling.NegativeDraw`) are computed
    together, as CML's torch step does: the distances of the C vectors of a group's users to its U
    shared negatives are one batched matrix product, so no (B, C, U, d) tensor is built; the entries
    redrawn for one row are computed on their own. With ``hardest`` only the active rows' two
    touched vectors and two items get a gradient (:func:`_hardest_gradients`); the mean over the U
    puts its gradients through batched products too (:func:`_mean_gradients`).

    Parameters
    ----------
    user_emb : torch.Tensor, shape (n_users, C * d)
        Row u holds the user's C vectors side by side.
    item_emb : torch.Tensor, shape (n_items, d)
    users, positives : torch.LongTensor, shape (B,)
    draw : NegativeDraw
        U sampled negatives per pair.
    user_grad, item_grad : GradBuffer
        Receive the gradients w.r.t. the tables (touched rows only).
    n_vectors : int
        C.
    margin : float
        lambda.
    hardest : bool
        The nearest sampled negative only (DPCML2) instead of the mean over the U (DPCML1).
    use_rank_weight : bool
        CML's WARP weight on the hardest negative's hinge (``hardest`` only).
    diversity_weight, diversity_min, diversity_max : float
        eta, delta_1 and delta_2 of the regulariser (eta = 0: none).

    Returns
    -------
    dict
        ``metric_loss`` (the weighted hinge sum) and ``diversity_loss`` (``eta |B| mean psi``).
    """
    c_n = int(n_vectors)
    negatives = draw.negatives
    b, n_neg = negatives.shape
    n_items, d = item_emb.shape
    groups = _Groups(draw, b, c_n)
    # the users' rows gathered straight into the groups' layout (pad rows repeat a real user and get
    # weight 0), so that no padded copy of the (B, C, d) vectors is made
    u_all = user_emb.index_select(0, groups.padded(users)).view(-1, c_n, d)
    u = u_all[:b]
    p = item_emb.index_select(0, positives)
    diff_up = u - p[:, None, :]  # (B, C, d)
    s_pos, c_pos = (diff_up * diff_up).sum(2).min(1)  # s(u, p) and its nearest vector
    shared_vecs = item_emb.index_select(0, draw.shared.reshape(-1)).view(*draw.shared.shape, d)
    # ||g^c - v_k||^2 = |g^c|^2 + |v_k|^2 - 2 g^c.v_k: the dot products of every vector of a group's
    # users with the group's shared negatives in one batched product; redrawn entries directly
    d_neg = groups.dots(u_all, shared_vecs).mul_(-2.0)  # (B, C, U)
    d_neg.add_(groups.ungrouped((shared_vecs * shared_vecs).sum(2))[:, None, :])
    d_neg.add_(torch.linalg.vector_norm(u, dim=2, keepdim=True).square_())
    if groups.fr.numel():
        diff = u.index_select(0, groups.fr) - item_emb.index_select(0, negatives[groups.fr, groups.fc])[:, None, :]
        d_neg[groups.fr, :, groups.fc] = (diff * diff).sum(2)
    s_neg, c_neg = d_neg.min(1)  # (B, U): s(u, k) and the vector attaining it
    viol = s_neg.neg().add_(s_pos[:, None]).add_(margin)
    if hardest:
        metric_loss = _hardest_gradients(item_emb, users, positives, negatives, u, diff_up, c_pos, s_neg, c_neg,
                                         viol, user_grad, item_grad, use_rank_weight)
    else:
        metric_loss = _mean_gradients(item_emb, users, positives, negatives, groups, u_all, u, diff_up, c_pos,
                                      shared_vecs, c_neg, viol, user_grad, item_grad)
    div_loss = 0.0
    if diversity_weight and c_n > 1:
        div_loss = _diversity_term(user_emb, users, user_grad, c_n, d, b * float(diversity_weight),
                                   float(diversity_min), float(diversity_max))
    return {"metric_loss": metric_loss, "diversity_loss": div_loss}


def _hardest_gradients(item_emb, users, positives, negatives, u, diff_up, c_pos, s_neg, c_neg, viol,
                       user_grad: GradBuffer, item_grad: GradBuffer, use_rank_weight: bool) -> float:
    """DPCML2: the hinge of each row's nearest sampled negative k* (rank-weighted), as CML's step
    computes it -- only the active rows' two touched vectors (the positive's nearest, c+, and k*'s
    nearest, c*) and two items receive a gradient:

    ``d/dg^{c+} = 2 w (g^{c+} - p)``, ``d/dp = -2 w (g^{c+} - p)``, ``d/dg^{c*} = -2 w (g^{c*} - v)``,
    ``d/dv = 2 w (g^{c*} - v)``. The weighted hinge sum is returned."""
    n_neg = viol.shape[1]
    c_n, d = u.shape[1], u.shape[2]
    col = s_neg.argmin(1)
    hinge = viol.gather(1, col[:, None]).squeeze(1)
    weight = (hinge > 0).to(hinge.dtype)
    if use_rank_weight:
        weight = weight * rank_weight((viol > 0).sum(1), item_emb.shape[0], n_neg).to(hinge.dtype)
    value = float((weight * hinge.clamp(min=0.0)).sum())
    act = (weight > 0).nonzero().squeeze(1)
    if act.numel() == 0:
        return value
    w2 = (2.0 * weight.index_select(0, act))[:, None]
    col_a = col.index_select(0, act)
    c_plus = c_pos.index_select(0, act)
    c_star = c_neg[act, col_a]
    neg_ids = negatives[act, col_a]
    g_pos = diff_up[act, c_plus].mul_(w2)  # 2 w (g^{c+} - p)
    g_neg = u[act, c_star].sub_(item_emb.index_select(0, neg_ids)).mul_(w2)  # 2 w (g^{c*} - v)
    rows = users.index_select(0, act)
    # the buffer's rows are C vectors side by side: a (n_users * C, d) view adds each to its own
    flat = user_grad.grad.view(-1, d)
    flat.index_add_(0, rows * c_n + c_plus, g_pos)
    flat.index_add_(0, rows * c_n + c_star, g_neg.neg())
    user_grad.touched[rows] = True
    item_grad.add(positives.index_select(0, act), g_pos.neg_())
    item_grad.add(neg_ids, g_neg)
    return value


def _mean_gradients(item_emb, users, positives, negatives, groups, u_all, u, diff_up, c_pos, shared_vecs, c_neg, viol,
                    user_grad: GradBuffer, item_grad: GradBuffer) -> float:
    """DPCML1: the mean of the hinges of the U sampled negatives; every active (row, negative) entry
    puts its gradient on the vector nearest that negative, through the groups' batched products.
    The hinge sum is returned."""
    b, n_neg = viol.shape
    c_n, d = u.shape[1], u.shape[2]
    a = (viol > 0).to(viol.dtype).div_(n_neg)  # dL / d viol, per (row, negative)
    value = float((a * viol).sum())  # a is 0 where the hinge is inactive
    sa = a.sum(1)
    # A[b, c, k]: a_bk on the vector nearest negative k, 0 on the others
    big_a = viol.new_zeros(b, c_n, n_neg)
    big_a.scatter_(1, c_neg[:, None, :], a[:, None, :])
    av, (g_items, total) = groups.products(big_a, u_all, shared_vecs)  # sum_k A_bck v_k (shared part); per item
    fix_items = negatives[groups.fr, groups.fc]
    fix_vecs = item_emb.index_select(0, fix_items)
    fa = a[groups.fr, groups.fc]
    fcv = c_neg[groups.fr, groups.fc]
    av.index_put_((groups.fr, fcv), fa[:, None] * fix_vecs, accumulate=True)
    # d/dg^c: 2 sa [c = c+] (g^c - p) - 2 (sum_k A_bck) g^c + 2 sum_k A_bck v_k
    w_pos = sa.new_zeros(b, c_n).scatter_(1, c_pos[:, None], sa[:, None])
    g_u = diff_up * w_pos[:, :, None]
    g_u.sub_(u * big_a.sum(2, keepdim=True)).add_(av).mul_(2.0)
    # d/dp: -2 sa (g^{c+} - p)
    g_p = diff_up.gather(1, c_pos[:, None, None].expand(b, 1, d)).squeeze(1).mul_(sa[:, None]).mul_(-2.0)
    rows = (sa > 0).nonzero().squeeze(1)
    user_grad.add(users.index_select(0, rows), g_u.index_select(0, rows).reshape(-1, c_n * d))
    item_grad.add(positives.index_select(0, rows), g_p.index_select(0, rows))
    # d/dv_k: 2 sum_{b, c} A_bck (g_b^c - v_k), over the rows sharing v_k, and per redrawn entry
    live = total.reshape(-1) > 0
    item_grad.add(groups.shared.reshape(-1)[live], g_items.reshape(-1, d)[live].mul_(2.0))
    keep = (fa > 0).nonzero().squeeze(1)
    if keep.numel():
        nearest = u[groups.fr.index_select(0, keep), fcv.index_select(0, keep)]
        item_grad.add(fix_items.index_select(0, keep),
                      (nearest - fix_vecs.index_select(0, keep)).mul_(2.0 * fa.index_select(0, keep)[:, None]))
    return value


def diversity(vectors: torch.Tensor) -> torch.Tensor:
    """delta_u of each user (the paper's average pairwise distance, Sec. 2.4): the sum of squared
    distances of its C vectors from their mean, over C - 1.

    Parameters
    ----------
    vectors : torch.Tensor, shape (n, C, d)

    Returns
    -------
    torch.Tensor, shape (n,)
        Zeros when C = 1.
    """
    c_n = vectors.shape[1]
    if c_n < 2:
        return vectors.new_zeros(vectors.shape[0])
    centred = vectors - vectors.mean(1, keepdim=True)
    return (centred * centred).sum((1, 2)) / (c_n - 1)


def _diversity_term(user_emb: torch.Tensor, users: torch.Tensor, user_grad: GradBuffer, c_n: int, d: int,
                    weight_total: float, low: float, high: float) -> float:
    """Add ``weight_total * mean_{u in users} psi(u)`` over the distinct users to their gradients;
    its value. ``d delta_u / d g^c = 2 (g^c - mean) / (C - 1)``."""
    uniq = torch.unique(users)
    g = user_emb.index_select(0, uniq).view(-1, c_n, d)
    centred = g - g.mean(1, keepdim=True)
    delta = (centred * centred).sum((1, 2)) / (c_n - 1)
    weight = weight_total / uniq.numel()
    value = weight * float((torch.clamp(low - delta, min=0.0) + torch.clamp(delta - high, min=0.0)).sum())
    slope = (delta > high).to(g.dtype) - (delta < low).to(g.dtype)  # d psi / d delta
    rows = (slope != 0).nonzero().squeeze(1)
    if rows.numel():
        scale = (2.0 * weight / (c_n - 1)) * slope.index_select(0, rows)[:, None, None]
        grad = centred.index_select(0, rows).mul_(scale)
        user_grad.add(uniq.index_select(0, rows), grad.reshape(-1, c_n * d))
    return value


class _Groups:
    """The batch's rows in the groups of a shared negative draw: ``n_groups`` runs of ``G`` rows (the
    last padded), each row C vectors, each group seeing its U shared items except at the redrawn
    entries ``(fr, fc)``, whose weights the grouped products leave out."""

    def __init__(self, draw: NegativeDraw, b: int, c_n: int) -> None:
        self.b, self.g, self.c = b, draw.group_size, c_n
        self.shared = draw.shared
        self.n_groups = draw.shared.shape[0]
        self.pad = self.n_groups * self.g - b
        self.fr, self.fc = draw.fix_rows, draw.fix_cols

    def padded(self, rows: torch.Tensor) -> torch.Tensor:
        """``rows`` (B,) extended to the groups' n_groups * G rows by repeating its first entry."""
        return torch.cat([rows, rows[:1].expand(self.pad)]) if self.pad else rows

    def ungrouped(self, per_group: torch.Tensor) -> torch.Tensor:
        """(n_groups, U) values of each group's shared items as (B, U), one row per batch row."""
        return per_group.repeat_interleave(self.g, dim=0)[: self.b]

    def _grouped(self, x: torch.Tensor) -> torch.Tensor:
        """(B or n_groups * G, C, w) as (n_groups, G * C, w); a (B, ...) tensor is zero-padded."""
        if x.shape[0] != self.n_groups * self.g:
            x = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, self.pad))
        return x.reshape(self.n_groups, self.g * self.c, x.shape[2])

    def _ungrouped_rows(self, x: torch.Tensor) -> torch.Tensor:
        """(n_groups, G * C, w) back to (B, C, w)."""
        return x.reshape(self.n_groups * self.g, self.c, x.shape[2])[: self.b]

    def dots(self, u_all: torch.Tensor, vecs: torch.Tensor) -> torch.Tensor:
        """(B, C, U) dot products of every vector of the padded rows ``u_all`` (n_groups * G, C, d)
        with their group's shared items ``vecs`` (n_groups, U, d); the redrawn entries are left for
        the caller to fix."""
        return self._ungrouped_rows(torch.bmm(self._grouped(u_all), vecs.transpose(1, 2)))

    def products(self, big_a: torch.Tensor, u_all: torch.Tensor, vecs: torch.Tensor):
        """With the redrawn entries' weights left out: ``sum_k A_bck v_k`` per row and vector
        (B, C, d), and per shared item ``(sum_{b,c} A_bck (g_b^c - v_k), sum_{b,c} A_bck)`` over the
        rows of its group, shapes (n_groups, U, d) and (n_groups, U); ``big_a`` is (B, C, U) and
        ``u_all`` the padded rows (their pad rows meet zero weights)."""
        if self.fr.numel():
            big_a = big_a.clone()
            big_a[self.fr, :, self.fc] = 0.0
        w = self._grouped(big_a)  # (n_groups, G * C, U)
        av = self._ungrouped_rows(torch.bmm(w, vecs))
        total = w.sum(1)  # (n_groups, U)
        g = torch.baddbmm(vecs * -total.unsqueeze(2), w.transpose(1, 2), self._grouped(u_all))
        return av, (g, total)


def dpcml_loss_reference(user_emb: torch.Tensor, item_emb: torch.Tensor, users: torch.Tensor,
                         positives: torch.Tensor, negatives: torch.Tensor, *, n_vectors: int, margin: float,
                         hardest: bool = True, use_rank_weight: bool = True, diversity_weight: float = 0.0,
                         diversity_min: float = 0.0, diversity_max: float = 0.0) -> torch.Tensor:
    """``L_B`` written directly from the paper's definitions (every pair of vectors, every
    difference gathered, ``relu``), for autograd in the tests.

    Parameters as :func:`dpcml_gradients`, with the (B, U) ``negatives`` themselves.
    """
    b, n_neg = negatives.shape
    d = item_emb.shape[1]
    g = user_emb[users].reshape(b, n_vectors, d)
    s_pos = ((g - item_emb[positives][:, None, :]) ** 2).sum(-1).min(1).values  # Eq. 3
    s_neg = ((g[:, :, None, :] - item_emb[negatives][:, None, :, :]) ** 2).sum(-1).min(1).values
    hinge = torch.relu(margin + s_pos[:, None] - s_neg)  # Eq. 6
    if hardest:
        col = s_neg.argmin(1, keepdim=True)
        loss = hinge.gather(1, col).squeeze(1)
        if use_rank_weight:
            n_viol = (margin + s_pos[:, None] - s_neg > 0).sum(1)
            loss = loss * rank_weight(n_viol, item_emb.shape[0], n_neg).to(loss.dtype)
        loss = loss.sum()
    else:
        loss = hinge.sum() / n_neg
    if diversity_weight and n_vectors > 1:
        uniq = torch.unique(users)
        vecs = user_emb[uniq].reshape(-1, n_vectors, d)
        pair = ((vecs[:, :, None, :] - vecs[:, None, :, :]) ** 2).sum(-1)  # (n, C, C), every ordered pair
        delta = pair.sum((1, 2)) / (2 * n_vectors * (n_vectors - 1))
        psi = torch.relu(diversity_min - delta) + torch.relu(delta - diversity_max)  # Eq. 7
        loss = loss + diversity_weight * b * psi.mean()
    return loss


def min_distance_scorer(user_emb: torch.Tensor, item_emb: torch.Tensor, n_vectors: int) -> Scorer:
    """Scorer of :mod:`metricrec.metrics`: ``scorer(users) -> (len(users), n_items)`` tensor of
    ``-min_c ||g_u^c - g_v||^2`` (higher is better), on the tables' device: one GEMM over the users'
    C vectors, then the maximum over each user's C rows."""
    c_n = int(n_vectors)
    v = item_emb.detach()
    vt = v.T.contiguous()
    v_sq = (v * v).sum(1)
    d = v.shape[1]

    def scorer(users: np.ndarray) -> torch.Tensor:
        idx = torch.as_tensor(np.asarray(users, dtype=np.int64), device=user_emb.device)
        ub = user_emb.detach().index_select(0, idx).reshape(-1, d)
        out = torch.addmm(v_sq.unsqueeze(0), ub, vt, beta=-1.0, alpha=2.0).sub_((ub * ub).sum(1, keepdim=True))
        return out.view(idx.numel(), c_n, -1).amax(1)

    return scorer


class DPCMLStep(TablesStep):
    """A :class:`~metricrec.training.trainer.TrainingStep` for DPCML: the torch backend (any device), or
    the compiled CPU kernel of DPCML2 (:mod:`metricrec.models.dpcml.step_numba`, backend ``"numba"``).

    Parameters
    ----------
    config : DPCMLConfig
    user_emb : torch.Tensor, shape (n_users, C * d)
    item_emb : torch.Tensor, shape (n_items, d)
        Trained in place by the trainer.
    backend : str

    Attributes
    ----------
    user_clip_block : int
        d: the trainer keeps each of a user's C vectors in the ball alone.
    """

    name = "DPCML"

    def __init__(self, config: DPCMLConfig, user_emb: torch.Tensor, item_emb: torch.Tensor, backend: str) -> None:
        width = config.n_vectors * item_emb.shape[1]
        if user_emb.dim() != 2 or user_emb.shape[1] != width:
            raise ValueError(f"user_emb must have {config.n_vectors} x {item_emb.shape[1]} = {width} columns, "
                             f"got shape {tuple(user_emb.shape)}")
        self.config, self.backend = config, backend
        self.user_emb, self.item_emb = user_emb, item_emb
        self.user_clip_block = int(item_emb.shape[1])
        self._hardest_numba = None
        if backend == NUMBA:
            if config.negatives != "hardest":
                raise ValueError("the numba backend computes DPCML2 (negatives='hardest') only")
            from . import step_numba

            step_numba.warm_up()  # compile (or load the cache) now, not inside the first timed epoch
            self._hardest_numba = step_numba.dpcml_hardest_numba

    def batch(self, users: torch.Tensor, items: torch.Tensor, draw: NegativeDraw,
              user_grad: GradBuffer, item_grad: GradBuffer) -> tuple[float, dict[str, float]]:
        """Gradients into the buffers; (total, {metric_loss, diversity_loss})."""
        cfg = self.config
        if self._hardest_numba is not None:
            metric = self._hardest_numba(self.user_emb, self.item_emb, users, items, draw, user_grad, item_grad,
                                         n_vectors=cfg.n_vectors, margin=cfg.margin,
                                         use_rank_weight=cfg.use_rank_weight)
            div = 0.0
            if cfg.diversity_weight and cfg.n_vectors > 1:
                div = _diversity_term(self.user_emb, users, user_grad, cfg.n_vectors, self.item_emb.shape[1],
                                      users.numel() * float(cfg.diversity_weight), float(cfg.diversity_min),
                                      float(cfg.diversity_max))
            parts = {"metric_loss": metric, "diversity_loss": div}
            return sum(parts.values()), parts
        parts = dpcml_gradients(self.user_emb, self.item_emb, users, items, draw, user_grad, item_grad,
                                n_vectors=cfg.n_vectors, margin=cfg.margin, hardest=cfg.negatives == "hardest",
                                use_rank_weight=cfg.use_rank_weight, diversity_weight=cfg.diversity_weight,
                                diversity_min=cfg.diversity_min, diversity_max=cfg.diversity_max)
        return sum(parts.values()), parts

    def scorer(self) -> Scorer:
        """``-min_c ||g_u^c - g_v||^2`` (:func:`min_distance_scorer`)."""
        return min_distance_scorer(self.user_emb, self.item_emb, self.config.n_vectors)
