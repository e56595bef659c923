"""FilmTrust (Guo, Zhang & Yorke-Smith, IJCAI 2013): film ratings from 0.5 to 4.0 in steps of 0.5.

``ratings.txt`` is ``user,item,rating`` per line, comma separated, no header, integer ids (users
1..1508, items 1..2071), 35,497 ratings. The librec copy (``ratings_0..3.txt``) holds the same records
and is not needed.

Positives: **every rating**, by default (``min_rating`` 0.5, the lowest grade). FilmTrust is used as
implicit feedback in the top-N literature -- that someone rated a film says they watched it -- and its
scale is short (mean 3.0 of 4): MovieLens' ``>= 4`` would keep only the top grade (9,171
ratings, a quarter). ``min_rating=3`` (``--min-rating 3``) gives the "liked" reading instead. The id
universe is every user and item with a rating of any value, so a threshold never changes the shape.

The file rates three (user, item) pairs twice (user 308: items 207, 235 and 12, the last an exact
duplicate line): they collapse into one pair each (the higher rating), with a
:class:`~metricrec.data.interactions.DataWarning`, and ``meta["n_duplicates"]`` counts them.
"""

from __future__ import annotations

from pathlib import Path

from ..columns import read_delimited_columns
from ..ids import IdIndex
from ..interactions import Interactions
from .verify import FileSpec

__all__ = ["FILMTRUST_CHECKS", "FILMTRUST_FILES", "FILMTRUST_MIN_RATING", "load_filmtrust"]

FILMTRUST_FILES = ("ratings.txt",)
# Size and sha256 of data/filmtrust/ratings.txt of zhanghrswpu/MoGMagicBarrierEstimation (shared/data/README.md).
FILMTRUST_CHECKS = (
    FileSpec("ratings.txt", 376_444, "15bc987f1176d3d2145930dbd33ae312149d884f18f2f3aa66dda61cbfea2d56"),
)
#: The default threshold: the lowest grade, so every rating is a positive.
FILMTRUST_MIN_RATING = 0.5


def load_filmtrust(folder: Path, min_rating: float | None = None) -> Interactions:
    """Load FilmTrust from ``folder`` (holding ratings.txt).

    Parameters
    ----------
    folder : path-like
    min_rating : float, optional
        Positives are ratings >= this (default 0.5: every rating).

    Returns
    -------
    Interactions
        1,508 users x 2,071 items; ``meta["n_ratings"]`` = 35,497 (lines), ``meta["n_positives"]`` =
        kept pairs (35,494 at the default), ``meta["n_duplicates"]`` = pairs rated twice among the kept.
    """
    path = Path(folder) / "ratings.txt"
    if not path.is_file():
        raise FileNotFoundError(f"FilmTrust file not found: {path}")
    cols = read_delimited_columns(path, user_col=0, item_col=1, rating_col=2, sep=",", header=False, quoting=False)
    user_map, u = IdIndex.from_values(cols.users, name="user")
    item_map, i = IdIndex.from_values(cols.items, name="item")
    threshold = FILMTRUST_MIN_RATING if min_rating is None else float(min_rating)
    inter = Interactions.from_rows(user_map, u, item_map, i, cols.ratings, min_weight=threshold, source=str(path),
                                   stacklevel=3)
    meta = dict(inter.meta)
    meta.update(dataset="filmtrust", n_positives=inter.nnz, data_dir=str(path.parent))
    return Interactions(inter.matrix, inter.user_ids, inter.item_ids, None, None, None, meta)
