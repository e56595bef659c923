"""Compiled CPU backend of TransCF's step (numba): the maths of :func:`metricrec.models.transcf.step.transcf_gradients`.

The torch step computes the neighbourhood means of the whole tables every batch (alpha of every user,
beta of every item: sparse products over all the training positives) and pushes the gradients back
through them with the transposed products, besides a dozen full-batch tensors for the pairs. Here,
as in CML's and SML's kernels (:mod:`metricrec.models.cml.step_numba`):

1. the batch's rows: its distinct users and the distinct items it touches (positives and negatives),
   each with a slot in the batch's small tables of means;
2. in parallel over those rows, alpha_u of each batch user (the mean of its items' vectors, from the
   CSR index of the training positives) and beta_j of each touched item (the mean of its users'
   vectors, from the CSC index; in a fold-in the fixed rows given);
3. in parallel over the pairs, ``x = u + alpha_u * beta_i - v_i``, the distances to the U negatives
   (each with its own translation ``alpha_u * beta_k``), the hinge weights, the losses and each
   pair's gradients on u and alpha_u;
4. the gradients into the dense buffers and into the batch's gradients on alpha and beta, in
   parallel over parts (part q owns the rows r with r % parts == q and visits the pairs in order);
5. through the means, in parallel over parts again: the gradient on alpha_u into the items of u
   (1/|N(u)| each) and the one on beta_j into the users of j (1/|N(j)| each), each part visiting the
   batch's users and items in order and writing the target rows it owns.

No target row is written by two parts and each sums its terms in a fixed order, so the result does
not depend on the thread count. For the same draws both backends give the same losses, gradients and
touched rows up to float32 rounding (the tests check this).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from ...training.optim import GradBuffer, kernel_parts, lazy_kernels
from ...training.sampling import NegativeDraw

__all__ = ["NeighbourhoodIndex", "transcf_gradients_numba", "warm_up"]


class NeighbourhoodIndex:
    """The training positives as index arrays for the kernels: CSR (each user's items) and CSC (each
    item's users), built once per step.

    Parameters
    ----------
    liked : scipy.sparse matrix, shape (n_users, n_items)
        Non-zero entries are the positives (weights ignored), as
        :class:`~metricrec.models.transcf.step.Neighbourhoods`.
    item_side : bool
        Build the CSC index too (beta computed from the user table); False for a fold-in, whose beta
        is fixed.
    """

    def __init__(self, liked: sp.spmatrix, item_side: bool = True) -> None:
        r = sp.csr_matrix(liked, dtype=np.float32, copy=True)
        r.eliminate_zeros()
        r.sum_duplicates()
        r.sort_indices()
        self.shape, self.item_side = r.shape, bool(item_side)
        self.user_ptr = r.indptr.astype(np.int64)
        self.user_items = r.indices.astype(np.int32)
        if item_side:
            c = r.tocsc()
            c.sort_indices()
            self.item_ptr, self.item_users = c.indptr.astype(np.int64), c.indices.astype(np.int32)
        else:
            self.item_ptr, self.item_users = np.zeros(r.shape[1] + 1, np.int64), np.zeros(0, np.int32)


def _local_rows(numba):
    """The distinct rows of a batch, sorted, and each entry's slot among them (serial, O(n + entries))."""

    @numba.njit(cache=True)
    def local_rows(rows, n, slots):
        seen = np.zeros(n, np.int64)
        for j in range(rows.shape[0]):
            seen[rows[j]] = 1
        count = 0
        for r in range(n):
            if seen[r]:
                count += 1
                seen[r] = count
        distinct = np.empty(count, np.int64)
        for r in range(n):
            if seen[r]:
                distinct[seen[r] - 1] = r
        for j in range(rows.shape[0]):
            slots[j] = seen[rows[j]] - 1
        return distinct

    return local_rows


def _means_pass(numba):
    """alpha of the batch's users and beta of its items, in parallel over them."""

    @numba.njit(parallel=True, fastmath=True, cache=True)
    def means_pass(U, V, bu, bi, user_ptr, user_items, item_ptr, item_users, fixed_beta, frozen, A, Bt):
        n_u = bu.shape[0]
        d = U.shape[1]
        for j in numba.prange(n_u + bi.shape[0]):
            if j < n_u:  # alpha_u: the mean of u's item vectors
                u = bu[j]
                lo, hi = user_ptr[u], user_ptr[u + 1]
                for t in range(d):
                    A[j, t] = 0.0
                for e in range(lo, hi):
                    k = user_items[e]
                    for t in range(d):
                        A[j, t] += V[k, t]
                s = np.float32(1.0 / max(hi - lo, 1))
                for t in range(d):
                    A[j, t] *= s
            else:  # beta_i: the mean of i's user vectors, or the fixed row
                m = j - n_u
                i = bi[m]
                if frozen:
                    for t in range(d):
                        Bt[m, t] = fixed_beta[i, t]
                    continue
                lo, hi = item_ptr[i], item_ptr[i + 1]
                for t in range(d):
                    Bt[m, t] = 0.0
                for e in range(lo, hi):
                    w = item_users[e]
                    for t in range(d):
                        Bt[m, t] += U[w, t]
                s = np.float32(1.0 / max(hi - lo, 1))
                for t in range(d):
                    Bt[m, t] *= s

    return means_pass


def _pair_pass(numba):
    """Per pair, in parallel: the distances, hinge weights, losses and the gradients on u and alpha_u."""

    @numba.njit(parallel=True, fastmath=True, cache=True)
    def pair_pass(U, V, users, pos, negs, u_slot, p_slot, n_slot, A, Bt, margin, dist_reg, nbr_reg, frozen,
                  W, GX, GUr, GAr, losses):
        b_count, n_neg = negs.shape
        d = U.shape[1]
        inv = np.float32(1.0 / n_neg)
        two = np.float32(2.0)
        nbr2 = two * nbr_reg
        for b in numba.prange(b_count):
            u, p = users[b], pos[b]
            ju, jp = u_slot[b], p_slot[b]
            d_pos, nbr_u, nbr_i = np.float32(0.0), np.float32(0.0), np.float32(0.0)
            for t in range(d):
                x = U[u, t] + A[ju, t] * Bt[jp, t] - V[p, t]
                d_pos += x * x
                du = U[u, t] - A[ju, t]
                nbr_u += du * du
                dv = V[p, t] - Bt[jp, t]
                nbr_i += dv * dv
            hinge, c_sum = np.float32(0.0), np.float32(0.0)
            for c in range(n_neg):
                k, jk = negs[b, c], n_slot[b, c]
                d_neg = np.float32(0.0)
                for t in range(d):
                    y = U[u, t] + A[ju, t] * Bt[jk, t] - V[k, t]
                    d_neg += y * y
                viol = margin + d_pos - d_neg
                W[b, c] = 0.0
                if viol > 0.0:
                    W[b, c] = inv
                    hinge += inv * viol
                    c_sum += inv
            losses[b, 0] = hinge
            losses[b, 1] = d_pos
            losses[b, 2] = nbr_u
            losses[b, 3] = 0.0 if frozen else nbr_i
            gscale = two * (c_sum + dist_reg)
            for t in range(d):  # dL/dx, and the terms of dL/du and dL/dalpha_u without the negatives
                x = U[u, t] + A[ju, t] * Bt[jp, t] - V[p, t]
                gx = gscale * x
                du2 = nbr2 * (U[u, t] - A[ju, t])
                GX[b, t] = gx
                GUr[b, t] = gx + du2
                GAr[b, t] = gx * Bt[jp, t] - du2
            for c in range(n_neg):  # dL/dy_k = -2 w_k y_k: into u (times 1) and alpha_u (times beta_k)
                w = W[b, c]
                if w == 0.0:
                    continue
                k = negs[b, c]
                jk = n_slot[b, c]
                w2 = two * w
                for t in range(d):
                    y = U[u, t] + A[ju, t] * Bt[jk, t] - V[k, t]
                    GUr[b, t] -= w2 * y
                    GAr[b, t] -= w2 * y * Bt[jk, t]

    return pair_pass


def _scatter_pass(numba):
    """The pairs' gradients into the buffers and the batch's gradients on alpha and beta, race-free."""

    @numba.njit(parallel=True, fastmath=True, cache=True)
    def scatter_pass(U, V, users, pos, negs, fixed, u_slot, p_slot, n_slot, A, Bt, W, GX, GUr, GAr, nbr_reg,
                     frozen, GU, GV, touched_u, touched_v, GA, GB, n_parts):
        # Part q owns the rows r with r % n_parts == q (table rows, and the alpha / beta slots of the
        # users / items r) and adds, in pair order, every term that falls on them.
        b_count, n_neg = negs.shape
        d = U.shape[1]
        two = np.float32(2.0)
        nbr2 = two * nbr_reg
        for q in numba.prange(n_parts):
            for b in range(b_count):
                u = users[b]
                ju = u_slot[b]
                if u % n_parts == q:
                    for t in range(d):
                        GU[u, t] += GUr[b, t]
                        GA[ju, t] += GAr[b, t]
                    touched_u[u] = True
                if frozen:
                    continue
                p = pos[b]
                jp = p_slot[b]
                if p % n_parts == q:  # dL/dv_i = 2 lambda_nbr (v_i - beta_i) - dL/dx, and beta_i's share
                    for t in range(d):
                        dv2 = nbr2 * (V[p, t] - Bt[jp, t])
                        GV[p, t] += dv2 - GX[b, t]
                        GB[jp, t] += GX[b, t] * A[ju, t] - dv2
                    touched_v[p] = True
                for c in range(n_neg):  # dL/dv_k = 2 w_k y_k, dL/dbeta_k = -2 w_k y_k alpha_u
                    w = W[b, c]
                    if w == 0.0 and not fixed[b, c]:
                        continue
                    k = negs[b, c]
                    if k % n_parts != q:
                        continue
                    if w != 0.0:
                        jk = n_slot[b, c]
                        w2 = two * w
                        for t in range(d):
                            y = U[u, t] + A[ju, t] * Bt[jk, t] - V[k, t]
                            GV[k, t] += w2 * y
                            GB[jk, t] -= w2 * y * A[ju, t]
                        touched_v[k] = True
                    elif fixed[b, c]:  # the torch step marks every redrawn entry's item, active or not
                        touched_v[k] = True

    return scatter_pass


def _means_backward(numba):
    """The gradients on alpha and beta into the rows they are means of, race-free."""

    @numba.njit(parallel=True, fastmath=True, cache=True)
    def means_backward(bu, bi, user_ptr, user_items, item_ptr, item_users, GA, GB, GU, GV, touched_u, touched_v,
                       n_parts):
        # Part q visits the batch's users, then its items, in order, and writes the neighbour rows r it
        # owns (r % n_parts == q): 1/|N(u)| of dL/dalpha_u into each item of u, 1/|N(j)| of dL/dbeta_j
        # into each user of j.
        d = GA.shape[1]
        for q in numba.prange(n_parts):
            for j in range(bu.shape[0]):
                u = bu[j]
                lo, hi = user_ptr[u], user_ptr[u + 1]
                if hi == lo:
                    continue
                nonzero = False
                for t in range(d):
                    if GA[j, t] != 0.0:
                        nonzero = True
                if not nonzero:
                    continue
                s = np.float32(1.0 / (hi - lo))
                for e in range(lo, hi):
                    k = user_items[e]
                    if k % n_parts != q:
                        continue
                    for t in range(d):
                        GV[k, t] += s * GA[j, t]
                    touched_v[k] = True
            for m in range(bi.shape[0]):
                i = bi[m]
                lo, hi = item_ptr[i], item_ptr[i + 1]
                if hi == lo:
                    continue
                nonzero = False
                for t in range(d):
                    if GB[m, t] != 0.0:
                        nonzero = True
                if not nonzero:
                    continue
                s = np.float32(1.0 / (hi - lo))
                for e in range(lo, hi):
                    w = item_users[e]
                    if w % n_parts != q:
                        continue
                    for t in range(d):
                        GU[w, t] += s * GB[m, t]
                    touched_u[w] = True

    return means_backward


_compile = lazy_kernels(_local_rows, _means_pass, _pair_pass, _scatter_pass, _means_backward)


def warm_up() -> None:
    """Compile (or load from numba's cache) the kernels on a tiny problem, trained and fold-in modes."""
    liked = sp.csr_matrix(np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]))
    draw = NegativeDraw(torch.tensor([[1]]), torch.tensor([[1], [0]]), torch.tensor([1]), torch.tensor([0]), 2)
    kw = dict(margin=0.5, dist_reg=0.1, nbr_reg=0.1)
    user, item = torch.full((2, 2), 0.1), torch.full((3, 2), 0.2)
    users, positives = torch.tensor([0, 1]), torch.tensor([2, 1])
    transcf_gradients_numba(user, item, NeighbourhoodIndex(liked), users, positives, draw, GradBuffer(2, 2),
                            GradBuffer(3, 2), **kw)
    transcf_gradients_numba(user, item, NeighbourhoodIndex(liked, item_side=False), users, positives, draw,
                            GradBuffer(2, 2), None, beta=torch.zeros(3, 2), **kw)


