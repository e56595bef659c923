"""Compiled CPU backend of SML's step (numba): the maths of :func:`metricrec.models.sml.step.sml_gradients`.

The torch step batches the distances to the negatives as products over the groups of a shared draw
and builds every gradient from (B, U) weight matrices: a dozen full-batch tensors and as many
parallel regions per batch. Here, as in CML's kernel (:mod:`metricrec.models.cml.step_numba`):

1. in parallel over the pairs of the batch, the distances ``d(u,i)``, ``d(u,k)`` and ``d(i,k)`` to the
   U negatives straight from the table rows (nothing gathered), both hinges' violations, their weights
   ``a_k`` (user-centric) and ``c_k`` (item-centric, times lambda) and the losses;
2. the gradients of the active pairs into the dense buffers, in parallel over parts of the tables
   (part q owns the rows r with r % parts == q and visits the pairs in order): no write races, and each
   row sums its terms in pair order, so the result does not depend on the thread count;

then the margin gradients and the margin regulariser run in torch exactly as in the torch step (they
are a few index additions). For the same draws both backends give the same losses and gradients up
to float32 rounding (the tests check this).
"""

from __future__ import annotations

import math  # noqa: F401  (numba resolves math in the kernels' globals)

import numpy as np
import torch

from ...training.optim import GradBuffer, kernel_parts, lazy_kernels
from ...training.sampling import NegativeDraw

__all__ = ["sml_gradients_numba", "warm_up"]



def _pair_pass(numba):
    """Per pair, in parallel: the distances, both hinges, their weights and losses."""

    @numba.njit(parallel=True, fastmath=True, cache=True)
    def pair_pass(U, V, users, pos, negs, m_user, m_item, item_weight, hardest, A, C, loss_u, loss_i):
        b_count, n_neg = negs.shape
        d = U.shape[1]
        inv = np.float32(1.0 / n_neg)
        for b in numba.prange(b_count):
            u = users[b]
            p = pos[b]
            d_ui = np.float32(0.0)
            for t in range(d):
                x = U[u, t] - V[p, t]
                d_ui += x * x
            mu = m_user[u]
            ni = m_item[p]
            best_u = np.inf
            best_i = np.inf
            col_u = 0
            col_i = 0
            lu = np.float32(0.0)
            li = np.float32(0.0)
            for c in range(n_neg):
                k = negs[b, c]
                duk = np.float32(0.0)
                dik = np.float32(0.0)
                for t in range(d):
                    x = U[u, t] - V[k, t]
                    duk += x * x
                    y = V[p, t] - V[k, t]
                    dik += y * y
                vu = d_ui - duk + mu
                vi = d_ui - dik + ni
                A[b, c] = 0.0
                C[b, c] = 0.0
                if hardest:
                    if duk < best_u:
                        best_u = duk
                        col_u = c
                    if dik < best_i:
                        best_i = dik
                        col_i = c
                    continue
                if vu > 0.0:
                    A[b, c] = inv
                    lu += inv * vu
                if vi > 0.0:
                    C[b, c] = item_weight * inv
                    li += item_weight * inv * vi
            if hardest:  # the closest negative of each side, when its hinge is active
                vu = d_ui - best_u + mu
                if vu > 0.0:
                    A[b, col_u] = 1.0
                    lu = vu
                vi = d_ui - best_i + ni
                if vi > 0.0:
                    C[b, col_i] = item_weight
                    li = item_weight * vi
            loss_u[b] = lu
            loss_i[b] = li

    return pair_pass


