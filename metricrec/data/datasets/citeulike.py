"""citeulike-a (Wang & Blei 2011): users' libraries of articles, plus article tags.

``users.dat``: line u is ``n i_1 ... i_n``, the 0-based article ids in user u's library; every pair is
a positive. ``item-tag.dat``: line j is ``n t_1 ... t_n``, the tag ids of article j; its line count
gives the number of articles (16,980), so articles in nobody's library keep their column.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from ..delimited import read_columns
from ..id_text import arrow_to_numpy
from ..interactions import Features, Interactions
from .verify import FileSpec

__all__ = ["CITEULIKE_CHECKS", "CITEULIKE_FILES", "read_count_lists", "read_item_tags", "load_citeulike_a"]

CITEULIKE_FILES = ("users.dat", "item-tag.dat")
# Checked at every load: sizes and sha256 of the files of js05212/citeulike-a (shared/data/README.md).
CITEULIKE_CHECKS = (
    FileSpec("users.dat", 1_094_785, "53211d82c14ff261e595634d285ed9fbf8049cf81dcb751d924d695b9612a02c"),
    FileSpec("item-tag.dat", 1_423_307, "0f7b432796a5038ed2631c02b99d70e636123673afc11bf9e051de5b49467890"),
)


def read_count_lists(path: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """Parse a file of ``n v_1 ... v_n`` lines (whitespace separated integers).

    Returns
    -------
    rows : numpy.ndarray of int64, shape (total,)
        0-based line index of each value.
    values : numpy.ndarray of int64, shape (total,)
        The values, in file order.
    n_lines : int
        Number of lines (a line ``0`` has no values but still counts).

    Raises
    ------
    ValueError
        A non-integer token, or a line whose count ``n`` differs from its number of values
        (naming the file and the 1-based line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    t = read_columns(path, {"line": 0}, sep="\x1f", header=False, quoting=False, what="lines")
    text = pc.utf8_trim_whitespace(t.columns["line"])
    blank = arrow_to_numpy(pc.equal(pc.utf8_length(text), 0))
    if blank.any():
        raise ValueError(f"{path}, line {t.line(int(np.argmax(blank)))}: blank line (expected 'n v_1 ... v_n')")
    tokens = pc.split_pattern_regex(text, r"\s+")
    n_tokens = arrow_to_numpy(pc.list_value_length(tokens)).astype(np.int64)
    flat = pc.list_flatten(tokens)
    try:
        values = arrow_to_numpy(pc.cast(flat, pa.int64()))
    except pa.ArrowInvalid:
        ok = arrow_to_numpy(pc.match_substring_regex(flat, r"^[+-]?[0-9]+$"))
        k = int(np.argmin(ok))
        line = int(np.searchsorted(np.cumsum(n_tokens), k, side="right"))
        raise ValueError(f"{path}, line {t.line(line)}: {flat[k].as_py()!r} is not an integer") from None
    starts = np.concatenate([[0], np.cumsum(n_tokens)[:-1]]).astype(np.int64)
    declared = values[starts]
    bad = np.flatnonzero(declared != n_tokens - 1)
    if bad.size:
        k = int(bad[0])
        raise ValueError(
            f"{path}, line {t.line(k)}: the count says {int(declared[k])} values but the line has {int(n_tokens[k]) - 1}"
        )
    is_value = np.ones(values.shape[0], dtype=bool)
    is_value[starts] = False
    rows = np.repeat(np.arange(t.n_rows, dtype=np.int64), n_tokens - 1)
    return rows, values[is_value], t.n_rows


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
    if min_rating is not None and float(min_rating) > 1:
        raise ValueError(f"citeulike-a has no ratings (every pair is a positive); min_rating={min_rating} is invalid")
    folder = Path(folder)
    users_path, tags_path = folder / "users.dat", folder / "item-tag.dat"
    tags = read_item_tags(tags_path)
    n_items = tags.matrix.shape[0]
    users, items, n_users = read_count_lists(users_path)
    out = np.flatnonzero((items < 0) | (items >= n_items))
    if out.size:
        k = int(out[0])
        raise ValueError(
            f"{users_path}, line {int(users[k]) + 1}: item id {int(items[k])} outside 0..{n_items - 1} "
            f"(the number of lines of {tags_path})"
        )
    inter = Interactions.from_arrays(
        users, items, user_ids=np.arange(n_users, dtype=np.int64), item_ids=np.arange(n_items, dtype=np.int64),
        item_features=tags, source=str(users_path),
    )
    meta = dict(inter.meta)
    meta.update(dataset="citeulike-a", n_positives=inter.nnz, data_dir=str(folder))
    return Interactions(inter.matrix, inter.user_ids, inter.item_ids, None, inter.item_features, None, meta)
