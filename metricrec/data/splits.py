"""Train / valid / test splits, all deterministic given a seed.

Every split returns a :class:`Split` whose three parts share one id universe (same users, same items,
same features), so a model trained on ``split.train`` can be scored on ``split.valid``/``split.test``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import scipy.sparse as sp

from .interactions import Interactions, csr_rows

__all__ = ["Split", "check_ratios", "ratio_split", "leave_k_out", "temporal_split"]


@dataclass(frozen=True)
class Split:
    """Three disjoint parts of one data set over the same users and items.

    Attributes
    ----------
    train, valid, test : Interactions
        Same ``user_ids``, ``item_ids`` and features; disjoint (user, item) pairs.
    meta : mapping
        How the split was made (``method``, ``seed``, ratios, counts of dropped pairs, ...).
    """

    train: Interactions
    valid: Interactions
    test: Interactions
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("valid", "test"):
            part = getattr(self, name)
            if part.shape != self.train.shape:
                raise ValueError(f"split part '{name}' has shape {part.shape}, train has {self.train.shape}")

    def sizes(self) -> dict[str, int]:
        """Number of (user, item) pairs in each part."""
        return {"train": self.train.nnz, "valid": self.valid.nnz, "test": self.test.nnz}


# ---------------------------------------------------------------------- split methods
#
# How "shuffle" is defined (so that a split is reproducible from its seed alone):
#   rng = numpy.random.default_rng(seed); key = rng.random(nnz), one float64 key per stored
#   interaction in CSR order (users ascending, item index ascending within a user). A user's items
#   "in shuffled order" are its items sorted by key (ties -- probability ~0 -- keep CSR order).
# The keys are drawn for every interaction whatever the other parameters are, so changing
# ``min_positives`` never changes how the remaining users are split.
# Position ``p`` (0-based) of an interaction in its user's shuffled order then decides its part.

_TRAIN, _VALID, _TEST, _DROPPED = 0, 1, 2, -1


def check_ratios(ratios: Any) -> tuple[float, float, float]:
    """``ratios`` as three floats (train, valid, test): finite, summing to 1, train and test positive,
    valid positive or 0 (no validation part).

    Raises
    ------
    ValueError
        Naming ``ratios`` and the rule it breaks.
    """
    try:
        r = tuple(float(x) for x in ratios)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"ratios must be three numbers (train, valid, test), got {ratios!r}") from exc
    if len(r) != 3:
        raise ValueError(f"ratios must be three numbers (train, valid, test), got {len(r)}: {ratios!r}")
    if not all(np.isfinite(x) for x in r) or not (r[0] > 0 and r[1] >= 0 and r[2] > 0):
        raise ValueError(f"ratios must be a positive train and test share and a valid share >= 0 (0: no "
                         f"validation part), got {ratios!r}")
    if abs(sum(r) - 1.0) > 1e-6:
        raise ValueError(f"ratios must sum to 1, got {ratios!r} (sum {sum(r):.6g})")
    return r  # type: ignore[return-value]


def _rows(data: Interactions) -> tuple[np.ndarray, np.ndarray]:
    """(row index of each stored interaction, number of interactions per user)."""
    return csr_rows(data.matrix), np.diff(data.matrix.indptr).astype(np.int64)


def _positions(rows: np.ndarray, indptr: np.ndarray, *sort_keys: np.ndarray) -> np.ndarray:
    """0-based position of each interaction within its user when the user's items are sorted by
    ``sort_keys`` (last key is the primary one, as in :func:`numpy.lexsort`)."""
    order = np.lexsort((*sort_keys, rows))
    pos = np.empty(len(rows), dtype=np.int64)
    pos[order] = np.arange(len(rows), dtype=np.int64) - np.asarray(indptr, dtype=np.int64)[rows[order]]
    return pos


def _build(data: Interactions, code: np.ndarray, meta: dict[str, Any]) -> Split:
    """Split ``data`` by a part code per stored interaction (CSR order is kept in every part)."""
    m = data.matrix
    n_users = data.n_users
    rows = csr_rows(m)
    parts = []
    for value, name in ((_TRAIN, "train"), (_VALID, "valid"), (_TEST, "test")):
        mask = code == value
        indptr = np.zeros(n_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows[mask], minlength=n_users), out=indptr[1:])
        part = sp.csr_matrix((m.data[mask], m.indices[mask], indptr), shape=m.shape)
        ts = None if data.timestamps is None else data.timestamps[mask]
        parts.append(data.with_matrix(part, ts, split_part=name, split_method=meta["method"]))
    meta = dict(meta)
    meta["sizes"] = {name: p.nnz for name, p in zip(("train", "valid", "test"), parts)}
    return Split(parts[0], parts[1], parts[2], meta)


def ratio_split(
    data: Interactions,
    ratios: tuple[float, float, float] = (0.6, 0.2, 0.2),
    *,
    seed: int = 0,
    min_positives: int = 5,
    drop_small_users: bool = False,
) -> Split:
    """The CML paper's per-user random split (docs/protocol.md).

    Each user's items are shuffled with a seeded generator (see the module comment for the exact
    definition); of a user's ``n`` items, train gets the first ``int(ratios[0] * n)``, valid the
    next ``int(ratios[1] * n)`` and test the rest. E.g. n=10 -> 6/2/2, n=7 -> 4/1/2.

    Parameters
    ----------
    data : Interactions, shape (n_users, n_items)
    ratios : (float, float, float)
        Train, valid and test fractions, summing to 1: train and test positive, valid positive or 0
        (no validation part: a run without early stopping).
    seed : int
        Seed of :func:`numpy.random.default_rng`; same seed, same split.
    min_positives : int, default 5
        Users with fewer interactions stay wholly in train (never evaluated) ...
    drop_small_users : bool, default False
        ... or, if True, lose all their interactions (counted in ``meta``).

    Returns
    -------
    Split
        Parts share ids and features; timestamps (if any) follow their pairs. ``meta`` holds
        ``method="ratio"``, ``seed``, ``ratios``, ``min_positives``, ``drop_small_users``,
        ``n_small_users``, ``n_dropped_pairs`` and ``sizes``.
    """
    r = check_ratios(ratios)
    if int(min_positives) != min_positives or min_positives < 0:
        raise ValueError(f"min_positives must be a non-negative integer, got {min_positives!r}")
    rows, counts = _rows(data)
    key = np.random.default_rng(seed).random(len(rows))
    pos = _positions(rows, data.matrix.indptr, key)
    # float64 products, then truncation: identical to Python's int(0.6 * n)
    n_train = np.floor(r[0] * counts).astype(np.int64)
    n_valid = np.floor(r[1] * counts).astype(np.int64)
    lim1, lim2 = n_train[rows], (n_train + n_valid)[rows]
    code = np.where(pos < lim1, _TRAIN, np.where(pos < lim2, _VALID, _TEST)).astype(np.int8)
    small_user = counts < min_positives
    small = small_user[rows]
    code[small] = _DROPPED if drop_small_users else _TRAIN
    meta = {
        "method": "ratio",
        "seed": seed,
        "ratios": list(r),
        "min_positives": int(min_positives),
        "drop_small_users": bool(drop_small_users),
        "n_small_users": int(np.count_nonzero(small_user & (counts > 0))),
        "n_dropped_pairs": int(np.count_nonzero(small)) if drop_small_users else 0,
    }
    return _build(data, code, meta)


def leave_k_out(
    data: Interactions,
    k: int = 1,
    *,
    mode: str = "random",
    seed: int = 0,
    valid_k: int | None = None,
) -> Split:
    """Per user, hold out ``k`` items for test and ``valid_k`` items for valid.

    Parameters
    ----------
    data : Interactions, shape (n_users, n_items)
    k : int >= 1
        Test items per user.
    mode : {"random", "latest"}
        ``"random"``: the last ``k`` items of the user's shuffled order go to test, the ``valid_k``
        before them to valid. ``"latest"``: the same on the user's items sorted by timestamp
        (ascending; equal timestamps ordered by the seeded key), so test holds the ``k`` latest
        items. ``"latest"`` needs timestamps.
    seed : int
        Seed of the shuffle / tie-break keys.
    valid_k : int >= 0, optional
        Valid items per user (default ``k``; 0 gives an empty valid part).

    Returns
    -------
    Split
        Users with fewer than ``k + valid_k + 1`` items stay wholly in train (at least one train
        item is kept per evaluated user); ``meta["n_small_users"]`` counts them.
    """
    vk = k if valid_k is None else valid_k
    if int(k) != k or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if int(vk) != vk or vk < 0:
        raise ValueError(f"valid_k must be an integer >= 0, got {valid_k!r}")
    k, vk = int(k), int(vk)
    if mode not in ("random", "latest"):
        raise ValueError(f"mode must be 'random' or 'latest', got {mode!r}")
    rows, counts = _rows(data)
    key = np.random.default_rng(seed).random(len(rows))
    if mode == "latest":
        if data.timestamps is None:
            raise ValueError("leave_k_out(mode='latest') needs timestamps, but the data has none")
        pos = _positions(rows, data.matrix.indptr, key, data.timestamps)
    else:
        pos = _positions(rows, data.matrix.indptr, key)
    n = counts[rows]
    code = np.where(pos >= n - k, _TEST, np.where(pos >= n - k - vk, _VALID, _TRAIN)).astype(np.int8)
    small_user = counts < k + vk + 1
    code[small_user[rows]] = _TRAIN
    meta = {
        "method": f"leave_k_out_{mode}",
        "seed": seed,
        "k": k,
        "valid_k": vk,
        "mode": mode,
        "n_small_users": int(np.count_nonzero(small_user & (counts > 0))),
    }
    return _build(data, code, meta)


def temporal_split(
    data: Interactions,
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
    *,
    cuts: tuple[int, int] | None = None,
) -> Split:
    """Global time split: train before ``t1``, valid in ``[t1, t2)``, test from ``t2`` on.

    Parameters
    ----------
    data : Interactions with timestamps
    ratios : (float, float, float)
        Used when ``cuts`` is None: with ``s`` the sorted timestamps of all ``N`` interactions,
        ``t1 = s[int(ratios[0] * N)]`` and ``t2 = s[int((ratios[0] + ratios[1]) * N)]`` (indices
        clipped to ``N - 1``). Ties at a cut go to the later part, so part sizes can differ from
        the ratios when many interactions share a timestamp.
    cuts : (int, int), optional
        Explicit cut timestamps ``(t1, t2)`` with ``t1 <= t2``.

    Returns
    -------
    Split
        ``meta`` holds ``method="temporal"``, ``seed=None``, ``ratios`` (or None) and ``cuts``.
    """
    if data.timestamps is None:
        raise ValueError("temporal_split needs timestamps, but the data has none")
    ts = data.timestamps
    if cuts is not None:
        try:
            t1, t2 = (int(c) for c in cuts)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"cuts must be two timestamps (t1, t2), got {cuts!r}") from exc
        if t1 > t2:
            raise ValueError(f"cuts must satisfy t1 <= t2, got {cuts!r}")
        r = None
    else:
        r = check_ratios(ratios)
        n = len(ts)
        if n == 0:
            t1 = t2 = 0
        else:
            s = np.sort(ts)
            t1 = int(s[min(int(r[0] * n), n - 1)])
            t2 = int(s[min(int((r[0] + r[1]) * n), n - 1)])
    code = np.where(ts < t1, _TRAIN, np.where(ts < t2, _VALID, _TEST)).astype(np.int8)
    meta = {"method": "temporal", "seed": None, "ratios": None if r is None else list(r), "cuts": [t1, t2]}
    return _build(data, code, meta)
