"""The user pass of SFCML's compiled step (:mod:`metricrec.models.sfcml.step_numba`, pass 2), with the
pieces of one user as helpers inlined into it (numba).

Defined at module level, not as closures: numba's on-disk cache cannot key a closure that calls
other jitted functions, so every process would compile the pass again (as
:mod:`metricrec.training.sampling_kernels`). The helpers live in this file with the pass so that
editing them invalidates its cache. Importing this module requires numba; the step imports it only
when it compiles its kernels.

Per distinct user: :func:`user_products` (``|u|^2`` and u against the item moments),
:func:`positive_distances` (``d(u,j)`` to its positives), :func:`pair_coefficients` (its pairs'
losses and coefficients) and :func:`kappa_row` (kappa on its positives and ``sum_j kappa_uj v_j``).
They are inlined at numba's IR level (``inline="always"``) and compiled with the pass's flags, so that
it runs the same arithmetic in the same order as when it was one function.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["user_pass"]


@numba.njit(inline="always", fastmath=True, cache=True)
def user_products(U, u, S, R, UM, ell):
    """``|u|^2``, ``u.S``, ``u.R`` and ``u.(M u)`` of user u (the ell-th distinct one)."""
    s = np.float32(0.0)
    us = np.float32(0.0)
    ur = np.float32(0.0)
    umu = np.float32(0.0)
    for t in range(U.shape[1]):
        x = U[u, t]
        s += x * x
        us += x * S[t]
        ur += x * R[t]
        umu += x * UM[ell, t]
    return s, us, ur, umu


@numba.njit(inline="always", fastmath=True, cache=True)
def positive_distances(U, u, V, q, indices, lo, hi, s, dp, kappa):
    """``d(u,j)`` for the user's positives j (entries lo:hi of the training matrix) into dp, kappa
    there reset to 0; returns their sum and sum of squares (the positives' share of the sums over
    all items), float64."""
    sum1 = 0.0
    sum2 = 0.0
    for p in range(lo, hi):
        j = indices[p]
        dot = np.float32(0.0)
        for t in range(U.shape[1]):
            dot += U[u, t] * V[j, t]
        x = s + q[j] - np.float32(2.0) * dot
        dp[p] = x
        kappa[p] = 0.0
        sum1 += x
        sum2 += x * x
    return sum1, sum2


@numba.njit(inline="always", fastmath=True, cache=True)
def pair_coefficients(pairs, positives, row, lo, margin, mu, w, dp, kappa):
    """The user's pairs (batch rows ``pairs``, each positive found by binary search in its sorted
    row): ``a = m + d(u,i)``, ``r = a - mu_u``; adds ``2 w r`` to the pair's kappa and returns the
    pair loss ``sum w r^2``, ``W = sum w`` and ``A = sum w a``."""
    big_w = 0.0
    big_a = 0.0
    pl = 0.0
    for o in range(pairs.shape[0]):
        p = lo + np.searchsorted(row, positives[pairs[o]])
        a = margin + dp[p]
        r = a - mu
        pl += w * r * r
        big_w += w
        big_a += w * a
        kappa[p] += 2.0 * w * r
    return pl, big_w, big_a


@numba.njit(inline="always", fastmath=True, cache=True)
def kappa_row(V, indices, lo, hi, c, e, dp, kappa, acc):
    """kappa = the pair's coefficient - h_uj on the user's positives, ``h_uj = c d(u,j) - e``;
    ``sum_j kappa_uj v_j`` into acc (zero on entry); returns ``sum_j kappa_uj``."""
    row_k = 0.0
    for p in range(lo, hi):
        kap = np.float32(kappa[p] - c * dp[p] + e)
        kappa[p] = kap
        row_k += kap
        j = indices[p]
        for t in range(V.shape[1]):
            acc[t] += kap * V[j, t]
    return row_k


@numba.njit(parallel=True, fastmath=True, cache=True)
def user_pass(U, V, q, S, R, UM, uniq, start, order, positives, weights, indptr, indices, Q1, Q2,
              margin, dp, kappa, GU, touched, c_out, alpha_out, pair_loss, spread_loss):
    """Per distinct user, in parallel: moments, pair losses, kappa on its positives, its gradient."""
    n, d = V.shape
    for ell in numba.prange(uniq.shape[0]):
        u = uniq[ell]
        s, us, ur, umu = user_products(U, u, S, R, UM, ell)
        lo, hi = indptr[u], indptr[u + 1]
        sum1, sum2 = positive_distances(U, u, V, q, indices, lo, hi, s, dp, kappa)
        s64 = np.float64(s)
        t1 = n * s64 + Q1 - 2.0 * us  # sums over all items of d(u,j) and of d(u,j)^2
        t2 = n * s64 * s64 + Q2 + 4.0 * umu + 2.0 * s64 * Q1 - 4.0 * s64 * us - 4.0 * ur
        n_neg = np.float64(n - (hi - lo))
        mu = (t1 - sum1) / n_neg
        var = (t2 - sum2) / n_neg - mu * mu
        w = np.float64(weights[u])
        pl, big_w, big_a = pair_coefficients(order[start[ell]:start[ell + 1]], positives, indices[lo:hi], lo,
                                             margin, mu, w, dp, kappa)
        c = 2.0 * big_w / n_neg
        e = 2.0 * big_a / n_neg
        acc = np.zeros(d, dtype=np.float32)
        row_k = kappa_row(V, indices, lo, hi, c, e, dp, kappa, acc)
        beta = np.float32(c * t1 - e * n + row_k)
        c2 = np.float32(2.0 * c)
        cs = np.float32(e - c * s64)
        c32 = np.float32(c)
        for t in range(d):  # d/du = 2 [beta u + 2 c Mu + (e - c s) S - c R - K V]
            GU[u, t] += np.float32(2.0) * (beta * U[u, t] + c2 * UM[ell, t] + cs * S[t] - c32 * R[t] - acc[t])
        touched[u] = True
        c_out[ell] = c
        alpha_out[ell] = c * s64 - e
        pair_loss[ell] = pl
        spread_loss[ell] = big_w * var
