"""citeulike-a (Wang & Blei 2011): users' libraries of articles, plus article tags.

``users.dat``: line u is ``n i_1 ... i_n``, the 0-based article ids in user u's library; every pair is
a positive. ``item-tag.dat``: line j is ``n t_1 ... t_n``, the tag ids of article j; its line count
gives the number of articles (16,980), so articles in nobody's library keep their column.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ..interactions import Features, Interactions
from .lists import no_ratings, read_count_lists, user_lists_interactions
from .verify import FileSpec

__all__ = ["CITEULIKE_CHECKS", "CITEULIKE_FILES", "read_count_lists", "read_item_tags", "load_citeulike_a"]

CITEULIKE_FILES = ("users.dat", "item-tag.dat")
# Checked at every load: sizes and sha256 of the files of js05212/citeulike-a (shared/data/README.md).
CITEULIKE_CHECKS = (
    FileSpec("users.dat", 1_094_785, "53211d82c14ff261e595634d285ed9fbf8049cf81dcb751d924d695b9612a02c"),
    FileSpec("item-tag.dat", 1_423_307, "0f7b432796a5038ed2631c02b99d70e636123673afc11bf9e051de5b49467890"),
)


def read_item_tags(path: Path, n_items: int | None = None, min_count: int = 1) -> Features:
    """Tag features of the articles from ``item-tag.dat``.

    Parameters
    ----------
    path : path-like
    n_items : int, optional
        Number of rows (default: the file's line count).
    min_count : int, default 1
        Keep only tags used by at least this many distinct articles (the CML paper keeps tags used by
        >= 5 articles).

    Returns
    -------
    Features
        Shape (n_items, n_kept_tags), value 1.0; column names ``tag=<id>`` in increasing tag id.
    """
    rows, tags, n_rows = read_count_lists(path)
    n_items = n_rows if n_items is None else int(n_items)
    if n_rows > n_items:
        raise ValueError(f"{path}: {n_rows} item lines but only {n_items} items")
    if tags.size and tags.min() < 0:
        raise ValueError(f"{path}: negative tag id {int(tags.min())}")
    uniq_tags, cols = np.unique(tags, return_inverse=True)
    m = sp.csr_matrix((np.ones(tags.size, dtype=np.float32), (rows, cols.reshape(-1))),
                      shape=(n_items, uniq_tags.size))
    m.sum_duplicates()
    m.data[:] = 1.0
    n_items_per_tag = np.diff(m.tocsc().indptr)
    keep = np.flatnonzero(n_items_per_tag >= int(min_count))
    names = np.char.add("tag=", uniq_tags[keep].astype(str))
    return Features(m[:, keep].tocsr(), names)


def load_citeulike_a(folder: Path, min_rating: float | None = None) -> Interactions:
    """Load citeulike-a from ``folder`` (holding users.dat and item-tag.dat).

    Returns
    -------
    Interactions
        5,551 users (ids 0..5550, one per line of users.dat) x 16,980 articles (ids 0..16979), 204,986
        positives; all tags as item features (see :func:`read_item_tags` for a ``min_count`` filter).
    """
    no_ratings("citeulike-a", min_rating)
    folder = Path(folder)
    users_path, tags_path = folder / "users.dat", folder / "item-tag.dat"
    tags = read_item_tags(tags_path)
    return user_lists_interactions(users_path, "citeulike-a", tags.matrix.shape[0], items_from=str(tags_path),
                                   item_features=tags)
