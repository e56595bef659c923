"""Compiled CPU backend of DPCML's default step (numba): the maths of the ``hardest`` path of
:func:`metricrec.models.dpcml.step.dpcml_gradients` (DPCML2, CML's closest-of-U rule with its rank
weight).

As CML's kernel (:mod:`metricrec.models.cml.step_numba`):

1. in parallel over the pairs, the distances of the user's C vectors to the positive and to each of
   the U negatives straight from the rows (nothing gathered): ``s(u,p) = min_c`` and the vector ``c+``
   attaining it, each negative's ``s(u,k)`` and its nearest vector, the impostor count M, the nearest
   negative ``k*`` with its vector ``c*``, and the rank-weighted hinge;
2. the gradients of the active pairs into the dense buffers, in parallel over parts of the tables
   (part q owns the rows r with r % parts == q and visits the pairs in order): no write races, each
   row sums its terms in pair order, so the result does not depend on the thread count.

The diversity regulariser (a few operations over the batch's distinct users) runs in torch as in
the torch step. For the same draws both backends give the same losses and gradients up to float32
rounding (the tests check this). ``negatives="all"`` (DPCML1) has the torch step only.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ...training.optim import GradBuffer, kernel_parts, lazy_kernels
from ...training.sampling import NegativeDraw

__all__ = ["dpcml_hardest_numba", "warm_up"]



def _pair_pass(numba):
    @numba.njit(parallel=True, fastmath=True, cache=True)
    def pair_pass(U, V, users, pos, negs, n_vec, margin, n_items, use_rank, w_out, h_out, cp_out, cs_out, k_out):
        b_count, n_neg = negs.shape
        d = V.shape[1]
        for b in numba.prange(b_count):
            u = users[b]
            p = pos[b]
            s_pos = np.inf
            c_plus = 0
            for c in range(n_vec):
                dist = np.float32(0.0)
                off = c * d
                for t in range(d):
                    x = U[u, off + t] - V[p, t]
                    dist += x * x
                if dist < s_pos:  # the first nearest vector on ties, as torch's min
                    s_pos = dist
                    c_plus = c
            best = np.inf
            best_k = 0
            best_c = 0
            impostors = 0
            for j in range(n_neg):
                k = negs[b, j]
                s_k = np.inf
                c_k = 0
                for c in range(n_vec):
                    dist = np.float32(0.0)
                    off = c * d
                    for t in range(d):
                        x = U[u, off + t] - V[k, t]
                        dist += x * x
                    if dist < s_k:
                        s_k = dist
                        c_k = c
                if margin + s_pos - s_k > 0.0:
                    impostors += 1
                if s_k < best:
                    best = s_k
                    best_k = k
                    best_c = c_k
            hinge = margin + s_pos - best
            cp_out[b] = c_plus
            cs_out[b] = best_c
            k_out[b] = best_k
            if hinge > 0.0:
                w = math.log(math.floor(n_items * impostors / n_neg) + 1.0) if use_rank else 1.0
                w_out[b] = w
                h_out[b] = w * hinge
            else:
                w_out[b] = 0.0
                h_out[b] = 0.0

    return pair_pass


def _scatter_pass(numba):
    @numba.njit(parallel=True, fastmath=True, cache=True)
    def scatter_pass(U, V, users, pos, cp, cs, kk, w, GU, GV, touched_u, touched_v, n_parts):
        d = V.shape[1]
        for q in numba.prange(n_parts):
            for b in range(users.shape[0]):
                if w[b] == 0.0:
                    continue
                u = users[b]
                p = pos[b]
                k = kk[b]
                w2 = 2.0 * w[b]
                op = cp[b] * d
                on = cs[b] * d
                if u % n_parts == q:  # d/dg^{c+} = 2w (g^{c+} - p); d/dg^{c*} = -2w (g^{c*} - v_k)
                    for t in range(d):
                        GU[u, op + t] += w2 * (U[u, op + t] - V[p, t])
                    for t in range(d):
                        GU[u, on + t] -= w2 * (U[u, on + t] - V[k, t])
                    touched_u[u] = True
                if p % n_parts == q:  # d/dp = -2w (g^{c+} - p)
                    for t in range(d):
                        GV[p, t] -= w2 * (U[u, op + t] - V[p, t])
                    touched_v[p] = True
                if k % n_parts == q:  # d/dv_k = 2w (g^{c*} - v_k)
                    for t in range(d):
                        GV[k, t] += w2 * (U[u, on + t] - V[k, t])
                    touched_v[k] = True

    return scatter_pass


_compile = lazy_kernels(_pair_pass, _scatter_pass)


def warm_up() -> None:
    """Compile (or load from numba's cache) the kernels on a tiny problem."""
    draw = NegativeDraw(torch.tensor([[2], [2]]), torch.tensor([[2], [2]]), torch.empty(0, dtype=torch.long),
                        torch.empty(0, dtype=torch.long), 1)
    dpcml_hardest_numba(torch.zeros(2, 4), torch.ones(3, 2), torch.tensor([0, 1]), torch.tensor([0, 1]), draw,
                        GradBuffer(2, 4), GradBuffer(3, 2), n_vectors=2, margin=1.0)


def dpcml_hardest_numba(user_emb: torch.Tensor, item_emb: torch.Tensor, users: torch.Tensor, positives: torch.Tensor,
                        draw: NegativeDraw, user_grad: GradBuffer, item_grad: GradBuffer, *, n_vectors: int,
                        margin: float, use_rank_weight: bool = True) -> float:
    """The weighted hinge sum of DPCML2 over the batch; its gradients added into the buffers (float32,
    contiguous CPU tensors; the user rows hold the C vectors side by side)."""
    pair_pass, scatter_pass = _compile()
    U, V = user_emb.detach().numpy(), item_emb.detach().numpy()
    u_np, p_np = users.numpy(), positives.numpy()
    negs = draw.negatives.numpy()
    b = u_np.shape[0]
    w = np.empty(b, dtype=np.float32)
    h = np.empty(b, dtype=np.float32)
    cp = np.empty(b, dtype=np.int64)
    cs = np.empty(b, dtype=np.int64)
    kk = np.empty(b, dtype=np.int64)
    pair_pass(U, V, u_np, p_np, negs, int(n_vectors), np.float32(margin), V.shape[0], bool(use_rank_weight),
              w, h, cp, cs, kk)
    scatter_pass(U, V, u_np, p_np, cp, cs, kk, w, user_grad.grad.numpy(), item_grad.grad.numpy(),
                 user_grad.touched.numpy(), item_grad.touched.numpy(), kernel_parts())
    return float(h.sum(dtype=np.float64))
