"""Exact top-N retrieval over an embedding table, with the filters every recommender offers.

Shared by all embedding models (:class:`metricrec.models.base.EmbeddingRecommender`): candidate
masks (already-liked items, a block list, an allow list), the score of a distance (Euclidean:
negative distance; dot: inner product), and top-N with exact scores.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from ..errors import ConfigError, UnknownIdError

__all__ = ["DISTANCES", "candidate_mask", "check_indices", "check_n", "top_n"]

#: How a model scores a (query, candidate) pair: "euclidean" ranks by distance (score = -||q - c||),
#: "dot" by inner product.
DISTANCES = ("euclidean", "dot")


def check_n(n: Any) -> int:
    """``n`` as an int; :class:`ConfigError` unless it is a positive integer."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise ConfigError(f"N must be a positive integer, got {n!r}")
    return int(n)


def check_indices(ids: Any, n: int, name: str) -> np.ndarray:
    """Integer indices in ``[0, n)`` as int64; ``TypeError`` for non-integers, :class:`UnknownIdError`
    naming the first out-of-range one."""
    arr = np.atleast_1d(np.asarray(ids))
    if arr.size == 0:
        return arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integer indices, got dtype {arr.dtype}")
    bad = arr[(arr < 0) | (arr >= n)]
    if bad.size:
        raise UnknownIdError(f"{name}: index {bad[0]} out of range [0, {n})")
    return arr.astype(np.int64)


def candidate_mask(n_rows: int, n_cols: int, liked: sp.csr_matrix | None, filter_ids: Any, only_ids: Any,
                   device: torch.device) -> torch.Tensor:
    """(n_rows, n_cols) bool, True where a column may be returned.

    Parameters
    ----------
    liked : scipy.sparse.csr_matrix, shape (n_rows, n_cols), optional
        Each row's non-zero columns are excluded (stored zeros are not interactions).
    filter_ids : array of int, optional
        Columns never returned.
    only_ids : array of int, optional
        The only columns that may be returned.
    """
    mask = torch.ones(n_rows, n_cols, dtype=torch.bool)
    if only_ids is not None:
        allowed = torch.zeros(n_cols, dtype=torch.bool)
        allowed[torch.from_numpy(check_indices(only_ids, n_cols, "items"))] = True
        mask &= allowed
    if filter_ids is not None:
        mask[:, torch.from_numpy(check_indices(filter_ids, n_cols, "filter_items"))] = False
    if liked is not None and liked.nnz:
        r = np.repeat(np.arange(n_rows), np.diff(liked.indptr))
        keep = liked.data != 0
        mask[torch.from_numpy(r[keep]), torch.from_numpy(liked.indices[keep].astype(np.int64))] = False
    return mask.to(device)


def _scores(q: torch.Tensor, cand: torch.Tensor, distance: str) -> torch.Tensor:
    if distance == "dot":
        return q @ cand.T
    sq = (q * q).sum(1, keepdim=True) + (cand * cand).sum(1)[None, :] - 2.0 * q @ cand.T
    return -sq.clamp_min_(0.0).sqrt_()


def _exact_distance_scores(q: torch.Tensor, cand: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    # The GEMM form loses ~1e-3 absolute precision for near points (a query is not at distance 0
    # from itself); recompute the returned scores directly, in chunks of rows bounding the
    # (rows, k, d) difference tensor (+ 0.0 turns -0.0 into 0.0).
    exact = torch.empty(idx.shape, dtype=q.dtype, device=q.device)
    step = max(1, (1 << 24) // max(1, idx.shape[1] * q.shape[1]))
    for lo in range(0, q.shape[0], step):
        diff = q[lo: lo + step, None, :] - cand[idx[lo: lo + step]]
        exact[lo: lo + step] = diff.pow_(2).sum(2).sqrt_().neg_().add_(0.0)
    return exact


def top_n(q: torch.Tensor, cand: torch.Tensor, n: int, mask: torch.Tensor,
          distance: str = "euclidean") -> tuple[np.ndarray, np.ndarray]:
    """Top-n candidates per query row, masked entries excluded.

    Parameters
    ----------
    q : torch.Tensor, shape (n_queries, d)
    cand : torch.Tensor, shape (n_candidates, d)
    n : int
    mask : torch.BoolTensor, shape (n_queries, n_candidates)
        True where a candidate may be returned.
    distance : {"euclidean", "dot"}

    Returns
    -------
    ids : numpy.ndarray of int64, shape (n_queries, n)
    scores : numpy.ndarray of float32, shape (n_queries, n)
        Best first. Where fewer than n candidates are left, the tail is id -1 and score -inf.
    """
    if distance not in DISTANCES:
        raise ConfigError(f"distance must be one of {DISTANCES}, got {distance!r}")
    score = _scores(q, cand, distance).masked_fill(~mask, float("-inf"))
    k = min(int(n), cand.shape[0])
    vals, idx = torch.topk(score, k, dim=1)
    if distance == "euclidean":
        vals = torch.where(torch.isfinite(vals), _exact_distance_scores(q, cand, idx), vals)
        vals, order = torch.sort(vals, dim=1, descending=True, stable=True)
        idx = idx.gather(1, order)
    ids = np.full((q.shape[0], int(n)), -1, dtype=np.int64)
    out = np.full((q.shape[0], int(n)), -np.inf, dtype=np.float32)
    ids[:, :k] = idx.cpu().numpy()
    out[:, :k] = vals.cpu().numpy()
    ids[~np.isfinite(out)] = -1
    return ids, out
