"""Compiled CPU backend of SFCML's step (numba): the maths of :func:`metricrec.models.sfcml.step.sfcml_gradients`.

The torch step spends most of a batch on bookkeeping around small sparse products, not on
arithmetic: the distinct users and the positions of the batch's pairs (a sort, a binary search),
the batch users' rows of the training matrix as flat index tensors, their transposed pattern (a
pass over every entry with boolean masks) and three sparse products, each a separate operator and
temporary. On ml-100k at one thread the transposed pattern and the item side's sparse product were
a quarter of the step, the rest of the bookkeeping and the other sparse products about half, and the
matrix products (``M = V'V``, ``M u``, ``G = sum_u c_u u u'``, ``V G``) a fifth. Here those matrix
products stay in torch (BLAS), and the rest is fused in four compiled passes:

0. the vector moments of the item table (``q``, S, R, Q1, Q2) in one sweep, over fixed slices of the
   table summed in order (torch's elementwise products and column sums took about as long as M's GEMM
   on citeulike-a's 16,980 items);
1. the batch's pairs grouped by user (a counting sort: the distinct users in increasing order,
   each one's pairs in batch order), ``O(B + n_users)``, serial;
2. in parallel over the batch's distinct users: the distances ``d(u,j)`` to the user's positives
   straight from the table rows, the two moments ``mu_u``, ``var_u`` from the closed-form sums over
   all items, the user's pairs (each found by binary search in its sorted row), their losses, the
   coefficients ``kappa`` on the row's entries and the user's gradient, written into its own row of
   the buffer (each user is one iteration's); this pass and its pieces for one user are in
   :mod:`metricrec.models.sfcml.user_kernels`;
3. in parallel over the items: the correction of the positives, ``sum_u kappa_uj u`` over the batch's
   users that hold the item (the training matrix's transposed pattern, users in increasing order),
   and the item's dense gradient, written into its own row.

Every row of either buffer is written by one iteration, which sums its terms in a fixed order, so
the result does not depend on the thread count, and there are no write races. For the same batch
both backends give the same losses and gradients up to float32 rounding (the tests check this).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from ...training.optim import GradBuffer, lazy_kernels

__all__ = ["item_moments_numba", "sfcml_gradients_numba", "warm_up"]


#: Fixed slices of the item table the moments pass sums separately (then in order): the result does
#: not depend on the thread count.
_MOMENT_CHUNKS = 64


def _moments_pass(numba):
    """The vector moments of the item table (q, S, R, Q1, Q2): one pass, in parallel over fixed slices."""

    @numba.njit(parallel=True, fastmath=True, cache=True)
    def moments_pass(V, q, part_s, part_r, part_q):
        n, d = V.shape
        n_chunks = part_s.shape[0]
        size = (n + n_chunks - 1) // n_chunks
        for c in numba.prange(n_chunks):
            q1 = 0.0
            q2 = 0.0
            for t in range(d):
                part_s[c, t] = 0.0
                part_r[c, t] = 0.0
            for j in range(c * size, min(n, (c + 1) * size)):
                x = np.float32(0.0)
                for t in range(d):
                    x += V[j, t] * V[j, t]
                q[j] = x
                q1 += x
                q2 += np.float64(x) * x
                for t in range(d):
                    part_s[c, t] += V[j, t]
                    part_r[c, t] += x * V[j, t]
            part_q[c, 0] = q1
            part_q[c, 1] = q2

    return moments_pass


def _group_pass(numba):
    """The batch's pairs grouped by user (serial counting sort)."""

    @numba.njit(fastmath=True, cache=True)
    def group_pass(users, n_users):
        # loc[u]: u's position among the distinct users (-1: not in the batch); the pairs of the l-th
        # distinct user are order[start[l]:start[l + 1]], in batch order
        loc = np.zeros(n_users, dtype=np.int64)
        for b in range(users.shape[0]):
            loc[users[b]] += 1
        k = 0
        for u in range(n_users):
            if loc[u] > 0:
                k += 1
        uniq = np.empty(k, dtype=np.int64)
        start = np.zeros(k + 1, dtype=np.int64)
        ell = 0
        for u in range(n_users):
            if loc[u] > 0:
                uniq[ell] = u
                start[ell + 1] = start[ell] + loc[u]
                loc[u] = ell
                ell += 1
            else:
                loc[u] = -1
        fill = start[:-1].copy()
        order = np.empty(users.shape[0], dtype=np.int64)
        for b in range(users.shape[0]):
            ell = loc[users[b]]
            order[fill[ell]] = b
            fill[ell] += 1
        return uniq, loc, start, order

    return group_pass


def _user_pass(numba):
    """Per distinct user, in parallel: moments, pair losses, kappa on its positives, its gradient
    (:func:`metricrec.models.sfcml.user_kernels.user_pass`, module level so numba caches it)."""
    from . import user_kernels

    return user_kernels.user_pass


