"""The compiled pass of CML's fold-in (:mod:`metricrec.models.cml.fold_in_numba`), with its pieces as
helpers inlined into it (numba).

Defined at module level, not as closures: numba's on-disk cache cannot key a closure that calls
other jitted functions, so every process would compile the pass again (as
:mod:`metricrec.training.sampling_kernels`). The helpers live in this file with the pass so that
editing them invalidates its cache. Importing this module requires numba; the fold-in imports it
only when it compiles its kernel.

Per row: :func:`next_draw` (the row's counter-based generator), :func:`draw_negative` (one negative
among the unliked items), :func:`pair_gradient` (one pair's hinge on its closest negative and its
gradient) and :func:`adagrad_step` (the batch's update and the ball). They are inlined at numba's IR
level (``inline="always"``) and compiled with the pass's flags, so that it runs the same arithmetic in
the same order as when it was one function.
"""

from __future__ import annotations

import math

import numba
import numpy as np

__all__ = ["fold"]

#: Rejection draws of a negative before it is picked directly among the unliked items.
REJECTIONS = 64


@numba.njit(inline="always", fastmath=True, cache=True)
def next_draw(state):
    """One step of splitmix64: the advanced state and its 53 high bits of output, as an int64."""
    golden = np.uint64(0x9E3779B97F4A7C15)
    m1 = np.uint64(0xBF58476D1CE4E5B9)
    m2 = np.uint64(0x94D049BB133111EB)
    state += golden
    z = (state ^ (state >> np.uint64(30))) * m1
    z = (z ^ (z >> np.uint64(27))) * m2
    z = z ^ (z >> np.uint64(31))
    return state, np.int64(z >> np.uint64(11))


@numba.njit(inline="always", fastmath=True, cache=True)
def draw_negative(state, liked, n_items):
    """A uniform draw among the items the row does not like (rejection against its sorted liked
    items; after :data:`REJECTIONS` misses the t-th unliked item, directly): the state and the item."""
    deg = liked.shape[0]
    for _ in range(REJECTIONS):
        state, z = next_draw(state)
        cand = z % n_items
        at = np.searchsorted(liked, cand)
        if at >= deg or liked[at] != cand:
            return state, cand
    # a user liking most items: the t-th unliked item, directly
    state, z = next_draw(state)
    k = z % (n_items - deg)
    for a in range(deg):  # liked is sorted: skip the liked items below k
        if liked[a] <= k:
            k += 1
        else:
            break
    return state, k


@numba.njit(inline="always", fastmath=True, cache=True)
def pair_gradient(state, u, V, p, liked, n_neg, margin, use_rank, g):
    """One pair (u, p): U negatives drawn, CML's hinge on the closest one weighted by
    ``log(floor(J M / U) + 1)`` (or 1), and its gradient ``2 w (v_closest - v_positive)`` added to g.
    Returns the state and whether the hinge is active."""
    d = u.shape[0]
    n_items = V.shape[0]
    d_pos = np.float32(0.0)
    for t in range(d):
        x = u[t] - V[p, t]
        d_pos += x * x
    best = np.inf
    best_k = -1
    impostors = 0
    for c in range(n_neg):
        state, k = draw_negative(state, liked, n_items)
        dist = np.float32(0.0)
        for t in range(d):
            x = u[t] - V[k, t]
            dist += x * x
        if margin + d_pos - dist > 0.0:
            impostors += 1
        if dist < best:
            best = dist
            best_k = k
    if not margin + d_pos - best > 0.0:
        return state, False
    w = math.log(math.floor(n_items * impostors / n_neg) + 1.0) if use_rank else 1.0
    w2 = np.float32(2.0 * w)
    for t in range(d):  # dL/du = 2 w (v_closest - v_positive)
        g[t] += w2 * (V[best_k, t] - V[p, t])
    return state, True


@numba.njit(inline="always", fastmath=True, cache=True)
def adagrad_step(u, g, acc, lr, eps, max_norm):
    """AdaGrad on u (element-wise accumulators acc) at rate lr, then u clipped into the ball of radius
    max_norm (<= 0: none)."""
    d = u.shape[0]
    sq = np.float32(0.0)
    for t in range(d):
        a = acc[t] + g[t] * g[t]
        acc[t] = a
        x = u[t] - lr * (g[t] / np.sqrt(a + eps))
        u[t] = x
        sq += x * x
    if max_norm > 0.0:
        norm = np.sqrt(sq)
        if norm > max_norm:
            scale = max_norm / max(norm, np.float32(1e-12))
            for t in range(d):
                u[t] *= scale


@numba.njit(parallel=True, fastmath=True, cache=True)
def fold(U, V, indptr, indices, rates, n_rounds, n_neg, margin, use_rank, acc0, eps, max_norm, seed):
    """The whole fold-in of every row, in parallel over rows."""
    n_rows, d = U.shape
    n_epochs = rates.shape[0] // n_rounds
    golden = np.uint64(0x9E3779B97F4A7C15)
    m2 = np.uint64(0x94D049BB133111EB)
    for r in numba.prange(n_rows):
        lo = indptr[r]
        deg = indptr[r + 1] - lo
        liked = indices[lo: lo + deg]
        # splitmix64 keyed by (seed, row): draws independent of the thread that runs the row
        state = np.uint64(seed) * golden + np.uint64(r) * m2 + np.uint64(1)
        acc = np.full(d, acc0, dtype=np.float32)
        g = np.empty(d, dtype=np.float32)
        batch_of = np.empty(deg, dtype=np.int64)
        u = U[r]
        for e in range(n_epochs):
            for j in range(deg):  # each pair's batch of this epoch
                state, z = next_draw(state)
                batch_of[j] = z % n_rounds
            for q in range(n_rounds):
                active = False
                for t in range(d):
                    g[t] = 0.0
                for j in range(deg):  # the batch's pairs, all at the batch's starting vector
                    if batch_of[j] != q:
                        continue
                    state, hit = pair_gradient(state, u, V, liked[j], liked, n_neg, margin, use_rank, g)
                    active = active or hit
                if active:
                    adagrad_step(u, g, acc, rates[e * n_rounds + q], eps, max_norm)
