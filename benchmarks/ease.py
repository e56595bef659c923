"""EASE (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019) as a benchmark peer.

With ``X`` the binary train matrix (n_users x n_items) and ``P = (X^T X + lam I)^-1``, the item-item
weights are ``B = I - P / diag(P)`` (column j divided by ``P_jj``), so ``diag(B) = 0``; user u's
scores are ``X_u B``. The closed form is the fit: one "epoch" computes it (a second one gives the same
``B``), and ``lam`` is the one setting, tuned on valid.

The inverse is float64 (LAPACK Cholesky, in place, on the comparison's BLAS threads). It needs the
dense n_items x n_items matrix: a catalogue whose estimated need (:data:`BYTES_PER_CELL` bytes per
item pair, :func:`memory_needed`) exceeds the budget (:data:`BUDGET_FRACTION` of this machine's RAM,
:func:`memory_budget`) is skipped with the reason (:meth:`EASEPeer.skip_reason`), before anything is
allocated.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from scipy.linalg import lapack

from metricrec.metrics import Scorer

__all__ = ["BUDGET_FRACTION", "BYTES_PER_CELL", "EASEPeer", "EASEScorer", "ease_weights", "memory_budget",
           "memory_needed"]

#: Share of the machine's physical RAM EASE may plan to use.
BUDGET_FRACTION = 0.25
#: Estimated peak bytes per (item, item) cell: the float64 Gram matrix, inverted in place (8), the sparse
#: X^T X it is densified from (12 per co-occurring pair, at most half the cells counted) and the float32
#: copy the scorer keeps while the float64 weights exist (4): 2.5 x n_items^2 x 8 bytes.
BYTES_PER_CELL = 20
_MIRROR_BLOCK = 1024


def memory_budget() -> int:
    """Bytes EASE may use: :data:`BUDGET_FRACTION` of the physical RAM (``os.sysconf``)."""
    return int(BUDGET_FRACTION * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def memory_needed(n_items: int) -> int:
    """Estimated peak bytes of fitting EASE on ``n_items`` items (:data:`BYTES_PER_CELL` per item pair)."""
    return BYTES_PER_CELL * int(n_items) ** 2


def _mirror_upper(a: np.ndarray) -> None:
    """Copy the upper triangle of square ``a`` onto its lower one, in place, a block of columns at a time."""
    n = a.shape[0]
    for s in range(0, n, _MIRROR_BLOCK):
        e = min(s + _MIRROR_BLOCK, n)
        a[e:, s:e] = a[s:e, e:].T
        block = np.triu(a[s:e, s:e])
        a[s:e, s:e] = block + np.triu(block, 1).T


def _spd_inverse(g: np.ndarray) -> np.ndarray:
    """Inverse of the symmetric positive definite float64 ``g``, overwriting ``g`` (Cholesky: potrf, potri)."""
    a = g.T  # Fortran-ordered view of the same (symmetric) matrix: LAPACK works on it in place
    c, info = lapack.dpotrf(a, lower=0, clean=0, overwrite_a=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"EASE: X^T X + lam I is not positive definite (dpotrf info {info})")
    inv, info = lapack.dpotri(c, lower=0, overwrite_c=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"EASE: the Cholesky factor is singular (dpotri info {info})")
    _mirror_upper(inv)
    return inv


def ease_weights(train: sp.spmatrix, lam: float) -> np.ndarray:
    """EASE's item-item weights ``B`` (float64, n_items x n_items, zero diagonal) of a binary train matrix.

    Parameters
    ----------
    train : scipy sparse matrix, shape (n_users, n_items)
        Interactions; every stored non-zero counts as 1.
    lam : float
        L2 weight ``lambda`` > 0 (added to the Gram matrix's diagonal).

    Returns
    -------
    numpy.ndarray of float64, shape (n_items, n_items)
        ``B[i, j] = -P[i, j] / P[j, j]`` for ``i != j`` and 0 on the diagonal, ``P = (X^T X + lam I)^-1``.
    """
    if not lam > 0:
        raise ValueError(f"EASE: lam must be > 0, got {lam!r}")
    x = sp.csr_matrix(train, dtype=np.float64, copy=True)
    x.sum_duplicates()
    x.eliminate_zeros()
    x.data[:] = 1.0
    g = (x.T @ x).toarray()
    g.flat[:: g.shape[0] + 1] += float(lam)
    p = _spd_inverse(g)
    p /= -np.diag(p).copy()[None, :]
    np.fill_diagonal(p, 0.0)
    return p


class EASEScorer:
    """Scores ``X_u B`` over copies of the train rows and of ``B`` (float32), as every peer's scorer.

    The product is sparse rows times dense ``B``: a user's scores sum the rows of ``B`` of the items they hold,
    so a batch costs (its train pairs) x n_items, not (its users) x n_items^2 as with the rows densified (on
    amazon-beauty, 22k users with ~5 train items each over 12k items, ~2,000 times fewer operations).
    """

    def __init__(self, train: sp.spmatrix, weights: np.ndarray) -> None:
        self.train = sp.csr_matrix(train, dtype=np.float32, copy=True)
        self.train.data[:] = 1.0
        self.weights = np.ascontiguousarray(weights, dtype=np.float32)

    def __call__(self, users: np.ndarray) -> torch.Tensor:
        """Scores of shape (len(users), n_items), float32, higher is better."""
        rows = self.train[np.asarray(users, dtype=np.int64)]
        return torch.from_numpy(np.ascontiguousarray(rows @ self.weights, dtype=np.float32))


class EASEPeer:
    """EASE behind the peer protocol (:mod:`benchmarks.peers`): each step computes the closed form.

    Parameters
    ----------
    lam : float, default 500
        The L2 weight ``lambda`` (Steck's ML-20M setting; tune it on valid).
    num_threads : int, default 2
        BLAS threads of the inverse.
    """

    name = "ease"

    def __init__(self, lam: float = 500.0, num_threads: int = 2) -> None:
        self.lam, self.num_threads = float(lam), int(num_threads)
        self._scorer: Scorer | None = None

    @staticmethod
    def skip_reason(train: sp.spmatrix, budget: int | None = None) -> str | None:
        """Why EASE cannot run on ``train``'s catalogue here (None when it fits); allocates nothing."""
        n_items = int(train.shape[1])
        need, budget = memory_needed(n_items), memory_budget() if budget is None else int(budget)
        if need <= budget:
            return None
        return (f"EASE needs ~{need / 2**30:.1f} GiB for the {n_items:,} x {n_items:,} float64 item-item inverse "
                f"({BYTES_PER_CELL / 8:g} x n_items^2 x 8 bytes), over its budget of {budget / 2**30:.1f} GiB "
                f"({BUDGET_FRACTION:.0%} of this machine's RAM)")

    def partial_fit_epoch(self, train: sp.spmatrix) -> float:
        from threadpoolctl import threadpool_limits

        reason = self.skip_reason(train)
        if reason:
            raise MemoryError(reason)
        t = time.perf_counter()
        with threadpool_limits(self.num_threads, user_api="blas"):
            weights = ease_weights(train, self.lam)
        seconds = time.perf_counter() - t
        self._scorer = EASEScorer(train, weights)
        return seconds

    def scorer(self) -> Scorer:
        if self._scorer is None:
            raise RuntimeError("EASEPeer: call partial_fit_epoch before scorer")
        return self._scorer

    def params(self) -> dict[str, Any]:
        return {"lam": self.lam, "num_threads": self.num_threads}
