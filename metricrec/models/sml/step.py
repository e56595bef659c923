"""SML's training step: the symmetric hinge loss with learned margins, and its hand-written gradients.

The loss (Li, Zhang, Zhu, Qian, Zang, Han and Hu, "Symmetric Metric Learning with Adaptive Margin
for Recommendation", AAAI 2020), with squared Euclidean distances ``d(a, b) = ||a - b||^2``:

- the user-centric hinge ``L_U = [d(u,i) - d(u,k) + m_u]_+``: the user u nearer its positive item i
  than a negative k by its own margin m_u (CML's hinge, with a margin per user);
- the item-centric hinge ``L_I = [d(u,i) - d(i,k) + n_i]_+``: the positive item nearer the user
  than the negative is to the item, by the item's own margin n_i -- the negative is pushed away from
  the positive item too;
- the margin regulariser ``L_AM = -(mean over users of m_u + mean over items of n_i)``: without it
  the hinges would shrink every margin to 0;
- ``L = L_U + lambda L_I + gamma L_AM``, subject to ``||u||, ||v|| <= 1`` (the trainer's ball) and
  ``m_u, n_i in [0, l]`` (a clamp after each margin update).

What one batch B of positive pairs, each with U sampled negatives, computes here::

    L_B = sum_{(u,i) in B} (1/U) sum_k ( [d(u,i) - d(u,k) + m_u]_+ + lambda [d(u,i) - d(i,k) + n_i]_+ )
          - gamma |B| ( mean_{u in users(B)} m_u + mean_{i in items(B)} n_i )

that is, |B| times the paper's loss per positive pair (its sum over negative items estimated by the
mean over the U sampled ones) with ``L_AM`` over the margins the batch uses (its distinct users, its
distinct positive items): the mean of L_AM's estimate over batches is L_AM's per-epoch push whatever
the batch size, every gradient stays on rows the batch touched, and the factor |B| gives the
gradients the scale of a sum, as CML's and BPR's steps (AdaGrad's accumulators start at 0.1). For an
average user the gradient on m_u balances where a fraction ``gamma`` of its hinges are active. With
``hardest=True`` each side keeps only its most violating negative instead of the mean (the
negative closest to the user, resp. to the positive item; CML's closest-of-U heuristic).

Scores are CML's: negative squared distances (ranking by Euclidean distance). The tests check every
gradient (users, items, margins) against autograd on :func:`sml_loss_reference`.
"""

from __future__ import annotations

from typing import Any

import torch

from ...metrics import Scorer, embedding_scorer
from ...training import distributed
from ...training.backends import NUMBA
from ...training.optim import GradBuffer, RowAdagrad
from ...training.sampling import NegativeDraw
from .config import SMLConfig

__all__ = ["SMLStep", "sml_gradients", "sml_loss_reference"]


