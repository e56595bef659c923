"""Compiled membership kernels of :class:`metricrec.training.sampling.PositiveSet` (numba).

Defined at module level, not as closures: numba's on-disk cache cannot key a closure that calls
other jitted closures, so every process compiled them again (1.6 s of the first epoch on
citeulike-a). Importing this module requires numba; :mod:`metricrec.training.sampling` imports it
only when numba is installed.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["HASH", "build", "contains_flat", "expand_and_test"]

HASH = 0x9E3779B97F4A7C15  # Fibonacci hashing multiplier (2^64 / golden ratio)


@numba.njit(inline="always", cache=True)
def slot(u, k, n_items, shift):
    """Bit of (u, k) in the filter: the key itself (exact bitmap, shift 0) or its top bits hashed."""
    key = np.uint64(u) * np.uint64(n_items) + np.uint64(k)
    if shift == 0:
        return key
    return (key * np.uint64(HASH)) >> np.uint64(shift)


@numba.njit(inline="always", cache=True)
def member(indptr, indices, bits, exact, n_items, shift, u, k):
    """Whether item k is a positive of user u."""
    h = slot(u, k, n_items, shift)
    if not (bits[h >> np.uint64(3)] >> (h & np.uint64(7))) & np.uint64(1):
        return False  # not in the filter: certainly not a positive
    if exact:
        return True
    # a filter hit: branch-free binary search of k in user u's sorted row of the CSR matrix
    base = indptr[u]
    n = indptr[u + 1] - base
    if n == 0:
        return False
    while n > 1:
        half = n >> 1
        base = base + half if indices[base + half] <= k else base
        n -= half
    return indices[base] == k


@numba.njit(cache=True)
def build(indptr, indices, bits, n_items, shift):
    """Set the filter bit of every positive of the CSR matrix."""
    for u in range(indptr.shape[0] - 1):
        for j in range(indptr[u], indptr[u + 1]):
            h = slot(u, indices[j], n_items, shift)
            bits[h >> np.uint64(3)] |= np.uint8(1) << np.uint8(h & np.uint64(7))


@numba.njit(parallel=True, cache=True)
def contains_flat(indptr, indices, bits, exact, n_items, shift, users, items, out):
    """out[j] = items[j] is a positive of users[j]."""
    for j in numba.prange(users.shape[0]):
        out[j] = member(indptr, indices, bits, exact, n_items, shift, users[j], items[j])


@numba.njit(parallel=True, cache=True)
def expand_and_test(indptr, indices, bits, exact, n_items, shift, users, shared, group, negatives, bad):
    """negatives[b] = shared[b // group]; bad[b, c] = negatives[b, c] is a positive of users[b]."""
    for b in numba.prange(users.shape[0]):
        u = users[b]
        g = b // group
        for c in range(shared.shape[1]):
            k = shared[g, c]
            negatives[b, c] = k
            bad[b, c] = member(indptr, indices, bits, exact, n_items, shift, u, k)
