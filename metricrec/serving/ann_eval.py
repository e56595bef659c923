"""How good an approximate index is: exact reference neighbours and recall@k against them."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ..errors import ConfigError

__all__ = ["compare_to_exact", "exact_search", "recall_at_k"]


def exact_search(table: Any, queries: Any, k: int, *, distance: str = "euclidean",
                 chunk: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` rows of ``table`` for each query (numpy, BLAS), chunked over queries.

    Parameters
    ----------
    table : array-like, shape (n, d)
    queries : array-like, shape (m, d)
    k : int
    distance : {"euclidean", "dot"}
        Nearest by squared L2 distance, or largest inner product.
    chunk : int, optional
        Queries per block: memory is bounded by ``chunk * n`` float32 scores (default: blocks of
        at most 64 MiB, and at most 256 queries).

    Returns
    -------
    values : numpy.ndarray of float32, shape (m, min(k, n))
        Squared distances ascending (euclidean) or inner products descending (dot).
    ids : numpy.ndarray of int64, same shape
    """
    x = np.ascontiguousarray(table, dtype=np.float32)
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if distance not in ("euclidean", "dot"):
        raise ConfigError(f"distance must be 'euclidean' or 'dot', got {distance!r}")
    k = min(int(k), x.shape[0])
    chunk = chunk or max(1, min(256, (64 << 20) // (4 * x.shape[0])))
    x_sq = np.einsum("ij,ij->i", x, x)
    out_v = np.empty((q.shape[0], k), dtype=np.float32)
    out_i = np.empty((q.shape[0], k), dtype=np.int64)
    for lo in range(0, q.shape[0], chunk):
        block = q[lo:lo + chunk]
        s = block @ x.T  # higher is better: ip, or 2 q.x - |x|^2 (= |q|^2 - |q - x|^2)
        if distance == "euclidean":
            s *= 2.0
            s -= x_sq
        part = np.argpartition(-s, k - 1, axis=1)[:, :k] if k < x.shape[0] else np.tile(np.arange(k), (len(s), 1))
        top = np.take_along_axis(s, part, axis=1)
        order = np.argsort(-top, axis=1, kind="stable")
        ids = np.take_along_axis(part, order, axis=1)
        vals = np.take_along_axis(top, order, axis=1)
        if distance == "euclidean":
            vals = np.einsum("ij,ij->i", block, block)[:, None] - vals
        out_v[lo:lo + chunk], out_i[lo:lo + chunk] = vals, ids
    return out_v, out_i


def recall_at_k(approx_ids: Any, exact_ids: Any) -> float:
    """Mean over queries of ``|approx ∩ exact| / |exact|`` (the exact lists' valid ids; ``-1``
    entries are ignored on both sides)."""
    a = np.asarray(approx_ids)
    e = np.asarray(exact_ids)
    if a.ndim != 2 or e.ndim != 2 or a.shape[0] != e.shape[0]:
        raise ConfigError(f"approx_ids and exact_ids must be 2-D with the same rows, got {a.shape} and {e.shape}")
    hits, total = 0, 0
    for ra, re in zip(a, e):
        re = re[re >= 0]
        hits += np.intersect1d(ra[ra >= 0], re).size
        total += re.size
    return hits / total if total else 1.0


def compare_to_exact(index: Any, table: Any, queries: Any, k: int = 10, *, distance: str = "euclidean",
                     **search_kw: Any) -> dict[str, float]:
    """Recall@k of ``index`` against exact search on ``queries``, and both speeds.

    Queries are sent one at a time (as a service does) to both the index and the exact search.

    Returns
    -------
    dict
        ``recall`` (mean recall@k), ``approx_qps`` and ``exact_qps`` (queries per second, one
        query per call), ``speedup`` (their ratio).
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)
    t0 = time.perf_counter()
    exact = np.concatenate([exact_search(table, q[i:i + 1], k, distance=distance)[1] for i in range(len(q))])
    exact_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    approx = np.concatenate([index.search(q[i:i + 1], k, **search_kw)[1] for i in range(len(q))])
    approx_s = time.perf_counter() - t0
    exact_qps, approx_qps = len(q) / max(exact_s, 1e-9), len(q) / max(approx_s, 1e-9)
    return {"recall": recall_at_k(approx, exact), "approx_qps": approx_qps, "exact_qps": exact_qps,
            "speedup": approx_qps / exact_qps}