def transcf_gradients_numba(user_emb: torch.Tensor, item_emb: torch.Tensor, index: NeighbourhoodIndex,
                            users: torch.Tensor, positives: torch.Tensor, draw: NegativeDraw,
                            user_grad: GradBuffer, item_grad: GradBuffer | None, *, margin: float, dist_reg: float,
                            nbr_reg: float, beta: torch.Tensor | None = None) -> dict[str, float]:
    """Drop-in replacement of :func:`metricrec.models.transcf.step.transcf_gradients` for contiguous
    float32 CPU tensors: the same arguments (the positives as a :class:`NeighbourhoodIndex` in place of
    the torch step's ``Neighbourhoods``; its item side is needed unless ``beta`` is given), the same
    buffers filled (gradients and touched rows) and the same loss parts returned."""
    local_rows, means_pass, pair_pass, scatter_pass, means_backward = _compile()
    frozen = beta is not None
    if not frozen and (item_grad is None or not index.item_side):
        raise ValueError("item_grad and the index's item side are needed unless beta is given (a fold-in)")
    U, V = user_emb.detach().numpy(), item_emb.detach().numpy()
    n_users, d = U.shape
    u_np, p_np = users.numpy(), positives.numpy()
    negs = draw.negatives.numpy()
    b, n_neg = negs.shape
    fixed = np.zeros((b, n_neg), dtype=np.bool_)
    fixed[draw.fix_rows.numpy(), draw.fix_cols.numpy()] = True
    # the batch's distinct users and items, and each entry's slot among them
    u_slot = np.empty(b, np.int64)
    bu = local_rows(u_np, n_users, u_slot)
    item_slots = np.empty(b * (n_neg + 1), np.int64)
    bi = local_rows(np.concatenate([p_np, negs.reshape(-1)]), V.shape[0], item_slots)
    p_slot, n_slot = item_slots[:b], item_slots[b:].reshape(b, n_neg)
    fixed_beta = np.ascontiguousarray(beta.detach().numpy()) if frozen else np.zeros((0, d), np.float32)
    A = np.empty((bu.shape[0], d), np.float32)
    Bt = np.empty((bi.shape[0], d), np.float32)
    means_pass(U, V, bu, bi, index.user_ptr, index.user_items, index.item_ptr, index.item_users, fixed_beta,
               frozen, A, Bt)
    W = np.empty((b, n_neg), np.float32)
    GX, GUr, GAr = (np.empty((b, d), np.float32) for _ in range(3))
    losses = np.empty((b, 4), np.float32)
    pair_pass(U, V, u_np, p_np, negs, u_slot, p_slot, n_slot, A, Bt, np.float32(margin), np.float32(dist_reg),
              np.float32(nbr_reg), frozen, W, GX, GUr, GAr, losses)
    GU, touched_u = user_grad.grad.numpy(), user_grad.touched.numpy()
    if frozen:  # only the users train: no gradient reaches the items or beta, alpha's would go to the items
        GV, touched_v = np.zeros((0, d), np.float32), np.zeros(0, np.bool_)
    else:
        GV, touched_v = item_grad.grad.numpy(), item_grad.touched.numpy()
    GA = np.zeros_like(A)
    GB = np.zeros_like(Bt)
    parts = kernel_parts()
    scatter_pass(U, V, u_np, p_np, negs, fixed, u_slot, p_slot, n_slot, A, Bt, W, GX, GUr, GAr, np.float32(nbr_reg),
                 frozen, GU, GV, touched_u, touched_v, GA, GB, parts)
    if not frozen:
        means_backward(bu, bi, index.user_ptr, index.user_items, index.item_ptr, index.item_users, GA, GB, GU, GV,
                       touched_u, touched_v, parts)
    sums = losses.sum(0, dtype=np.float64)
    return {"hinge_loss": float(sums[0]), "dist_loss": dist_reg * float(sums[1]),
            "nbr_loss": nbr_reg * float(sums[2] + sums[3])}
