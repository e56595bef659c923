"""Build multi-hot :class:`~metricrec.interactions.Features` from per-row lists of feature names."""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import scipy.sparse as sp

from ..ids import IdIndex
from ..interactions import DataWarning, Features


def multi_hot(
    universe: np.ndarray, row_ids: np.ndarray, names: Sequence[Sequence[str]], source: str
) -> Features:
    """Multi-hot features for the ids of ``universe``, taken from rows ``row_ids`` with ``names``.

    Parameters
    ----------
    universe : numpy.ndarray, shape (n,)
        Ids the feature rows must follow (e.g. the item ids of the interaction matrix).
    row_ids : numpy.ndarray, shape (m,)
        Id of each row of the side file; rows whose id is not in ``universe`` are ignored.
    names : sequence of m sequences of str
        Feature names of each side-file row.
    source : str
        Quoted in the warning when ids of ``universe`` have no side-file row (they get an empty row).

    Returns
    -------
    Features
        Shape (n, n_features), columns are the sorted distinct names of the kept rows.
    """
    target = np.asarray(IdIndex(universe).lookup(row_ids, missing="mask"))
    hit = target >= 0
    lengths = np.fromiter(map(len, names), dtype=np.int64, count=len(names))
    rows = np.repeat(np.where(hit, target, -1), lengths)
    flat = np.array([n for row in names for n in row], dtype=str)
    keep = rows >= 0
    vocab, cols = np.unique(flat[keep], return_inverse=True)
    matrix = sp.csr_matrix(
        (np.ones(int(keep.sum()), dtype=np.float32), (rows[keep], cols.reshape(-1))),
        shape=(len(universe), len(vocab)),
    )
    covered = np.zeros(len(universe), dtype=bool)
    covered[target[hit]] = True
    if not covered.all():
        warnings.warn(
            f"{source}: {int((~covered).sum())} of {len(universe)} ids have no feature row (left empty)",
            DataWarning,
            stacklevel=3,
        )
    return Features(matrix, vocab)