def _item_pass(numba):
    """Per item, in parallel: the positives' correction and the item's dense gradient."""

    @numba.njit(parallel=True, fastmath=True, cache=True)
    def item_pass(U, V, q, VG, cu, au, sum_alpha, sum_c, loc, t_indptr, t_users, t_pos, kappa, GV, touched):
        n, d = V.shape
        for j in numba.prange(n):
            col_k = 0.0
            for x in range(t_indptr[j], t_indptr[j + 1]):  # the batch's users holding j, in user order
                u = t_users[x]
                if loc[u] < 0:
                    continue
                kap = kappa[t_pos[x]]
                col_k += kap
                for t in range(d):
                    VG[j, t] -= kap * U[u, t]  # VG (the caller's temporary) now 2 G v_j - sum_u kappa_uj u
            vcu = np.float32(0.0)
            for t in range(d):
                vcu += V[j, t] * cu[t]
            qj = q[j]
            coef = np.float32(sum_alpha + qj * sum_c - 2.0 * vcu + col_k)
            for t in range(d):  # d/dv_j = 2 [2 G v_j + coef v_j - (alpha U) - q_j (c U) - sum_u kappa_uj u]
                GV[j, t] += np.float32(2.0) * (VG[j, t] + coef * V[j, t] - au[t] - qj * cu[t])
            touched[j] = True

    return item_pass


_compile = lazy_kernels(_moments_pass, _group_pass, _user_pass, _item_pass)


def warm_up() -> None:
    """Compile (or load from numba's cache) the kernels on a tiny problem, with and without items."""
    train = sp.csr_matrix(np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]], dtype=np.float32))
    ue, ie = torch.full((2, 2), 0.1), torch.full((3, 2), 0.2)
    users, items = torch.tensor([0, 1, 0]), torch.tensor([2, 1, 0])
    for item_grad in (GradBuffer(3, 2), None):
        sfcml_gradients_numba(ue, ie, users, items, train, torch.ones(2), GradBuffer(2, 2), item_grad, margin=1.0)


def item_moments_numba(item_emb: torch.Tensor):
    """:func:`metricrec.models.sfcml.step.item_moments` of a contiguous float32 CPU table: the vector
    moments in one compiled pass, M by torch's GEMM."""
    from .step import ItemMoments

    moments_pass = _compile()[0]
    V = item_emb.detach().numpy()
    n, d = V.shape
    q = np.empty(n, dtype=np.float32)
    part_s = np.empty((_MOMENT_CHUNKS, d), dtype=np.float32)
    part_r = np.empty((_MOMENT_CHUNKS, d), dtype=np.float32)
    part_q = np.empty((_MOMENT_CHUNKS, 2), dtype=np.float64)
    moments_pass(V, q, part_s, part_r, part_q)
    q1, q2 = part_q.sum(0)
    return ItemMoments(n, torch.from_numpy(q), torch.from_numpy(part_s.sum(0)), torch.tensor(q1), torch.tensor(q2),
                       torch.from_numpy(part_r.sum(0)), item_emb.detach().T @ item_emb.detach())


def sfcml_gradients_numba(user_emb: torch.Tensor, item_emb: torch.Tensor, users: torch.Tensor, positives: torch.Tensor,
                          train, weights: torch.Tensor, user_grad: GradBuffer, item_grad: GradBuffer | None, *,
                          margin: float, moments=None) -> dict[str, float]:
    """Drop-in replacement of :func:`metricrec.models.sfcml.step.sfcml_gradients` for contiguous
    float32 CPU tables and buffers (same arguments, same buffers filled, same losses returned).

    The item moments, ``M u`` of the batch's users, ``G = sum_u c_u u u'`` and ``V G`` are torch
    matrix products; everything per row is compiled (module docstring).
    """
    from .step import _Positives

    _, group_pass, user_pass, item_pass = _compile()
    pos_sets = train if isinstance(train, _Positives) else _Positives(sp.csr_matrix(train), users.device)
    mo = moments if moments is not None else item_moments_numba(item_emb)
    U, V = user_emb.detach().numpy(), item_emb.detach().numpy()
    n, d = V.shape
    uniq, loc, start, order = group_pass(users.numpy().astype(np.int64, copy=False), U.shape[0])
    k = uniq.shape[0]
    Uk = user_emb.detach().index_select(0, torch.from_numpy(uniq))
    UM = (Uk @ mo.M).numpy()
    nnz = pos_sets.indices.numel()
    dp = np.empty(nnz, dtype=np.float32)  # only the batch users' entries are written and read
    kappa = np.empty(nnz, dtype=np.float32)
    c = np.empty(k, dtype=np.float32)
    alpha = np.empty(k, dtype=np.float32)
    pair_loss = np.empty(k, dtype=np.float64)
    spread_loss = np.empty(k, dtype=np.float64)
    w = weights.detach().to(torch.float32).numpy()
    user_pass(U, V, mo.q.numpy(), mo.S.numpy(), mo.R.numpy(), UM, uniq, start, order,
              positives.numpy().astype(np.int64, copy=False), w, pos_sets.indptr.numpy(), pos_sets.indices.numpy(),
              float(mo.Q1), float(mo.Q2), float(margin), dp, kappa, user_grad.grad.numpy(),
              user_grad.touched.numpy(), c, alpha, pair_loss, spread_loss)
    if item_grad is not None:
        ct, at = torch.from_numpy(c), torch.from_numpy(alpha)
        cu, au = (ct @ Uk).numpy(), (at @ Uk).numpy()
        G2 = torch.mm((Uk * ct[:, None]).T, Uk).mul_(2.0)
        VG = (item_emb.detach() @ G2).numpy()
        item_pass(U, V, mo.q.numpy(), VG, cu, au, float(alpha.sum(dtype=np.float64)), float(c.sum(dtype=np.float64)),
                  loc, pos_sets.t_indptr.numpy(), pos_sets.t_users.numpy(), pos_sets.t_pos.numpy(), kappa,
                  item_grad.grad.numpy(), item_grad.touched.numpy())
    return {"pair_loss": float(pair_loss.sum()), "spread_loss": float(spread_loss.sum())}
