"""Checks that keep a training from failing silently.

- :func:`trainable_pairs`: a user who holds every item has no negative to draw, so the triplet loss
  has nothing to push; such users' pairs are left out of the training pairs with one warning that
  counts them (their vectors stay where they were initialised, their items are still "already
  liked" for retrieval and excluded from validation rankings). Users who hold *nearly* every item
  are trained: the sampler draws their negatives from the few items left
  (:meth:`metricrec.training.sampling._Sampler.sample`).
- :func:`check_tables`: after every epoch, the embedding tables must be finite and not collapsed
  (:func:`table_state`); otherwise :class:`~metricrec.errors.TrainingDivergedError` names the table,
  the epoch and the likely cause. Loading a model applies the same rule to its saved tables
  (:meth:`metricrec.models.persistence.PersistenceMixin.load`).
- Near-collapse (:func:`distinct_rows`): a table whose rows fall onto a few points without all
  coinciding -- a learning rate of 1e30 at CML's defaults throws 195 of 200 item vectors onto one
  point of the sphere and the rest onto five more, which the rule below does not see. The trainer
  counts the distinct rows of a fixed sample of each table (:data:`DISTINCT_SAMPLE` evenly spaced
  rows) at the start and after every epoch; when a table that started on at least
  :data:`MIN_DISTINCT_START` distinct points keeps at most :data:`NEAR_COLLAPSE_SHARE` of them, the
  run is refused as diverged. Gradient steps never merge two distinct rows (rows coincide bitwise
  only when a step throws them to the same point, e.g. the clip onto the ball of vectors that all
  point one way), so a healthy run keeps every distinct row -- rows that start equal (users or
  items without training pairs under the spectral start) are counted once at the start and never
  make the count fall. It costs one gather of the sample and a sort.
- :func:`table_state`: the one definition of a collapsed table. A table of at least two rows has
  collapsed when every column's spread (max - min over the rows) is at most 1e-6 times the table's
  largest absolute value (1e-12 when that value is under 1e-6): every row is the same point,
  within float32 rounding -- "zero" when that point is the origin. A table of fewer than two rows
  cannot collapse (a model of one user or one item is valid). It costs two reductions over the
  table (``amax``/``amin`` per column: O(d) extra memory).
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch

from ..errors import TrainingDivergedError

__all__ = ["trainable_pairs", "check_tables", "table_state", "distinct_rows", "DISTINCT_SAMPLE",
           "MIN_DISTINCT_START", "NEAR_COLLAPSE_SHARE"]

#: Rows of a table whose distinct points are counted (evenly spaced; every row of a smaller table).
DISTINCT_SAMPLE = 4096
#: Distinct points a table's sample must start on for the near-collapse rule to apply.
MIN_DISTINCT_START = 8
#: A table whose sample keeps at most this share of the distinct points it started on has nearly
#: collapsed (the 1e30 run keeps 6 of 200 item points and 65 of 300 user points; a healthy run all).
NEAR_COLLAPSE_SHARE = 0.5


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


def table_state(table: torch.Tensor) -> str | None:
    """None for a usable table; ``"non-finite"`` when it holds NaN or infinite values; ``"zero"`` or
    ``"one point"`` when it has collapsed (see the module docstring: at least two rows, every row the
    same point within a relative 1e-6)."""
    if table.numel() == 0:
        return None
    with torch.no_grad():
        if table.device.type == "cpu" and table.dtype in (torch.float32, torch.float64):  # numpy's column reductions: one thread, no pool woken per call
            a = table.detach().numpy()
            hi, lo = a.max(0), a.min(0)  # NaN propagates; O(d) memory
        else:
            hi, lo = table.amax(0).cpu().numpy(), table.amin(0).cpu().numpy()
    if not (np.isfinite(hi).all() and np.isfinite(lo).all()):
        return "non-finite"
    spread = float((hi - lo).max())
    scale = max(float(np.abs(hi).max()), float(np.abs(lo).max()))
    if table.shape[0] >= 2 and spread <= 1e-6 * max(scale, 1e-6):
        return "zero" if scale <= 1e-12 else "one point"
    return None


def distinct_rows(table: torch.Tensor) -> int:
    """Distinct rows (bitwise, ``-0.0`` as ``0.0``) among :data:`DISTINCT_SAMPLE` evenly spaced rows of
    ``table`` (all of its rows when it has fewer); 0 for an empty table."""
    n = int(table.shape[0])
    if n == 0 or table.numel() == 0:
        return 0
    with torch.no_grad():
        rows = table if n <= DISTINCT_SAMPLE else table[
            torch.linspace(0, n - 1, DISTINCT_SAMPLE, device=table.device).round().long()]
        sample = np.ascontiguousarray(rows.detach().to("cpu", torch.float32).numpy()) + np.float32(0.0)
    return int(np.unique(sample.view(np.dtype((np.void, sample.shape[1] * 4))).ravel()).size)


def check_tables(tables: dict[str, torch.Tensor], epoch: int, learning_rate: float,
                 distinct_at_start: dict[str, int] | None = None) -> None:
    """Raise :class:`TrainingDivergedError` when a table holds NaN or infinite values, has collapsed
    (:func:`table_state`) or has nearly collapsed: keeps at most :data:`NEAR_COLLAPSE_SHARE` of the
    ``distinct_at_start[name]`` distinct rows (:func:`distinct_rows`) it started on, when that was at
    least :data:`MIN_DISTINCT_START`."""
    lower = f"lower the learning rate (now {learning_rate:g}; e.g. {learning_rate / 10:g})"
    for name, table in tables.items():
        state = table_state(table)
        if state == "non-finite":
            raise TrainingDivergedError(
                f"training diverged at epoch {epoch}: the {name} vectors became NaN or infinite "
                f"(likely cause: the learning rate is too high); {lower}")
        if state is not None:
            raise TrainingDivergedError(
                f"training diverged at epoch {epoch}: all {table.shape[0]:,} {name} vectors collapsed to {state} "
                f"(likely cause: the learning rate is too high, or a margin/regulariser that pulls every vector "
                f"together); {lower}")
        start = (distinct_at_start or {}).get(name, 0)
        if start >= MIN_DISTINCT_START:
            now = distinct_rows(table)
            if now <= NEAR_COLLAPSE_SHARE * start:
                of = f" ({DISTINCT_SAMPLE:,} rows sampled)" if table.shape[0] > DISTINCT_SAMPLE else ""
                raise TrainingDivergedError(
                    f"training diverged at epoch {epoch}: the {table.shape[0]:,} {name} vectors nearly collapsed "
                    f"onto {now:,} distinct point(s), from {start:,} at the start{of} (likely cause: the learning "
                    f"rate is too high, so that steps throw the vectors onto a few points); {lower}")
