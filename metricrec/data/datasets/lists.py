"""Files of integer lists, one list per line: the formats of citeulike-a, Steam-200k and S3-Rec.

- CollMetric's ``n v_1 ... v_n`` (citeulike-a's ``users.dat`` and ``item-tag.dat``, the LibCML
  Steam-200k ``users.dat``): line k is row k, its first token the number of values that follow.
- S3-Rec's sequences ``user i_1 ... i_n`` (Amazon Beauty, Toys): the first token is the user's id,
  the items follow in time order.

Tokens are whitespace separated integers; parsing is vectorised (pyarrow compute). Bad input is a
one-line :class:`~metricrec.errors.DataError` naming the file and the 1-based line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ...errors import DataError
from ..delimited import TextTable, read_columns
from ..id_text import arrow_to_numpy
from ..interactions import Features, Interactions

__all__ = ["no_ratings", "read_count_lists", "read_sequences", "user_lists_interactions"]


def _int_tokens(path: Path) -> tuple[TextTable, np.ndarray, np.ndarray]:
    """(the file's lines, every token as int64 in file order, number of tokens per line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    t = read_columns(path, {"line": 0}, sep="\x1f", header=False, quoting=False, what="lines")
    text = pc.utf8_trim_whitespace(t.columns["line"])
    blank = arrow_to_numpy(pc.equal(pc.utf8_length(text), 0))
    if blank.any():
        raise DataError(f"{path}, line {t.line(int(np.argmax(blank)))}: blank line (expected a list of integers)")
    tokens = pc.split_pattern_regex(text, r"\s+")
    n_tokens = arrow_to_numpy(pc.list_value_length(tokens)).astype(np.int64)
    flat = pc.list_flatten(tokens)
    try:
        values = arrow_to_numpy(pc.cast(flat, pa.int64()))
    except pa.ArrowInvalid:
        ok = arrow_to_numpy(pc.match_substring_regex(flat, r"^[+-]?[0-9]+$"))
        k = int(np.argmin(ok))
        line = int(np.searchsorted(np.cumsum(n_tokens), k, side="right"))
        raise DataError(f"{path}, line {t.line(line)}: {flat[k].as_py()!r} is not an integer") from None
    return t, values, n_tokens


def _split_heads(values: np.ndarray, n_tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first token of each line, line of each other token, the other tokens in file order)."""
    starts = np.concatenate([[0], np.cumsum(n_tokens)[:-1]]).astype(np.int64)
    is_value = np.ones(values.shape[0], dtype=bool)
    is_value[starts] = False
    rows = np.repeat(np.arange(n_tokens.shape[0], dtype=np.int64), n_tokens - 1)
    return values[starts], rows, values[is_value]


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
    DataError
        A blank line, a non-integer token, or a line whose count ``n`` differs from its number of
        values (naming the file and the 1-based line).
    """
    t, values, n_tokens = _int_tokens(path)
    declared, rows, rest = _split_heads(values, n_tokens)
    bad = np.flatnonzero(declared != n_tokens - 1)
    if bad.size:
        k = int(bad[0])
        raise DataError(
            f"{path}, line {t.line(k)}: the count says {int(declared[k])} values but the line has {int(n_tokens[k]) - 1}"
        )
    return rows, rest, t.n_rows


def read_sequences(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Parse a file of ``user i_1 ... i_n`` lines (S3-Rec's sequences, items in time order).

    Returns
    -------
    users : numpy.ndarray of int64, shape (n_lines,)
        The user id of each line (distinct).
    rows : numpy.ndarray of int64, shape (total,)
        0-based line index of each item.
    items : numpy.ndarray of int64, shape (total,)
        The items, in file order.
    positions : numpy.ndarray of int64, shape (total,)
        0-based position of each item in its line's sequence (its order in time).

    Raises
    ------
    DataError
        A blank line, a non-integer token, or a user id given on two lines (naming both).
    """
    t, values, n_tokens = _int_tokens(path)
    users, rows, items = _split_heads(values, n_tokens)
    uniq, first, counts = np.unique(users, return_index=True, return_counts=True)
    if (counts > 1).any():
        user = uniq[counts > 1][0]
        k1, k2 = np.flatnonzero(users == user)[:2]
        raise DataError(f"{path}, line {t.line(int(k2))}: user {int(user)} already has line {t.line(int(k1))} "
                        "(one line per user expected)")
    starts = np.concatenate([[0], np.cumsum(n_tokens - 1)[:-1]]).astype(np.int64)
    positions = np.arange(items.shape[0], dtype=np.int64) - starts[rows]
    return users, rows, items, positions


def user_lists_interactions(
    path: Path, dataset: str, n_items: int | None = None, *, items_from: str | None = None,
    item_features: Features | None = None,
) -> Interactions:
    """Interactions of a CollMetric ``users.dat``: line u is user u, its values the 0-based item ids.

    Parameters
    ----------
    path : path-like
    dataset : str
        Name recorded in ``meta["dataset"]``.
    n_items : int, optional
        Number of items (ids 0..n_items-1); default the largest id + 1.
    items_from : str, optional
        Where ``n_items`` comes from, quoted when an id is outside it.
    item_features : Features, optional
        Rows aligned with the items.

    Returns
    -------
    Interactions
        Users 0..n_lines-1 x items 0..n_items-1, every pair a positive (duplicates collapse, with a
        :class:`~metricrec.data.interactions.DataWarning`); ``meta`` has ``dataset``, ``n_positives``
        and ``data_dir``.
    """
    path = Path(path)
    users, items, n_users = read_count_lists(path)
    n_items = (int(items.max()) + 1 if items.size else 0) if n_items is None else int(n_items)
    out = np.flatnonzero((items < 0) | (items >= n_items))
    if out.size:
        k = int(out[0])
        why = f" (the number of lines of {items_from})" if items_from else ""
        raise DataError(f"{path}, line {int(users[k]) + 1}: item id {int(items[k])} outside 0..{n_items - 1}{why}")
    inter = Interactions.from_arrays(
        users, items, user_ids=np.arange(n_users, dtype=np.int64), item_ids=np.arange(n_items, dtype=np.int64),
        item_features=item_features, source=str(path),
    )
    meta = dict(inter.meta)
    meta.update(dataset=dataset, n_positives=inter.nnz, data_dir=str(path.parent))
    return Interactions(inter.matrix, inter.user_ids, inter.item_ids, None, inter.item_features, None, meta)


def no_ratings(dataset: str, min_rating: float | None) -> None:
    """Refuse a rating threshold for a data set without ratings (every pair is a positive)."""
    if min_rating is not None and float(min_rating) > 1:
        raise DataError(f"{dataset} has no ratings (every pair is a positive); min_rating={min_rating} is invalid")
