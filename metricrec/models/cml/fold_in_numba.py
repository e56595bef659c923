"""CML's fold-in as one compiled pass (numba): every new user's whole optimisation in one call.

A fold-in (:meth:`metricrec.models.fold_in.FoldInMixin.fold_in_rows`) fits user vectors against a
frozen item table. Through the trainer that is ``epochs x batches`` Python-level steps (sample the
negatives, the step's kernels, the optimiser, the guards), each over all the new users' pairs: on
ml-100k 192 steps and about a second, most of it per-step overhead. With the items frozen the users
do not interact, so each user's optimisation runs on its own, in parallel over users:

- every epoch, each of the user's pairs goes to one of the run's ``R`` batches at random (the
  trainer's shuffled order cut into ``R`` batches gives every pair a uniformly random batch too);
- per batch, the user's pairs in it each draw U negatives uniformly among the items the user does not
  like (rejection against its sorted liked items; after 64 misses the draw picks the t-th unliked item
  directly), take CML's hinge on the closest one weighted by ``log(floor(J M / U) + 1)``, and their
  gradients -- all at the batch's starting vector, as the trainer's batch computes them -- are summed;
- AdaGrad (element-wise accumulators from 0.1, eps 1e-10, as
  :class:`~metricrec.training.optim.RowAdagrad`) at the schedule's rate of that step (the same
  schedule the trainer would run: passed in per step), then the vector is clipped into the ball.

That is the trainer's fold-in step for step, with one difference of sampling only: the trainer shares
one draw between groups of rows (:class:`~metricrec.training.sampling.NegativeDraw`); here each pair
draws its own U negatives, the same distribution per pair. Random numbers come from a counter-based
generator keyed by (seed, user), so the result is the same for any thread count. The tests compare the
gradient of one batch with an independent NumPy computation and the fold-in's quality with the trainer's.
The compiled pass and its pieces (the generator, a negative's draw, one pair's hinge and gradient, the
AdaGrad step) are in :mod:`metricrec.models.cml.fold_in_kernels`.
"""

from __future__ import annotations

import numpy as np
import torch

from ...training.optim import lazy_kernels

__all__ = ["fold_in_numba", "warm_up"]


def _fold_kernel(numba):
    """The whole fold-in of every row, in parallel over rows (:func:`metricrec.models.cml.fold_in_kernels.fold`,
    module level so numba caches it)."""
    from . import fold_in_kernels

    return fold_in_kernels.fold


_compile = lazy_kernels(_fold_kernel)


def warm_up() -> None:
    """Compile (or load from numba's cache) the kernel on a tiny problem."""
    fold_in_numba(torch.zeros(1, 2), torch.ones(3, 2), np.array([0, 1]), np.array([0], dtype=np.int32),
                  np.full(2, 0.1, dtype=np.float32), n_rounds=1, n_negatives=1, margin=1.0, use_rank_weight=True,
                  max_norm=1.0, seed=0)


def fold_in_numba(user: torch.Tensor, item: torch.Tensor, indptr: np.ndarray, indices: np.ndarray,
                  rates: np.ndarray, *, n_rounds: int, n_negatives: int, margin: float, use_rank_weight: bool,
                  max_norm: float | None, seed: int, initial_accumulator: float = 0.1, eps: float = 1e-10) -> None:
    """Fold in every row of a CSR matrix of liked items, in place on ``user``.

    Parameters
    ----------
    user : torch.Tensor, shape (n, d), float32, contiguous, CPU
        The starting vectors (row r: the user of CSR row r), trained in place.
    item : torch.Tensor, shape (n_items, d), float32, CPU
        The frozen item table.
    indptr, indices : numpy.ndarray
        The CSR structure of the liked items (each row's indices sorted and distinct; every row has
        at least one liked item and at least one it does not like).
    rates : numpy.ndarray, shape (epochs * n_rounds,), float32
        The learning rate of every step (epoch-major), the schedule's factor times the peak rate.
    n_rounds : int
        Batches per epoch.
    n_negatives, margin, use_rank_weight : CML's U, m and rank weight.
    max_norm : float or None
        The ball's radius (None: no clipping).
    seed : int
    initial_accumulator, eps : float
        AdaGrad's, as :class:`~metricrec.training.optim.RowAdagrad`.
    """
    if user.dtype != torch.float32 or item.dtype != torch.float32 or not user.is_contiguous():
        raise ValueError("fold_in_numba needs a contiguous float32 user table and a float32 item table on the CPU")
    if rates.shape[0] % max(int(n_rounds), 1):
        raise ValueError(f"{rates.shape[0]} rates are not whole epochs of {n_rounds} batches")
    (fold,) = _compile()
    V = np.ascontiguousarray(item.detach().numpy())
    fold(user.detach().numpy(), V, np.asarray(indptr, dtype=np.int64), np.asarray(indices, dtype=np.int64),
         np.asarray(rates, dtype=np.float32), int(n_rounds), int(n_negatives), np.float32(margin),
         bool(use_rank_weight), np.float32(initial_accumulator), np.float32(eps), np.float32(max_norm or 0.0),
         int(seed) & (2**63 - 1))
