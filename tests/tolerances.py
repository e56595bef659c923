"""Comparisons of floats that come from different kernels, and the tolerances they use.

Two computations of the same scores by different kernels (numpy's BLAS against torch's, a GEMV for
one user against a GEMM for many, float32 against a float64 reference, another CPU's SIMD width)
agree only to rounding, and items whose scores tie within that rounding may come in either order.
A test that compares such rankings asks what the code guarantees: the same scores within the
tolerance, and the same item wherever its score is separated from its neighbours by more than it.
Bitwise checks stay for what the code guarantees on one machine (the same kernel and thread count
in one process: a seeded run repeated, a save/load round trip, a resumed run); those tests say so.
"""

from __future__ import annotations

import numpy as np

#: Tolerance of a float32 ranking score of embeddings inside the unit ball (|score| <= 4): each
#: product of a d-term dot product (d <= 128 in these tests) is exact to 2^-24 relative, and the sum
#: adds at most d * 2^-24 * 4 ~ 3e-5 in the worst case, ~sqrt(d) * 2^-24 * 4 ~ 3e-6 in practice.
SCORE_ATOL = 3e-5


def _rows(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    return a[None] if a.ndim == 1 else a


def assert_top_k_of(ids: np.ndarray, reference: np.ndarray, atol: float = SCORE_ATOL) -> None:
    """``ids`` (n, K) or (K,) is a correct best-first top-K of the ``reference`` scores (n, n_items)
    up to ties within ``atol``: distinct ids whose reference scores equal the reference's K best,
    rank by rank, within ``atol``."""
    ids, reference = _rows(ids), _rows(reference)
    assert all(len(set(r.tolist())) == r.size for r in ids), "repeated ids in a top-K list"
    k = ids.shape[1]
    best = -np.sort(-reference, axis=1)[:, :k]
    got = np.take_along_axis(reference, ids, axis=1)
    np.testing.assert_allclose(got, best, rtol=0, atol=atol)


def assert_rankings_agree(ids_a: np.ndarray, scores_a: np.ndarray, ids_b: np.ndarray, scores_b: np.ndarray,
                          atol: float = SCORE_ATOL) -> None:
    """Two best-first top-K lists of the same query agree up to ties within ``atol``: the scores
    match within ``atol`` and every rank whose score is more than ``2 * atol`` from both neighbours
    holds the same item (the last rank has an unseen neighbour, so only its score is compared)."""
    ids_a, scores_a, ids_b, scores_b = (_rows(x) for x in (ids_a, scores_a, ids_b, scores_b))
    assert ids_a.shape == ids_b.shape
    finite = np.isfinite(scores_a)
    assert np.array_equal(finite, np.isfinite(scores_b)), "the lists differ in length"
    np.testing.assert_allclose(np.where(finite, scores_a, 0), np.where(finite, scores_b, 0), rtol=0, atol=atol)
    s = np.where(finite, scores_a, -1e30)
    gap_before = np.concatenate([np.full((s.shape[0], 1), np.inf), s[:, :-1] - s[:, 1:]], axis=1)
    gap_after = np.concatenate([s[:, :-1] - s[:, 1:], np.zeros((s.shape[0], 1))], axis=1)
    separated = finite & (gap_before > 2 * atol) & (gap_after > 2 * atol)
    assert np.array_equal(ids_a[separated], ids_b[separated]), "an item separated from its neighbours moved"
