"""What the item map of a report shows: 2-D coordinates of item vectors, their popularity, a feature.

The map is a PCA of the item embeddings (numpy SVD of the centred table) or UMAP when the
``umap`` package is installed and asked for. Colours are training popularity (the number of
training users of each item, from the saved model's ``user_items``) or, when the run's data has a
small group of item features such as MovieLens genres, one category per item.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

__all__ = ["project_2d", "popularity", "feature_labels", "sample_rows", "MAX_POINTS"]

#: Items drawn on a map at most (a seeded sample of larger catalogues).
MAX_POINTS = 30_000
#: A feature group colours the map when it has between 2 and this many values (genres: 19).
MAX_CATEGORIES = 40
#: Categories shown by name; the others are drawn as "other".
SHOWN_CATEGORIES = 9


def sample_rows(n: int, limit: int = MAX_POINTS, seed: int = 0) -> np.ndarray:
    """All row numbers below ``n``, or a sorted seeded sample of ``limit`` of them."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def _pca(x: np.ndarray) -> tuple[np.ndarray, list[float]]:
    centred = x - x.mean(axis=0, keepdims=True)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    var = s ** 2
    share = ((var[:2] / var.sum()).tolist() if var.sum() > 0 else []) + [0.0, 0.0]
    xy = centred @ vt[:2].T
    if xy.shape[1] < 2:  # a one-factor model: the second axis is zero
        xy = np.hstack([xy, np.zeros((xy.shape[0], 2 - xy.shape[1]))])
    return xy, share


def project_2d(vectors: np.ndarray, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, str]:
    """2-D coordinates of ``vectors`` (n, d) and a caption saying how they were made.

    Parameters
    ----------
    vectors : numpy.ndarray, shape (n, d)
    method : {"auto", "pca", "umap"}
        ``auto``: UMAP when the ``umap`` package imports, else PCA.
    seed : int

    Raises
    ------
    ImportError
        ``method="umap"`` without the ``umap`` package.
    """
    x = np.asarray(vectors, dtype=np.float64)
    if method in ("auto", "umap"):
        try:
            import umap  # noqa: F401 - optional
        except ImportError:
            if method == "umap":
                raise ImportError("--map umap needs the umap-learn package: pip install umap-learn") from None
        else:
            reducer = umap.UMAP(n_components=2, random_state=seed)
            return np.asarray(reducer.fit_transform(x)), "UMAP of the item vectors"
    xy, share = _pca(x)
    return xy, f"PCA of the item vectors (first two components: {share[0]:.0%} and {share[1]:.0%} of the variance)"


def popularity(user_items: Any, n_items: int) -> np.ndarray:
    """Training users per item (zeros when the model kept no ``user_items``)."""
    if user_items is None:
        return np.zeros(n_items)
    counts = np.asarray((user_items != 0).sum(axis=0)).ravel()
    return counts.astype(np.float64)


def _group(names: np.ndarray) -> tuple[str, np.ndarray] | None:
    """The first ``prefix=value`` group with 2..MAX_CATEGORIES columns (genre before year)."""
    prefixes = np.array([n.split("=", 1)[0] if "=" in n else "" for n in names])
    order = ["genre"] + [p for p in dict.fromkeys(prefixes) if p not in ("genre", "")]
    for prefix in order:
        cols = np.flatnonzero(prefixes == prefix)
        if 2 <= cols.size <= MAX_CATEGORIES:
            return prefix, cols
    return None


def feature_labels(features: Any) -> tuple[str, np.ndarray, list[str]] | None:
    """One category per item from a small feature group (e.g. genre), or None when there is none.

    Each item gets, among its features of the group that are among the :data:`SHOWN_CATEGORIES`
    most common, the least common one (so niche genres show rather than drowning in Drama);
    items with none of those are "other".

    Returns
    -------
    (group name, codes per item, category names) -- code ``len(names) - 1`` is "other".
    """
    if features is None or features.n_features == 0:
        return None
    found = _group(np.asarray(features.names).astype(str))
    if found is None:
        return None
    prefix, cols = found
    m = features.matrix[:, cols].tocsc()
    counts = np.diff(m.indptr)
    top = cols[np.argsort(-counts, kind="stable")[:SHOWN_CATEGORIES]]
    top_counts = np.asarray((features.matrix[:, top] != 0).sum(axis=0)).ravel()
    rank = np.argsort(np.argsort(top_counts, kind="stable"), kind="stable")  # 0 = rarest of the shown
    sub = (features.matrix[:, top] != 0).toarray()
    big = np.where(sub, rank[None, :], len(top))
    pick = big.min(axis=1)
    order = np.argsort(rank)
    names = [str(features.names[top[j]]).split("=", 1)[1] for j in order] + ["other"]
    codes = np.where(pick < len(top), pick, len(top))
    return prefix, codes, names


def run_features(data_args: dict[str, Any], item_ids: np.ndarray | None, n_items: int) -> Any:
    """The item features of a run's data (rebuilt from ``data.json`` args, never downloaded),
    aligned with the model's items; None when there are none or the data cannot be read."""
    from ..cli.sources import load_data, rebuild

    ns: argparse.Namespace = rebuild(dict(data_args))
    ns.no_download = True
    if not (ns.dataset or ns.interactions):
        return None
    try:
        data, _ = load_data(ns)
    except (OSError, ValueError, KeyError, ImportError):
        return None
    if data is None or data.item_features is None:
        return None
    if item_ids is None:
        return data.item_features if data.n_items == n_items else None
    where = {raw: i for i, raw in enumerate(data.item_ids.tolist())}
    rows = np.array([where.get(raw, -1) for raw in np.asarray(item_ids).tolist()])
    if (rows < 0).any():
        return None
    return data.item_features.take(rows)