def sml_gradients(user_emb: torch.Tensor, item_emb: torch.Tensor, user_margin: torch.Tensor,
                  item_margin: torch.Tensor, users: torch.Tensor, positives: torch.Tensor, draw: NegativeDraw,
                  user_grad: GradBuffer, item_grad: GradBuffer, user_margin_grad: GradBuffer,
                  item_margin_grad: GradBuffer, *, item_weight: float, margin_reg: float,
                  hardest: bool = False) -> dict[str, float]:
    """The batch loss ``L_B`` of the module docstring; adds its gradients into the four buffers.

    Rows sharing a negative draw (:class:`~metricrec.training.sampling.NegativeDraw`) are computed
    together, as CML's torch step does: distances to the negatives and every gradient through them
    are batched matrix products over the groups' shared items, so no (B, U, d) tensor of gathered
    negatives is built; the few entries redrawn for one row (``fix_rows``/``fix_cols``) are computed
    on their own.

    Parameters
    ----------
    user_emb, item_emb : torch.Tensor, shapes (n_users, d), (n_items, d)
    user_margin, item_margin : torch.Tensor, shapes (n_users,), (n_items,)
        m_u and n_i.
    users, positives : torch.LongTensor, shape (B,)
        The batch's positive pairs.
    draw : NegativeDraw
        U sampled negatives per pair.
    user_grad, item_grad : GradBuffer
        Receive the gradients w.r.t. the tables (rows with an active hinge only).
    user_margin_grad, item_margin_grad : GradBuffer, widths 1
        Receive the gradients w.r.t. the margins of the batch's users and positive items (empty
        before the call: the regulariser is spread over the rows they hold afterwards).
    item_weight, margin_reg : float
        lambda and gamma.
    hardest : bool
        Keep only the most violating negative of each side (default: the mean over all U).

    Returns
    -------
    dict
        ``user_loss`` (sum of the user-centric hinges), ``item_loss`` (lambda times the item-centric
        ones) and ``margin_loss`` (``-gamma |B| (...)``, the rank's share under data parallelism).
    """
    negatives = draw.negatives
    b, n_neg = negatives.shape
    groups = _Groups(draw, b)
    u = user_emb.index_select(0, users)
    p = item_emb.index_select(0, positives)
    shared_vecs = item_emb.index_select(0, draw.shared.reshape(-1)).view(*draw.shared.shape, -1)
    fix_vecs = item_emb.index_select(0, negatives[groups.fr, groups.fc])
    diff_up = u - p
    d_ui = (diff_up * diff_up).sum(1, keepdim=True)
    # d(x, v_k) = |x|^2 + |v_k|^2 - 2 x.v_k: the dot products of users and positives with the
    # shared negatives of their group in one batched product
    dots_u, dots_p = groups.dots(u, p, shared_vecs)
    for dots, x in ((dots_u, u), (dots_p, p)):
        dots[groups.fr, groups.fc] = (x.index_select(0, groups.fr) * fix_vecs).sum(1)
    # |v_k|^2 of the batch's negatives only (the shared draw's, then the redrawn entries'): no pass over the table
    item_sq = groups.ungrouped((shared_vecs * shared_vecs).sum(2))
    item_sq[groups.fr, groups.fc] = (fix_vecs * fix_vecs).sum(1)
    d_uk = dots_u.mul_(-2.0).add_(item_sq).add_((u * u).sum(1, keepdim=True))
    d_ik = dots_p.mul_(-2.0).add_(item_sq).add_((p * p).sum(1, keepdim=True))
    viol_u = d_ui - d_uk + user_margin.index_select(0, users)[:, None]
    viol_i = d_ui - d_ik + item_margin.index_select(0, positives)[:, None]
    a = _hinge_weights(viol_u, d_uk, hardest)  # dL/d viol_u, per (row, negative)
    c = _hinge_weights(viol_i, d_ik, hardest).mul_(item_weight)
    user_loss = float((a * viol_u).sum())  # a is 0 where the hinge is inactive
    item_loss = float((c * viol_i).sum())
    sa, sc = a.sum(1, keepdim=True), c.sum(1, keepdim=True)
    # d/du: 2 sum_k a_k (v_k - p) + 2 sc (u - p); d/dp: 2 sa (p - u) + 2 sum_k c_k (v_k - u)
    av, cv, g_shared = groups.products(a, c, u, p, shared_vecs)
    fa, fc = a[groups.fr, groups.fc][:, None], c[groups.fr, groups.fc][:, None]
    av.index_add_(0, groups.fr, fa * fix_vecs)
    cv.index_add_(0, groups.fr, fc * fix_vecs)
    g_u = (av - sa * p + sc * diff_up).mul_(2.0)
    g_p = (cv - sc * u - sa * diff_up).mul_(2.0)
    rows = ((sa + sc).squeeze(1) > 0).nonzero().squeeze(1)
    user_grad.add(users.index_select(0, rows), g_u.index_select(0, rows))
    item_grad.add(positives.index_select(0, rows), g_p.index_select(0, rows))
    # d/dv_k: 2 a_k (u - v_k) + 2 c_k (p - v_k), summed over the rows that share v_k
    live = g_shared[1].reshape(-1) > 0
    item_grad.add(draw.shared.reshape(-1)[live], g_shared[0].reshape(-1, g_shared[0].shape[-1])[live].mul_(2.0))
    g_fix = fa * u.index_select(0, groups.fr) + fc * p.index_select(0, groups.fr) - (fa + fc) * fix_vecs
    item_grad.add(negatives[groups.fr, groups.fc], g_fix.mul_(2.0))
    # margins: every row of the batch, so that the regulariser below sees the batch's users and items
    user_margin_grad.add(users, sa)
    item_margin_grad.add(positives, sc)
    margin_loss = _margin_regulariser(user_margin, item_margin, user_margin_grad, item_margin_grad, b, margin_reg)
    return {"user_loss": user_loss, "item_loss": item_loss, "margin_loss": margin_loss}


