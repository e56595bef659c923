"""Initial embedding tables: seeded random normal, or a spectral start from the training matrix.

``"spectral"`` places users and items so that, before any training, ranking items by Euclidean
distance to a user already equals ranking them by an item-item spectral similarity -- about the
quality of a rank-d truncated SVD recommender (valid Recall@50 0.49 on ml-100k and 0.30 on
citeulike-a at epoch 0, where a random start is at chance) -- in the geometry a trained CML model
has: users and items near the unit sphere, positives at a squared distance about half the median.

How (``benchmarks/results/convergence.md`` records the variants tried):

1. Truncated SVD of the degree-normalised matrix ``A = D_u^-1/2 R D_i^-1/2`` (R binary) by a
   seeded randomised range finder: ``A ~ P S Q^T`` with ``d - 1`` components.
2. Item coordinates ``y_j = (Q S)_j``, centred; a user's point is the mean of its items' points, so
   ``<user, y_j>`` is the user's mean spectral similarity to item j. Centring changes every score
   of a user by the same amount, so no ranking changes.
3. The item coordinates are scaled so that the median item has norm 1; rows beyond are shrunk onto
   the unit sphere (the tails of the spectral coordinates would otherwise squeeze every other item
   next to the origin, where all distances look alike).
4. The maximum-inner-product-to-nearest-neighbour map: item ``j`` gets the extra coordinate
   ``sqrt(1 - |y_j|^2)`` and users get 0, so every item lies on the unit sphere and
   ``|u - v_j|^2 = |u|^2 + 1 - 2 <u, y_j>``: the distance ranks exactly as the inner product.
   Users are then scaled onto the sphere (a user's ranking does not depend on its scale).

Everything is finally scaled by ``INSIDE`` times the ball radius (``max_norm``; 1 without a bound):
rows that sit exactly on the sphere in float64 round to float32 values whose computed norm can be
``radius * (1 + 1 ulp)`` on one CPU and not on another, and the first clip would then move them
by a machine-dependent amount. Scaling both tables by the same factor changes no ranking (every
distance scales alike), and the margin of ``INSIDE`` is far above the rounding of a float32 norm,
so the ball constraint holds exactly and the clip leaves the start untouched on every machine. On a
matrix too small for a spectral basis (fewer than 3 users or items) the random start is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

if TYPE_CHECKING:  # torch is imported where a table is made: reading INITS (the CLI's flags) does not need it
    import torch

__all__ = ["INITS", "random_tables", "spectral_tables"]

#: Names of the initialisations (``EmbeddingConfig.init``).
INITS = ("spectral", "random")

#: Exponent of the item degree in the normalisation ``D_u^-1/2 R D_i^-ITEM_DEGREE_POWER`` (1/2: the
#: symmetric normalisation; at epoch 0 it ranked best on ml-100k, 0.487 against 0.463 for 1/4 and
#: 0.456 for 0, and as well as 1/4 on citeulike-a, 0.301 against 0.304 and 0.248 for 0).
ITEM_DEGREE_POWER = 0.5
#: Item norm quantile scaled to the unit sphere (0.5: the median item; 1.0, the largest, left all
#: but a few items at nearly the same distance from every user: 0.25 vs 0.30 on citeulike-a).
NORM_QUANTILE = 0.5
#: Power iterations of the randomised SVD (2 ranked as well as 4 at half the cost; 1 was worse).
POWER_ITERATIONS = 2
#: Share of the ball radius the spectral rows may reach (1 - 2^-16, 1.5e-5 below the sphere): a
#: float32 norm of a d-vector is off by at most about d * 2^-24 (2^-17 at d = 128), so a row scaled
#: to ``INSIDE * radius`` never measures above the radius; the relative shift is far below anything
#: training resolves.
INSIDE = 1.0 - 2.0 ** -16


def random_tables(n_users: int, n_items: int, factors: int, std: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded normal tables with standard deviation ``std`` (users drawn first, then items)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n_users, factors, generator=gen) * std, torch.randn(n_items, factors, generator=gen) * std


def spectral_tables(train: sp.spmatrix, factors: int, seed: int, radius: float = 1.0) -> tuple[np.ndarray, np.ndarray] | None:
    """Spectral initial tables (see the module docstring), float32, every row of norm <= ``radius``.

    Parameters
    ----------
    train : scipy.sparse matrix, shape (n_users, n_items)
        The training positives (non-zeros; weights are ignored).
    factors : int
        Embedding dimension d (d - 1 spectral components and the extra coordinate).
    seed : int
        Seed of the randomised SVD.
    radius : float
        Ball radius.

    Returns
    -------
    (users, items) arrays of shapes (n_users, d), (n_items, d), or None when the matrix is too
    small for a spectral basis (the caller falls back to the random start).
    """
    r = sp.csr_matrix(train, dtype=np.float64, copy=True)
    r.eliminate_zeros()
    r.data[:] = 1.0
    n_users, n_items = r.shape
    k = min(factors - 1, n_users - 1, n_items - 1)
    if min(n_users, n_items) < 3 or k < 1 or r.nnz == 0:
        return None
    du = np.asarray(r.sum(axis=1)).ravel()
    di = np.asarray(r.sum(axis=0)).ravel()
    a = sp.diags(1.0 / np.sqrt(np.maximum(du, 1.0))) @ r @ sp.diags(1.0 / np.maximum(di, 1.0) ** ITEM_DEGREE_POWER)
    q, s = _right_singular(sp.csr_matrix(a), k, seed)
    y = q * s
    y -= y.mean(axis=0)
    users = sp.diags(1.0 / np.maximum(du, 1.0)) @ r @ y  # each user at the mean of its items
    norms = np.linalg.norm(y, axis=1)
    scale = np.quantile(norms, NORM_QUANTILE)
    if not scale > 0:
        return None
    y /= scale
    y *= np.minimum(1.0, 1.0 / np.maximum(np.linalg.norm(y, axis=1), 1e-12))[:, None]
    items = np.zeros((n_items, factors))
    items[:, :k] = y
    items[:, -1] = np.sqrt(np.maximum(1.0 - np.einsum("ij,ij->i", y, y), 0.0))
    user_tab = np.zeros((n_users, factors))
    user_tab[:, :k] = users
    unorm = np.linalg.norm(user_tab, axis=1, keepdims=True)
    user_tab = np.where(unorm > 1e-12, user_tab / np.maximum(unorm, 1e-12), 0.0)
    scale = radius * INSIDE
    return (user_tab * scale).astype(np.float32), (items * scale).astype(np.float32)


def _right_singular(a: sp.csr_matrix, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` right singular vectors and values of ``a`` by a seeded randomised range finder
    (Halko, Martinsson & Tropp 2011) with ``POWER_ITERATIONS`` normalised power iterations; float32
    sparse products (scipy) and QR factorisations (torch, the caller's thread count)."""
    import torch

    a = sp.csr_matrix(a, dtype=np.float32)
    at = a.T.tocsr()
    width = min(k + 10, min(a.shape))
    rng = np.random.default_rng(seed)
    omega = rng.standard_normal((a.shape[0], width), dtype=np.float32)

    def orth(x: np.ndarray) -> np.ndarray:
        return torch.linalg.qr(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))[0].numpy()

    basis = orth(at @ omega)  # in item space
    for _ in range(POWER_ITERATIONS):
        basis = orth(at @ (a @ basis))
    b = np.asarray(a @ basis, dtype=np.float64)  # a restricted to the basis: a ~ b basis^T
    evals, evecs = np.linalg.eigh(b.T @ b)  # right singular pairs of b, from its small Gram matrix
    top = np.argsort(evals)[::-1][:k]
    return basis.astype(np.float64) @ evecs[:, top], np.sqrt(np.maximum(evals[top], 0.0))
