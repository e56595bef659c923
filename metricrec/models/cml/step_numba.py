"""Compiled CPU backend of the CML step (numba), the same maths as :func:`metricrec.models.cml.step_torch.cml_step`.

On a CPU the torch step is bound by memory traffic and by the number of operator calls: every
intermediate (gathered rows, differences, distances) is a full ``(B, d)`` or ``(B, U)`` tensor, and
each operator is a parallel region whose threads must meet. This backend fuses the per-pair work:

1. in parallel over the pairs of the batch, it computes ``d(i,j)^2`` and the distance to each of
   the U sampled negatives straight from the embedding rows (nothing is gathered), the number of
   impostors M, the closest negative and the weighted hinge;
2. it adds the hinge gradients of the active pairs into the dense gradient buffers, in parallel
   over parts of the tables (thread q owns the rows r with r % threads == q and visits the pairs in
   order): no write races, and every row sums its terms in pair order, exactly as a serial pass
   would, so the result is deterministic and independent of the thread count;

then the covariance term and the optimiser step run in torch as before. Negatives come from the same
samplers, so for the same draws both backends give the same loss and gradients up to float32
rounding (the tests check this). numba is an optional dependency (``pip install metricrec[fast]``);
without it the torch backend is used.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .step_torch import StepStats, add_covariance_term
from ...training.optim import GradBuffer, kernel_parts, lazy_kernels
from ...training.sampling import NegativeDraw

__all__ = ["available", "cml_step_numba"]



def available() -> bool:
    """True when numba can be imported."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def _pair_pass(numba):
    """Per pair, in parallel: d(i,j)^2, the distances to the U negatives, impostor count M, the
    closest negative and the rank-weighted hinge."""

    @numba.njit(parallel=True, fastmath=True, cache=True)
    def pair_pass(U, V, users, pos, negs, margin, n_items, use_rank, w_out, h_out, k_out):
        b_count, n_neg = negs.shape
        d = U.shape[1]
        for b in numba.prange(b_count):
            u = users[b]
            p = pos[b]
            d_pos = 0.0
            for t in range(d):
                x = U[u, t] - V[p, t]
                d_pos += x * x
            best = np.inf
            best_k = -1
            impostors = 0
            for c in range(n_neg):
                k = negs[b, c]
                dist = 0.0
                for t in range(d):
                    x = U[u, t] - V[k, t]
                    dist += x * x
                if margin + d_pos - dist > 0.0:
                    impostors += 1
                if dist < best:
                    best = dist
                    best_k = k
            hinge = margin + d_pos - best
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
    """The hinge gradients of the active pairs into the dense buffers, race-free."""

    @numba.njit(parallel=True, fastmath=True, cache=True)
    def scatter_pass(U, V, users, pos, closest, w, GU, GV, touched_u, touched_v, n_parts):
        # Part q owns the rows r with r % n_parts == q and adds, in pair order, every gradient that
        # falls on its rows: no write races, and each row sums its terms in the same order as a
        # serial pass would (the result does not depend on the number of parts).
        d = U.shape[1]
        for q in numba.prange(n_parts):
            for b in range(users.shape[0]):
                if w[b] == 0.0:
                    continue
                u = users[b]
                p = pos[b]
                n = closest[b]
                own_u = u % n_parts == q
                own_p = p % n_parts == q
                own_n = n % n_parts == q
                w2 = 2.0 * w[b]
                if own_p:  # dL/dp = 2w (p - u)
                    for t in range(d):
                        GV[p, t] += w2 * (V[p, t] - U[u, t])
                    touched_v[p] = True
                if own_n:  # dL/dn = 2w (u - n)
                    for t in range(d):
                        GV[n, t] += w2 * (U[u, t] - V[n, t])
                    touched_v[n] = True
                if own_u:  # dL/du = 2w (n - p)
                    for t in range(d):
                        GU[u, t] -= w2 * (V[p, t] - U[u, t]) + w2 * (U[u, t] - V[n, t])
                    touched_u[u] = True

    return scatter_pass


_compile = lazy_kernels(_pair_pass, _scatter_pass)


def warm_up() -> None:
    """Compile (or load from numba's cache) the kernels on a tiny problem."""
    U = torch.zeros(2, 2)
    V = torch.ones(3, 2)
    users = torch.tensor([0, 1])
    pos = torch.tensor([0, 1])
    draw = NegativeDraw(torch.tensor([[2], [2]]), torch.tensor([[2], [2]]), torch.empty(0, dtype=torch.long),
                        torch.empty(0, dtype=torch.long), 1)
    cml_step_numba(U, V, users, pos, draw, GradBuffer(2, 2), GradBuffer(3, 2), margin=1.0)


def cml_step_numba(
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
) -> StepStats:
    """Drop-in replacement of :func:`metricrec.models.cml.step_torch.cml_step` for contiguous float32 CPU tensors."""
    pair_pass, scatter_pass = _compile()
    U = user_emb.detach().numpy()
    V = item_emb.detach().numpy()
    u_np = users.numpy()
    p_np = positives.numpy()
    negs = draw.negatives.numpy()
    b = u_np.shape[0]
    w = np.empty(b, dtype=np.float32)
    h = np.empty(b, dtype=np.float32)
    closest = np.empty(b, dtype=np.int64)
    pair_pass(U, V, u_np, p_np, negs, np.float32(margin), V.shape[0], use_rank_weight, w, h, closest)
    scatter_pass(U, V, u_np, p_np, closest, w, user_grad.grad.numpy(), item_grad.grad.numpy(),
                 user_grad.touched.numpy(), item_grad.touched.numpy(), kernel_parts())
    metric_value = float(h.sum(dtype=np.float64))
    n_active = int(np.count_nonzero(w))
    cov_value = 0.0
    if cov_weight:
        cov_value = add_covariance_term(user_emb, item_emb, users, positives, torch.from_numpy(closest),
                                        user_grad, item_grad, cov_weight, cov_formula)
    return StepStats(metric_loss=metric_value, cov_loss=cov_value, n_active=n_active)
