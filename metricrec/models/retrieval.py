"""Exact top-N retrieval over an embedding table, with the filters every recommender offers.

Shared by all embedding models (:class:`metricrec.models.base.EmbeddingRecommender`). Scores:
``"euclidean"`` ranks by distance (score = -||q - c||, the returned scores recomputed exactly),
``"dot"`` by inner product. On the CPU it runs in numpy (one BLAS product, ``argpartition``): a
single query costs a matrix-vector product, not a round of torch operator launches; on an
accelerator it runs in torch on the tables' device.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from ..data.interactions import csr_rows
from ..errors import ConfigError, UnknownIdError
from .retrieval_numba import select_one

__all__ = ["DISTANCES", "check_indices", "check_n", "top_n", "top_n_of_scores", "score_block"]

#: How a model scores a (query, candidate) pair.
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


def score_block(q: np.ndarray, cand: np.ndarray, cand_sq: np.ndarray | None, distance: str) -> np.ndarray:
    """(n_queries, n_candidates) float32 ranking scores, higher is better.

    For ``"euclidean"`` this is ``2 q.c - |c|^2`` (= ``|q|^2 - |q - c|^2``: the same order as the
    negative distance for each query, without the square root); ``cand_sq`` is ``|c|^2``.
    """
    s = q @ cand.T
    if distance == "euclidean":
        s *= 2.0
        s -= cand_sq if cand_sq is not None else np.einsum("ij,ij->i", cand, cand)
    return s


def _mask(s: np.ndarray, exclude: sp.csr_matrix | None, filter_ids: np.ndarray | None,
          only_ids: np.ndarray | None) -> None:
    """Set the scores of excluded candidates to -inf in place."""
    if only_ids is not None:
        keep = np.zeros(s.shape[1], dtype=bool)
        keep[only_ids] = True
        s[:, ~keep] = -np.inf
    if filter_ids is not None and filter_ids.size:
        s[:, filter_ids] = -np.inf
    if exclude is not None and exclude.nnz:
        rows = csr_rows(exclude)
        keep = exclude.data != 0  # stored zeros are not interactions
        s[rows[keep], exclude.indices[keep]] = -np.inf


def top_n(q: np.ndarray, cand: np.ndarray, n: int, *, distance: str = "euclidean",
          cand_sq: np.ndarray | None = None, exclude: sp.csr_matrix | None = None,
          filter_ids: np.ndarray | None = None, only_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-n candidates per query row (numpy, CPU).

    Parameters
    ----------
    q : numpy.ndarray of float32, shape (n_queries, d)
    cand : numpy.ndarray of float32, shape (n_candidates, d)
    n : int
    distance : {"euclidean", "dot"}
    cand_sq : numpy.ndarray, shape (n_candidates,), optional
        Cached ``|c|^2`` (Euclidean).
    exclude : scipy.sparse.csr_matrix, shape (n_queries, n_candidates), optional
        Each row's non-zero columns are not returned (already-liked items).
    filter_ids, only_ids : numpy.ndarray of int64, optional
        Columns never returned / the only columns that may be returned.

    Returns
    -------
    ids : numpy.ndarray of int64, shape (n_queries, n)
    scores : numpy.ndarray of float32, shape (n_queries, n)
        Best first (negative Euclidean distance or inner product). Where fewer than n candidates
        are left, the tail is id -1 and score -inf.
    """
    if distance not in DISTANCES:
        raise ConfigError(f"distance must be one of {DISTANCES}, got {distance!r}")
    if q.shape[0] == 1 and only_ids is None:
        return _top_n_one(q[0], cand, int(n), distance, cand_sq, exclude, filter_ids)
    s = score_block(q, cand, cand_sq, distance)
    _mask(s, exclude, filter_ids, only_ids)
    n_cand = cand.shape[0]
    k = min(int(n), n_cand)
    if k < n_cand:  # the k best, unordered, in ascending index order (ties then go to the lower index)
        part = np.sort(np.argpartition(s, n_cand - k, axis=1)[:, n_cand - k:], axis=1)
    else:
        part = np.broadcast_to(np.arange(k), (len(q), k))
    vals = np.take_along_axis(s, part, 1)
    finite = np.isfinite(vals)
    if distance == "euclidean":  # exact distances of the returned candidates (the GEMM form loses ~1e-3)
        diff = q[:, None, :] - cand[part]
        exact = -np.sqrt(np.einsum("ijk,ijk->ij", diff, diff)) + np.float32(0.0)  # + 0 turns -0.0 into 0.0
        vals = np.where(finite, exact, -np.inf).astype(np.float32)
    order = np.argsort(-vals, axis=1, kind="stable")
    ids = np.take_along_axis(part, order, 1).astype(np.int64)
    vals = np.take_along_axis(vals, order, 1).astype(np.float32, copy=False)
    ids[~np.isfinite(vals)] = -1
    if k < n:
        ids = np.pad(ids, ((0, 0), (0, n - k)), constant_values=-1)
        vals = np.pad(vals, ((0, 0), (0, n - k)), constant_values=-np.inf)
    return ids, vals