def _scatter_pass(numba):
    """The hinge gradients into the dense buffers, race-free (rows owned by parts)."""

    @numba.njit(parallel=True, fastmath=True, cache=True)
    def scatter_pass(U, V, users, pos, negs, A, C, GU, GV, touched_u, touched_v, n_parts):
        b_count, n_neg = negs.shape
        d = U.shape[1]
        for q in numba.prange(n_parts):
            for b in range(b_count):
                sa = np.float32(0.0)
                sc = np.float32(0.0)
                for c in range(n_neg):
                    sa += A[b, c]
                    sc += C[b, c]
                if sa + sc == 0.0:
                    continue
                u = users[b]
                p = pos[b]
                if u % n_parts == q:  # dL/du = 2 (sum_k a_k v_k - sa p + sc (u - p))
                    for t in range(d):
                        g = sc * (U[u, t] - V[p, t]) - sa * V[p, t]
                        for c in range(n_neg):
                            if A[b, c] != 0.0:
                                g += A[b, c] * V[negs[b, c], t]
                        GU[u, t] += 2.0 * g
                    touched_u[u] = True
                if p % n_parts == q:  # dL/dp = 2 (sum_k c_k v_k - sc u - sa (u - p))
                    for t in range(d):
                        g = -sc * U[u, t] - sa * (U[u, t] - V[p, t])
                        for c in range(n_neg):
                            if C[b, c] != 0.0:
                                g += C[b, c] * V[negs[b, c], t]
                        GV[p, t] += 2.0 * g
                    touched_v[p] = True
                for c in range(n_neg):  # dL/dv_k = 2 a_k (u - v_k) + 2 c_k (p - v_k)
                    a = A[b, c]
                    cc = C[b, c]
                    if a == 0.0 and cc == 0.0:
                        continue
                    k = negs[b, c]
                    if k % n_parts != q:
                        continue
                    for t in range(d):
                        GV[k, t] += 2.0 * (a * (U[u, t] - V[k, t]) + cc * (V[p, t] - V[k, t]))
                    touched_v[k] = True

    return scatter_pass


_compile = lazy_kernels(_pair_pass, _scatter_pass)


def warm_up() -> None:
    """Compile (or load from numba's cache) the kernels on a tiny problem, both negative modes."""
    for hardest in (False, True):
        draw = NegativeDraw(torch.tensor([[2], [2]]), torch.tensor([[2], [2]]), torch.empty(0, dtype=torch.long),
                            torch.empty(0, dtype=torch.long), 1)
        sml_gradients_numba(torch.zeros(2, 2), torch.ones(3, 2), torch.ones(2), torch.ones(3), torch.tensor([0, 1]),
                            torch.tensor([0, 1]), draw, GradBuffer(2, 2), GradBuffer(3, 2), GradBuffer(2, 1),
                            GradBuffer(3, 1), item_weight=0.1, margin_reg=0.05, hardest=hardest)


def sml_gradients_numba(user_emb: torch.Tensor, item_emb: torch.Tensor, user_margin: torch.Tensor,
                        item_margin: torch.Tensor, users: torch.Tensor, positives: torch.Tensor, draw: NegativeDraw,
                        user_grad: GradBuffer, item_grad: GradBuffer, user_margin_grad: GradBuffer,
                        item_margin_grad: GradBuffer, *, item_weight: float, margin_reg: float,
                        hardest: bool = False) -> dict[str, float]:
    """Drop-in replacement of :func:`metricrec.models.sml.step.sml_gradients` for contiguous float32
    CPU tensors (same arguments, same buffers filled, same losses returned)."""
    from .step import _margin_regulariser

    pair_pass, scatter_pass = _compile()
    U, V = user_emb.detach().numpy(), item_emb.detach().numpy()
    u_np, p_np = users.numpy(), positives.numpy()
    negs = draw.negatives.numpy()
    b, n_neg = negs.shape
    A = np.empty((b, n_neg), dtype=np.float32)
    C = np.empty((b, n_neg), dtype=np.float32)
    loss_u = np.empty(b, dtype=np.float32)
    loss_i = np.empty(b, dtype=np.float32)
    pair_pass(U, V, u_np, p_np, negs, user_margin.detach().numpy(), item_margin.detach().numpy(),
              np.float32(item_weight), bool(hardest), A, C, loss_u, loss_i)
    scatter_pass(U, V, u_np, p_np, negs, A, C, user_grad.grad.numpy(), item_grad.grad.numpy(),
                 user_grad.touched.numpy(), item_grad.touched.numpy(), kernel_parts())
    # margins: every row of the batch (the regulariser sees the batch's users and items), as the torch step
    user_margin_grad.add(users, torch.from_numpy(A.sum(1, keepdims=True)))
    item_margin_grad.add(positives, torch.from_numpy(C.sum(1, keepdims=True)))
    margin_loss = _margin_regulariser(user_margin, item_margin, user_margin_grad, item_margin_grad, b, margin_reg)
    return {"user_loss": float(loss_u.sum(dtype=np.float64)), "item_loss": float(loss_i.sum(dtype=np.float64)),
            "margin_loss": margin_loss}
