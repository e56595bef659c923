"""Amazon Beauty and Toys as preprocessed by S3-Rec (Zhou et al., CIKM 2020; RUCAIBox/CIKM2020-S3Rec).

Each file holds one line per user, ``user i_1 ... i_n``: the user's id (its line number), then its
items in time order (5-core: at least 5 per user). The data is implicit: every item of a user's
sequence is a positive. The files carry no times, so an item's **position in its sequence** (0-based)
is its timestamp: :func:`~metricrec.data.splits.leave_k_out` with ``mode="latest"`` (``--split
leave-latest``) holds out each user's last items, the usual protocol on these sets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..interactions import Interactions
from .lists import no_ratings, read_sequences
from .verify import FileSpec

__all__ = ["S3REC_SETS", "S3RecSet", "load_s3rec"]


@dataclass(frozen=True)
class S3RecSet:
    """One S3-Rec sequence file: its data set name, file and official size and sha256."""

    name: str
    check: FileSpec

    @property
    def files(self) -> tuple[str, ...]:
        return (self.check.name,)

    def load(self, folder: Path, min_rating: float | None = None) -> Interactions:
        """:func:`load_s3rec` of this set's file in ``folder``."""
        return load_s3rec(Path(folder) / self.check.name, self.name, min_rating)


# Sizes and sha256 of data/<file> of RUCAIBox/CIKM2020-S3Rec (shared/data/README.md).
S3REC_SETS = {
    "amazon-beauty": S3RecSet("amazon-beauty", FileSpec(
        "Beauty.txt", 1_090_094, "226cce9c3105299ca0db9615d7d3fb32b3175e90da43100ae352599f0f0107b8")),
    "amazon-toys": S3RecSet("amazon-toys", FileSpec(
        "Toys_and_Games.txt", 922_166, "176c680c688d497598c4a89a03b402c0fe78d795e5db335c2e78dd5f2d778a3f")),
}


def load_s3rec(path: Path, dataset: str, min_rating: float | None = None) -> Interactions:
    """Load an S3-Rec sequence file.

    Parameters
    ----------
    path : path-like
        ``Beauty.txt``, ``Toys_and_Games.txt``, or a file of the same format.
    dataset : str
        Name recorded in ``meta["dataset"]``.
    min_rating : None
        The files have no ratings; a threshold above 1 is an error.

    Returns
    -------
    Interactions
        Users (the line's ids, sorted) x items (the ids seen, sorted); ``timestamps`` are the items'
        0-based positions in their user's sequence. A repeated (user, item) keeps its latest position
        (with a :class:`~metricrec.data.interactions.DataWarning`; Beauty and Toys have none).
    """
    no_ratings(dataset, min_rating)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"S3-Rec file not found: {path}")
    users, rows, items, positions = read_sequences(path)
    inter = Interactions.from_arrays(users[rows], items, None, positions, user_ids=np.sort(users), source=str(path))
    meta = dict(inter.meta)
    meta.update(dataset=dataset, n_positives=inter.nnz, data_dir=str(path.parent), timestamps="position")
    return Interactions(inter.matrix, inter.user_ids, inter.item_ids, inter.timestamps, None, None, meta)
