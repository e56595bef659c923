"""The compiled selection of a single recommendation gives the numpy path's results.

Both paths score by the same GEMV; they differ in how the chosen candidates' exact distances are
summed (numba: float64, rounded once; numpy: float32 einsum), so scores agree to float32 rounding of
numbers of size ~1 (1e-6 relative) and the ids exactly wherever no two exact scores are that close
(random vectors; the duplicated rows below tie exactly in both and go to the lower index).
"""

import numpy as np
import pytest
import scipy.sparse as sp

from metricrec.models import retrieval
from metricrec.models.retrieval_numba import select_one

pytest.importorskip("numba")


def _both(monkeypatch, q, cand, n, distance, exclude=None, filter_ids=None):
    sq = np.einsum("ij,ij->i", cand, cand)
    fast = retrieval._top_n_one(q, cand, n, distance, sq, exclude, filter_ids)
    with monkeypatch.context() as m:
        m.setattr(retrieval, "select_one", lambda *a: None)
        slow = retrieval._top_n_one(q, cand, n, distance, sq, exclude, filter_ids)
    return fast, slow


@pytest.mark.parametrize("distance", ["euclidean", "dot"])
@pytest.mark.parametrize("n", [1, 10, 57, 300])
def test_compiled_selection_matches_the_numpy_path(monkeypatch, distance, n):
    rng = np.random.default_rng(n)
    cand = (rng.normal(size=(200, 16)) / 4).astype(np.float32)
    cand[50] = cand[7]  # an exact tie: the lower index first in both
    q = (rng.normal(size=16) / 4).astype(np.float32)
    liked = np.sort(rng.choice(200, 30, replace=False))
    exclude = sp.csr_matrix((np.ones(30), (np.zeros(30, int), liked)), shape=(1, 200))
    for excl, filt in ((None, None), (exclude, None), (exclude, np.array([3, 7, 11]))):
        (fi, fv), (si, sv) = _both(monkeypatch, q, cand, n, distance, excl, filt)
        assert fi.shape == si.shape == (1, n) and fv.dtype == sv.dtype == np.float32
        np.testing.assert_array_equal(fi, si)
        np.testing.assert_allclose(fv, sv, rtol=1e-6, atol=1e-6)
        if excl is not None:
            assert not set(fi[0]) & set(liked)
        if n == 300:  # fewer candidates than n: the tail is -1 / -inf in both
            tail = np.isneginf(fv[0])
            assert tail[-1] and (fi[0][tail] == -1).all() and (fi[0][~tail] >= 0).all()


def test_kernel_keeps_the_lower_index_on_ties_and_pads():
    s = np.array([1.0, 3.0, 3.0, 2.0, 3.0], dtype=np.float32)
    ids, vals = select_one(s.copy(), np.array([4]), np.empty(0, np.int64), 3, np.zeros((5, 1), np.float32),
                           np.zeros(1, np.float32), False)
    assert ids.tolist() == [1, 2, 3] and vals.tolist() == [3.0, 3.0, 2.0]
    ids, vals = select_one(s.copy(), np.array([0, 1, 2]), np.array([3]), 3, np.zeros((5, 1), np.float32),
                           np.zeros(1, np.float32), False)
    assert ids.tolist() == [4, -1, -1] and vals[0] == 3.0 and np.isneginf(vals[1:]).all()