class _Groups:
    """The batch's rows in the groups of a shared negative draw: ``n_groups`` runs of ``G`` rows
    (the last padded), each seeing the group's U shared items except at the redrawn entries
    ``(fr, fc)``, whose weights the grouped products leave out."""

    def __init__(self, draw: NegativeDraw, b: int) -> None:
        self.b, self.g = b, draw.group_size
        self.n_groups = draw.shared.shape[0]
        self.pad = self.n_groups * self.g - b
        self.fr, self.fc = draw.fix_rows, draw.fix_cols

    def ungrouped(self, per_group: torch.Tensor) -> torch.Tensor:
        """(n_groups, U) values of each group's shared items as (B, U), one row per batch row (a copy)."""
        return per_group.repeat_interleave(self.g, dim=0)[: self.b]

    def _grouped(self, x: torch.Tensor) -> torch.Tensor:
        """(B, w) rows as (n_groups, G, w), zero rows padding the last group."""
        x = torch.nn.functional.pad(x, (0, 0, 0, self.pad)) if self.pad else x
        return x.view(self.n_groups, self.g, x.shape[1])

    def dots(self, u: torch.Tensor, p: torch.Tensor, vecs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, U) dot products of ``u`` and of ``p`` with their group's shared items ``vecs``
        (n_groups, U, d); the redrawn entries are left for the caller to fix."""
        both = torch.cat([self._grouped(u), self._grouped(p)], dim=1)  # (n_groups, 2G, d)
        dots = torch.bmm(both, vecs.transpose(1, 2))
        return (dots[:, : self.g].reshape(-1, vecs.shape[1])[: self.b],
                dots[:, self.g:].reshape(-1, vecs.shape[1])[: self.b])

    def products(self, a: torch.Tensor, c: torch.Tensor, u: torch.Tensor, p: torch.Tensor, vecs: torch.Tensor):
        """With the redrawn entries' weights left out: ``sum_k a_k v_k`` and ``sum_k c_k v_k`` per row
        (B, d), and per shared item ``(sum_r a_rk u_r + c_rk p_r - (a_rk + c_rk) v_k, sum_r a_rk + c_rk)``
        over the rows of its group, shapes (n_groups, U, d) and (n_groups, U)."""
        if self.fr.numel():
            a, c = a.clone(), c.clone()
            a[self.fr, self.fc] = 0.0
            c[self.fr, self.fc] = 0.0
        w = torch.cat([self._grouped(a), self._grouped(c)], dim=1)  # (n_groups, 2G, U)
        rows = torch.bmm(w, vecs)
        av = rows[:, : self.g].reshape(-1, vecs.shape[2])[: self.b]
        cv = rows[:, self.g:].reshape(-1, vecs.shape[2])[: self.b]
        both = torch.cat([self._grouped(u), self._grouped(p)], dim=1)  # (n_groups, 2G, d)
        total = w.sum(1)  # (n_groups, U)
        g = torch.baddbmm(vecs * -total.unsqueeze(2), w.transpose(1, 2), both)
        return av, cv, (g, total)


def _hinge_weights(viol: torch.Tensor, dist: torch.Tensor, hardest: bool) -> torch.Tensor:
    """(B, U) derivative of the batch's hinge sum w.r.t. each violation: ``1/U`` on the active
    entries, or 1 on the closest negative of each row when it is active (``hardest``)."""
    if not hardest:
        return (viol > 0).to(viol.dtype).div_(viol.shape[1])
    col = dist.argmin(1, keepdim=True)
    return torch.zeros_like(viol).scatter_(1, col, (viol.gather(1, col) > 0).to(viol.dtype))


def _margin_regulariser(user_margin: torch.Tensor, item_margin: torch.Tensor, user_margin_grad: GradBuffer,
                        item_margin_grad: GradBuffer, b: int, margin_reg: float) -> float:
    """Add ``-gamma |B| (mean m_u + mean n_i)`` over the buffers' touched rows to their gradients;
    its value.

    In data-parallel training the margin gradients are first summed across the ranks, so the touched
    rows are the global batch's users and items and |B| the global batch: every rank then holds the
    same gradients and takes the same margin step. The value returned is the rank's ``1 / world``
    share (the trainer sums the ranks' losses).
    """
    parallel = distributed.current()
    world = 1
    if parallel is not None:
        parallel.combine(user_margin_grad, item_margin_grad)
        b = int(round(parallel.sum_floats({"rows": float(b)})["rows"]))
        world = parallel.world
    value = 0.0
    for margin, buf in ((user_margin, user_margin_grad), (item_margin, item_margin_grad)):
        rows = buf.touched.nonzero().squeeze(1)
        if rows.numel() == 0 or margin_reg == 0:
            continue
        weight = margin_reg * b / rows.numel()
        value -= weight * float(margin.index_select(0, rows).sum())
        buf.grad.index_add_(0, rows, torch.full((rows.numel(), 1), -weight, dtype=buf.grad.dtype,
                                                device=buf.grad.device))
    return value / world


def sml_loss_reference(user_emb: torch.Tensor, item_emb: torch.Tensor, user_margin: torch.Tensor,
                       item_margin: torch.Tensor, users: torch.Tensor, positives: torch.Tensor,
                       negatives: torch.Tensor, *, item_weight: float, margin_reg: float,
                       hardest: bool = False) -> torch.Tensor:
    """``L_B`` written directly (gathered vectors, differences, ``relu``), for autograd in the tests."""
    u, p, v = user_emb[users], item_emb[positives], item_emb[negatives]
    d_ui = ((u - p) ** 2).sum(-1)[:, None]
    d_uk = ((u[:, None, :] - v) ** 2).sum(-1)
    d_ik = ((p[:, None, :] - v) ** 2).sum(-1)
    hinge_u = torch.relu(d_ui - d_uk + user_margin[users][:, None])
    hinge_i = torch.relu(d_ui - d_ik + item_margin[positives][:, None])
    if hardest:
        hinge_u = hinge_u.gather(1, d_uk.argmin(1, keepdim=True))
        hinge_i = hinge_i.gather(1, d_ik.argmin(1, keepdim=True))
    else:
        hinge_u, hinge_i = hinge_u / negatives.shape[1], hinge_i / negatives.shape[1]
    reg = user_margin[torch.unique(users)].mean() + item_margin[torch.unique(positives)].mean()
    return hinge_u.sum() + item_weight * hinge_i.sum() - margin_reg * users.numel() * reg


class SMLStep:
    """A :class:`~metricrec.training.trainer.TrainingStep` for SML: the torch backend (any device) or
    the compiled CPU kernel (:mod:`metricrec.models.sml.step_numba`, backend ``"numba"``).

    The tables go to the trainer's row-sparse optimisers through the buffers; the margins are the
    step's own parameters: it applies their gradients itself after each batch (row-sparse AdaGrad at
    ``config.margin_lr``, then the clamp to ``[0, margin_max]``), as CML+F's step trains its feature
    network. The table gradients of the batch were computed with the margins before that update.

    Parameters
    ----------
    config : SMLConfig
    user_emb, item_emb : torch.Tensor, shapes (n_users, d), (n_items, d)
        Trained in place by the trainer.
    user_margin, item_margin : torch.Tensor, shapes (n_users,), (n_items,)
        Trained in place here.
    backend : str
    train_item_margins : bool
        False for a fold-in, whose item side stays as trained.
    """

    name = "SML"

    def __init__(self, config: SMLConfig, user_emb: torch.Tensor, item_emb: torch.Tensor, user_margin: torch.Tensor,
                 item_margin: torch.Tensor, backend: str, *, train_item_margins: bool = True) -> None:
        for name, margin, table in (("user_margin", user_margin, user_emb), ("item_margin", item_margin, item_emb)):
            if margin.shape != (table.shape[0],) or not margin.is_contiguous():
                raise ValueError(f"{name} must be contiguous with shape ({table.shape[0]},), "
                                 f"got {tuple(margin.shape)}")
        self.config, self.backend = config, backend
        self.user_emb, self.item_emb = user_emb, item_emb
        self.user_margin, self.item_margin = user_margin, item_margin
        self.train_item_margins = train_item_margins
        self._gradients = sml_gradients
        if backend == NUMBA:
            from . import step_numba

            step_numba.warm_up()  # compile (or load the cache) now, not inside the first timed epoch
            self._gradients = step_numba.sml_gradients_numba
        self._margin_grads = tuple(GradBuffer(m.shape[0], 1, dtype=m.dtype, device=m.device)
                                   for m in (user_margin, item_margin))
        # a (n, 1) view: the row-sparse optimiser of the tables, applied to one-column "tables"
        self._margin_opts = tuple(RowAdagrad(m.view(-1, 1), config.margin_lr) for m in (user_margin, item_margin))

    def batch(self, users: torch.Tensor, items: torch.Tensor, draw: NegativeDraw,
              user_grad: GradBuffer, item_grad: GradBuffer) -> tuple[float, dict[str, float]]:
        """Table gradients into the buffers, a margin update; (total, {user_loss, item_loss, margin_loss})."""
        cfg = self.config
        parts = self._gradients(self.user_emb, self.item_emb, self.user_margin, self.item_margin, users, items,
                              draw, user_grad, item_grad, *self._margin_grads, item_weight=cfg.item_weight,
                              margin_reg=cfg.margin_reg, hardest=cfg.negatives == "hardest")
        self._step_margins()
        return sum(parts.values()), parts

    def _step_margins(self) -> None:
        trained = (True, self.train_item_margins)
        for margin, buf, opt, train in zip((self.user_margin, self.item_margin), self._margin_grads,
                                           self._margin_opts, trained):
            rows, grads = buf.pop()
            if not train or rows.numel() == 0:
                continue
            opt.step(rows, grads)
            margin.index_copy_(0, rows, margin.index_select(0, rows).clamp_(0.0, self.config.margin_max))

    def epoch_end(self) -> None:
        """Nothing to do between epochs."""

    def state(self) -> Any:
        """Copies of both tables and both margin vectors (the best epoch restores all four)."""
        return tuple(t.detach().clone() for t in (self.user_emb, self.item_emb, self.user_margin, self.item_margin))

    def restore(self, state: Any) -> None:
        """Put a :meth:`state` snapshot back (in place)."""
        for target, saved in zip((self.user_emb, self.item_emb, self.user_margin, self.item_margin), state):
            target.copy_(saved)

    def resume_state(self) -> Any:
        """The margins' AdaGrad accumulators, for a training checkpoint (:mod:`metricrec.training.checkpoint`)."""
        return {"user_margin_acc": self._margin_opts[0].acc, "item_margin_acc": self._margin_opts[1].acc}

    def load_resume_state(self, state: Any) -> None:
        """Put a :meth:`resume_state` back."""
        if state is not None:
            self._margin_opts[0].acc.copy_(state["user_margin_acc"])
            self._margin_opts[1].acc.copy_(state["item_margin_acc"])

    def scorer(self) -> Scorer:
        """Negative squared distances (the ranking of Euclidean distance, as CML)."""
        return embedding_scorer(self.user_emb, self.item_emb)
