"""The selection step of a single recommendation as one compiled call (numba, optional).

After the GEMV that scores every candidate for one query, :func:`metricrec.models.retrieval._top_n_one`
needs a dozen small array operations (mask, partition, sort, exact distances of the chosen, final
order); each costs a microsecond or more whatever its size, together more than the GEMV itself on a
catalogue of a few thousand items. This module does them in one pass over the scores: the banned
columns set to -inf, the k best kept in a small sorted buffer (ties: the lower index), their exact
scores recomputed from the vectors, then ordered best first (ties: the lower index) -- the result of
the numpy path, which the tests check. Without numba (``pip install metricrec[fast]``) the numpy
path is used.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

__all__ = ["select_one"]

_kernel: Callable[..., Any] | None = None
_tried = False


def select_one(s: np.ndarray, banned_a: np.ndarray, banned_b: np.ndarray, k: int, cand: np.ndarray,
               q: np.ndarray, euclidean: bool) -> tuple[np.ndarray, np.ndarray] | None:
    """The k best columns of the score vector ``s`` (modified in place), or None without numba.

    Parameters
    ----------
    s : numpy.ndarray of float32, shape (n,)
        Ranking scores of every candidate (``2 q.c - |c|^2`` for Euclidean, ``q.c`` for dot).
    banned_a, banned_b : numpy.ndarray of int64
        Columns never returned (the already-liked items, the filtered ones).
    k : int
        At most n.
    cand, q : numpy.ndarray of float32, shapes (n, d), (d,)
        For the exact distances of the chosen candidates (Euclidean).
    euclidean : bool

    Returns
    -------
    ids : numpy.ndarray of int64, shape (k,)
    vals : numpy.ndarray of float32, shape (k,)
        Best first: negative Euclidean distances (or the dot scores); id -1 and -inf where fewer than
        k candidates are left.
    """
    kernel = _compiled()
    if kernel is None:
        return None
    return kernel(s, banned_a, banned_b, int(k), cand, q, bool(euclidean))


def _compiled() -> Callable[..., Any] | None:
    global _kernel, _tried
    if not _tried:
        _tried = True
        try:
            import numba
        except ImportError:
            return None
        _kernel = numba.njit(cache=True, nogil=True)(_select)
    return _kernel


def _select(s, banned_a, banned_b, k, cand, q, euclidean):  # pragma: no cover - compiled by numba
    neg_inf = np.float32(-np.inf)
    for j in banned_a:
        s[j] = neg_inf
    for j in banned_b:
        s[j] = neg_inf
    best_v = np.full(k, neg_inf, dtype=np.float32)
    best_i = np.full(k, -1, dtype=np.int64)
    count = 0
    for j in range(s.shape[0]):
        v = s[j]
        if not v > neg_inf:  # banned (or NaN): never returned
            continue
        if count == k and not v > best_v[k - 1]:  # not better than the worst kept (ties: the lower index stays)
            continue
        pos = count if count < k else k - 1
        while pos > 0 and v > best_v[pos - 1]:  # shift the worse ones down
            best_v[pos] = best_v[pos - 1]
            best_i[pos] = best_i[pos - 1]
            pos -= 1
        best_v[pos] = v
        best_i[pos] = j
        if count < k:
            count += 1
    if euclidean:  # the exact distances of the chosen (the GEMV form loses ~1e-3)
        for r in range(count):
            acc = 0.0  # float64: the distance to float32 rounding, whatever the order of the sum
            row = best_i[r]
            for c in range(q.shape[0]):
                diff = np.float64(cand[row, c]) - np.float64(q[c])
                acc += diff * diff
            best_v[r] = np.float32(-np.sqrt(acc)) + np.float32(0.0)
    # final order: best first, ties by the lower index (insertion sort of at most k entries)
    for r in range(1, count):
        v, i = best_v[r], best_i[r]
        pos = r
        while pos > 0 and (v > best_v[pos - 1] or (v == best_v[pos - 1] and i < best_i[pos - 1])):
            best_v[pos] = best_v[pos - 1]
            best_i[pos] = best_i[pos - 1]
            pos -= 1
        best_v[pos] = v
        best_i[pos] = i
    return best_i, best_v