def top_n_of_scores(s: np.ndarray, n: int, *, exclude: sp.csr_matrix | None = None,
                    filter_ids: np.ndarray | None = None,
                    only_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-n columns of each row of a score block computed by the caller (higher is better).

    The ranking of :func:`top_n` for models whose scores are not a distance between a query vector
    and a candidate vector (several vectors per user, a translation per user-item pair): the same
    filters, the same tie rule (the lower index first) and the same padding (id -1, score -inf).

    Parameters
    ----------
    s : numpy.ndarray of float32, shape (n_queries, n_candidates)
        Scores; masked in place.
    n : int
    exclude, filter_ids, only_ids
        As :func:`top_n`.

    Returns
    -------
    ids : numpy.ndarray of int64, shape (n_queries, n)
    scores : numpy.ndarray of float32, shape (n_queries, n)
    """
    s = np.asarray(s, dtype=np.float32)
    _mask(s, exclude, filter_ids, only_ids)
    n_cand = s.shape[1]
    k = min(int(n), n_cand)
    if k < n_cand:
        part = np.sort(np.argpartition(s, n_cand - k, axis=1)[:, n_cand - k:], axis=1)
    else:
        part = np.broadcast_to(np.arange(k), (s.shape[0], k))
    vals = np.take_along_axis(s, part, 1)
    order = np.argsort(-vals, axis=1, kind="stable")
    ids = np.take_along_axis(part, order, 1).astype(np.int64)
    vals = np.take_along_axis(vals, order, 1).astype(np.float32, copy=False)
    ids[~np.isfinite(vals)] = -1
    vals = np.where(np.isfinite(vals), vals, -np.inf).astype(np.float32, copy=False)
    if k < n:
        ids = np.pad(ids, ((0, 0), (0, n - k)), constant_values=-1)
        vals = np.pad(vals, ((0, 0), (0, n - k)), constant_values=-np.inf)
    return ids, vals


_NO_IDS = np.empty(0, dtype=np.int64)


def _top_n_one(q: np.ndarray, cand: np.ndarray, n: int, distance: str, cand_sq: np.ndarray | None,
               exclude: sp.csr_matrix | None, filter_ids: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`top_n` for one query in 1-D operations (the latency path of a single recommendation):
    the same results, in as few array operations as it takes (each costs a microsecond or more
    whatever its size, beside a GEMV of tens)."""
    s = cand @ q
    if distance == "euclidean":
        s *= 2.0
        s -= cand_sq if cand_sq is not None else np.einsum("ij,ij->i", cand, cand)
    n_cand = s.shape[0]
    k = min(n, n_cand)
    liked = _NO_IDS
    if exclude is not None and exclude.nnz:
        data = exclude.data
        liked = exclude.indices if data.all() else exclude.indices[data != 0]
    if k:
        fast = select_one(s, liked.astype(np.int64, copy=False),
                          _NO_IDS if filter_ids is None else filter_ids.astype(np.int64, copy=False), k, cand, q,
                          distance == "euclidean")
        if fast is not None:  # numba: mask, selection, exact distances and order in one call
            ids, vals = fast
            if k < n:
                ids = np.pad(ids, (0, n - k), constant_values=-1)
                vals = np.pad(vals, (0, n - k), constant_values=-np.inf)
            return ids[None], vals[None]
    if filter_ids is not None and filter_ids.size:
        s[filter_ids] = -np.inf
    if liked.size:
        s[liked] = -np.inf
    part = np.argpartition(s, n_cand - k)[n_cand - k:] if k < n_cand else np.arange(k)
    part.sort()  # ties then go to the lower index, as in top_n
    vals = s[part]
    finite = np.isfinite(vals)
    all_finite = bool(finite.all())
    if distance == "euclidean":  # exact distances of the returned candidates (the GEMV form loses ~1e-3)
        diff = cand[part]
        diff -= q
        exact = np.sqrt(np.einsum("ij,ij->i", diff, diff))
        np.negative(exact, out=exact)
        exact += np.float32(0.0)  # turns -0.0 into 0.0
        vals = exact if all_finite else np.where(finite, exact, -np.inf).astype(np.float32)
    order = np.argsort(-vals, kind="stable")
    ids, vals = part[order].astype(np.int64, copy=False), vals[order].astype(np.float32, copy=False)
    if not all_finite:
        ids[~np.isfinite(vals)] = -1
    if k < n:
        ids = np.pad(ids, (0, n - k), constant_values=-1)
        vals = np.pad(vals, (0, n - k), constant_values=-np.inf)
    return ids[None], vals[None]


def top_n_torch(q: torch.Tensor, cand: torch.Tensor, n: int, mask: torch.Tensor,
                distance: str = "euclidean") -> tuple[np.ndarray, np.ndarray]:
    """:func:`top_n` on an accelerator: ``mask`` (n_queries, n_candidates) bool, True where allowed."""
    if distance == "dot":
        score = q @ cand.T
    else:
        score = -torch.cdist(q, cand).square_()
    score = score.masked_fill(~mask, float("-inf"))
    k = min(int(n), cand.shape[0])
    vals, idx = torch.topk(score, k, dim=1)
    if distance == "euclidean":
        exact = -(q[:, None, :] - cand[idx]).pow(2).sum(2).sqrt()
        vals = torch.where(torch.isfinite(vals), exact, vals)
        vals, order = torch.sort(vals, dim=1, descending=True, stable=True)
        idx = idx.gather(1, order)
    ids = np.full((q.shape[0], int(n)), -1, dtype=np.int64)
    out = np.full((q.shape[0], int(n)), -np.inf, dtype=np.float32)
    ids[:, :k] = idx.cpu().numpy()
    out[:, :k] = vals.cpu().numpy()
    ids[~np.isfinite(out)] = -1
    return ids, out
