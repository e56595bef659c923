"""Approximate retrieval through a nearest-neighbour index, with the same filters as exact retrieval.

The index (:mod:`metricrec.serving.ann`) returns candidates by L2 distance (or inner product for a
dot model). We over-fetch ``N`` plus the most items any row may lose to its filters, drop the
filtered ones, recompute the survivors' exact scores, and fall back to exact retrieval for the
rows where the index returned too few.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from ..data.interactions import csr_rows
from ..errors import ConfigError
from .retrieval import top_n

__all__ = ["approximate_top_n"]


def approximate_top_n(model: Any, q: np.ndarray, n: int, exclude: sp.csr_matrix | None,
                      filter_ids: np.ndarray | None, only_ids: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Top-n of each query row through ``model.ann_index``; shapes and padding as exact retrieval."""
    index = getattr(model, "ann_index", None)
    if index is None:
        raise ConfigError("approximate=True needs an index: build one with `metricrec index` or model.attach_index()")
    item = model.item_embeddings
    if only_ids is not None:  # an allow list defeats the index: rank those candidates exactly
        return top_n(q, item, n, distance=model.distance, exclude=exclude, filter_ids=filter_ids, only_ids=only_ids)
    lost = (0 if exclude is None else int(np.diff(exclude.indptr).max(initial=0))) + (
        0 if filter_ids is None else len(filter_ids))
    k = min(item.shape[0], n + lost)
    _, cand = index.search(q, k)
    cand = np.asarray(cand, dtype=np.int64)
    blocked = cand < 0
    if filter_ids is not None and filter_ids.size:
        blocked |= np.isin(cand, filter_ids)
    if exclude is not None and exclude.nnz:
        blocked |= _liked(exclude, cand)
    ids, scores = _exact_scores(model, q, np.where(blocked, -1, cand), n)
    short = np.flatnonzero((ids[:, -1] < 0) & (np.count_nonzero(~blocked, 1) < min(n, item.shape[0])))
    if short.size:  # the index returned too few survivors: exact for those rows
        ex = None if exclude is None else exclude[short]
        ids[short], scores[short] = top_n(q[short], item, n, distance=model.distance, exclude=ex,
                                          filter_ids=filter_ids)
    return ids, scores


def _liked(exclude: sp.csr_matrix, cand: np.ndarray) -> np.ndarray:
    """(n, k) bool: cand[r, j] is among row r's excluded items (sorted-key search, vectorised)."""
    rows = csr_rows(exclude)
    keys = np.sort(rows * exclude.shape[1] + exclude.indices)
    query = np.arange(cand.shape[0], dtype=np.int64)[:, None] * exclude.shape[1] + np.maximum(cand, 0)
    pos = np.clip(np.searchsorted(keys, query), 0, len(keys) - 1)
    return keys[pos] == query


def _exact_scores(model: Any, q: np.ndarray, cand: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact scores of the surviving candidates (-1 = dropped), best n first, -1/-inf padded."""
    item = model.item_embeddings
    safe = np.maximum(cand, 0)
    if model.distance == "dot":
        s = np.einsum("ijk,ik->ij", item[safe], q)
    else:
        diff = q[:, None, :] - item[safe]
        s = -np.sqrt(np.einsum("ijk,ijk->ij", diff, diff)) + np.float32(0.0)
    s = np.where(cand >= 0, s, -np.inf).astype(np.float32)
    order = np.lexsort((cand, -s), axis=1)[:, :n]
    ids = np.take_along_axis(cand, order, 1)
    scores = np.take_along_axis(s, order, 1)
    ids[~np.isfinite(scores)] = -1
    if ids.shape[1] < n:
        pad = n - ids.shape[1]
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
    return ids, scores
