"""Data fingerprints: a few JSON-able facts that tell whether two interaction matrices are the same data.

A model stores the fingerprint of the data it was trained on (``data_fingerprint`` in its saved
metadata); ``metricrec evaluate`` compares it with the data it is given and refuses a mismatch, so
a different file of the same shape is never scored silently.

What is hashed (sha256, so digests are stable across processes, platforms and numpy versions):

- the (row, column) pairs of the canonical CSR pattern: duplicates summed, explicit zeros dropped,
  column indices sorted; the shape, then ``indptr`` and ``indices`` as little-endian int64;
- the user ids and the item ids in a canonical text form: an integer id as its decimal text, a
  string id as itself (the id rule of :mod:`metricrec.data.ids`: ``1`` and ``"1"`` are one id,
  ``"007"`` and ``"7"`` two), hashed as a JSON list, so int32, int64 and str columns holding the
  same ids give the same digest.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import numpy as np
import scipy.sparse as sp

from .errors import DataError

__all__ = ["fingerprint", "compare_fingerprints", "check_fingerprint", "file_sha256", "FINGERPRINT_VERSION"]

FINGERPRINT_VERSION = 1
_MODEL, _THIS = "in the model's training data", "in this data"


def _pairs_digest(matrix: Any) -> tuple[int, str]:
    """(number of pairs, sha256 of the canonical pattern)."""
    m = sp.csr_matrix(matrix, copy=True)
    m.sum_duplicates()
    m.eliminate_zeros()
    m.sort_indices()
    h = hashlib.sha256()
    h.update(np.asarray(m.shape, dtype="<i8").tobytes())
    h.update(np.asarray(m.indptr, dtype="<i8").tobytes())
    h.update(np.asarray(m.indices, dtype="<i8").tobytes())
    return int(m.nnz), h.hexdigest()


def _id_text(ids: np.ndarray) -> list[str]:
    """Each id as canonical text (integers as decimal text, strings unchanged)."""
    if ids.dtype.kind in "iuU":
        return ids.astype(str).tolist()
    if ids.dtype.kind == "b":
        raise TypeError("ids must be str or int, got bool")
    out = []
    for v in ids.tolist():
        if isinstance(v, (bool, np.bool_)):
            raise TypeError("ids must be str or int, got bool")
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        out.append(v.decode("utf-8") if isinstance(v, bytes) else str(v))
    return out


def _ids_digest(ids: Any, n: int, what: str) -> str | None:
    if ids is None:
        return None
    ids = np.asarray(ids)
    if ids.ndim != 1 or len(ids) != n:
        raise ValueError(f"{what} ids: expected {n} ids (one per {'row' if what == 'user' else 'column'}), "
                         f"got shape {ids.shape}")
    text = json.dumps(_id_text(ids), ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def fingerprint(matrix: sp.spmatrix | sp.sparray, user_ids: np.ndarray | None = None,
                item_ids: np.ndarray | None = None) -> dict[str, Any]:
    """The fingerprint of an interaction matrix and its raw ids.

    Parameters
    ----------
    matrix : scipy.sparse matrix, shape (n_users, n_items)
        Only the pattern counts (which (user, item) pairs are stored and non-zero), not the values.
    user_ids, item_ids : numpy.ndarray or None
        Raw ids of the rows / columns; None when the data has none (then not compared).

    Returns
    -------
    dict
        ``version``, ``n_users``, ``n_items``, ``nnz``, ``pairs_sha256``, ``user_ids_sha256``,
        ``item_ids_sha256`` (None without ids): plain JSON types.
    """
    if not sp.issparse(matrix):
        raise TypeError(f"matrix must be a scipy sparse matrix, got {type(matrix).__name__}")
    n_users, n_items = (int(x) for x in matrix.shape)
    nnz, pairs = _pairs_digest(matrix)
    return {"version": FINGERPRINT_VERSION, "n_users": n_users, "n_items": n_items, "nnz": nnz,
            "pairs_sha256": pairs, "user_ids_sha256": _ids_digest(user_ids, n_users, "user"),
            "item_ids_sha256": _ids_digest(item_ids, n_items, "item")}


def compare_fingerprints(expected: dict[str, Any], actual: dict[str, Any], *,
                         sides: tuple[str, str] = (_MODEL, _THIS)) -> list[str]:
    """Human-readable differences between the model's training-data fingerprint and another one.

    Parameters
    ----------
    expected : dict
        The fingerprint of the data the model was trained on.
    actual : dict
        The fingerprint of the data at hand.
    sides : (str, str)
        How the messages name the two sides (default: the model's training data, this data).

    Returns
    -------
    list of str
        Empty when they match. Facts missing from either side (an older fingerprint) are skipped;
        digests are compared only when the counts they cover agree (a count difference says it all).
    """
    diffs = []
    same = {}
    for key, label in (("n_users", "users"), ("n_items", "items"), ("nnz", "training pairs")):
        a, b = expected.get(key), actual.get(key)
        same[key] = a is None or b is None or a == b
        if not same[key]:
            diffs.append(f"{label}: {a} {sides[0]}, {b} {sides[1]}")
    if expected.get("version") != actual.get("version"):
        return diffs  # digests of different definitions cannot be compared
    for key, count, label in (("user_ids_sha256", "n_users", "user ids differ"),
                              ("item_ids_sha256", "n_items", "item ids differ")):
        a, b = expected.get(key), actual.get(key)
        if a is not None and b is not None and a != b and same[count]:
            diffs.append(label)
    a, b = expected.get("pairs_sha256"), actual.get("pairs_sha256")
    if a is not None and b is not None and a != b and all(same.values()):
        diffs.append("training pairs differ (same counts, different pairs)")
    return diffs


def check_fingerprint(expected: dict[str, Any] | None, actual: dict[str, Any], what: str) -> None:
    """Raise :class:`~metricrec.errors.DataError` (a ``ValueError``) when ``actual`` is not the model's data.

    Parameters
    ----------
    expected : dict or None
        The model's training-data fingerprint; None (unknown) checks nothing.
    actual : dict
        The fingerprint of the data at hand.
    what : str
        Names the data in the message, e.g. ``"file /data/other.csv"``.
    """
    if not expected:
        return
    diffs = compare_fingerprints(expected, actual)
    if diffs:
        raise DataError(f"{what} is not the data the model was trained on: {'; '.join(diffs)}. Give the same data "
                        "and split flags as at training time, or train a model on this data")


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks (memory bounded by the chunk)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
