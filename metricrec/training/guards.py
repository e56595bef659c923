"""Checks that keep a training from failing silently.

- :func:`trainable_pairs`: a user who holds every item has no negative to draw, so the triplet loss
  has nothing to push; such users' pairs are left out of the training pairs with one warning that
  counts them (their vectors stay where they were initialised, their items are still "already
  liked" for retrieval and excluded from validation rankings). Users who hold *nearly* every item
  are trained: the sampler draws their negatives from the few items left
  (:meth:`metricrec.training.sampling._Sampler.sample`).
- :func:`check_tables`: after every epoch, the embedding tables must be finite and not collapsed
  (every row the same point, e.g. all zero); otherwise :class:`~metricrec.errors.TrainingDivergedError`
  names the table, the epoch and the likely cause. It costs two reductions over each table
  (``amax``/``amin`` per column: O(d) extra memory).
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch

from ..errors import TrainingDivergedError

__all__ = ["trainable_pairs", "check_tables"]


def trainable_pairs(train: sp.csr_matrix) -> sp.csr_matrix:
    """``train`` without the rows of users who hold every item (warned about, counted); ``train``
    itself when there are none."""
    counts = np.diff(train.indptr)
    full = counts >= train.shape[1]
    if not full.any():
        return train
    keep_pairs = np.repeat(~full, counts)
    indptr = np.concatenate([[0], np.cumsum(np.where(full, 0, counts))]).astype(train.indptr.dtype)
    warnings.warn(f"{int(full.sum()):,} user(s) hold every one of the {train.shape[1]:,} items, so no negative "
                  f"can be drawn for them: their {int(counts[full].sum()):,} pairs are left out of training "
                  "(their vectors keep their initial values; their items still count as already liked)",
                  stacklevel=3)
    return sp.csr_matrix((train.data[keep_pairs], train.indices[keep_pairs], indptr), shape=train.shape)


def check_tables(tables: dict[str, torch.Tensor], epoch: int, learning_rate: float) -> None:
    """Raise :class:`TrainingDivergedError` when a table holds NaN or infinite values or has collapsed
    (all rows the same point); tables of fewer than two rows are only checked for finiteness."""
    lower = f"lower the learning rate (now {learning_rate:g}; e.g. {learning_rate / 10:g})"
    for name, table in tables.items():
        if table.numel() == 0:
            continue
        with torch.no_grad():
            hi, lo = table.amax(0), table.amin(0)  # NaN propagates; O(d) memory
            if not (torch.isfinite(hi).all() and torch.isfinite(lo).all()):
                raise TrainingDivergedError(
                    f"training diverged at epoch {epoch}: the {name} vectors became NaN or infinite "
                    f"(likely cause: the learning rate is too high); {lower}")
            spread = float((hi - lo).max())
            scale = max(float(hi.abs().max()), float(lo.abs().max()))
        if table.shape[0] >= 2 and spread <= 1e-6 * max(scale, 1e-6):
            where = "zero" if scale <= 1e-12 else "one point"
            raise TrainingDivergedError(
                f"training diverged at epoch {epoch}: all {table.shape[0]:,} {name} vectors collapsed to {where} "
                f"(likely cause: the learning rate is too high, or a margin/regulariser that pulls every vector "
                f"together); {lower}")
