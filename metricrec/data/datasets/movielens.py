"""MovieLens 100K and 1M (GroupLens): ratings, item genres/years and user demographics.

Positives are ratings >= ``min_rating`` (4 by default, the CML paper's rule). The id universe is every
user and item with at least one rating of any value, so thresholding never changes the shape.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..interactions import Interactions
from ..readers import read_delimited_columns
from ._features import multi_hot
from .download import Archive

__all__ = [
    "ML100K", "ML1M", "load_ml100k", "load_ml1m",
    "read_ml100k_items", "read_ml100k_users", "read_ml1m_movies", "read_ml1m_users",
]

GROUPLENS = "https://files.grouplens.org/datasets/movielens"
# sha256 of the official archives, as pinned by tensorflow/datasets
# (tensorflow_datasets/url_checksums/movielens.txt: ml-100k.zip 4,924,029 bytes, ml-1m.zip 5,917,549 bytes).
ML100K = Archive("ml-100k.zip", GROUPLENS, "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229", "ml-100k")
ML1M = Archive("ml-1m.zip", GROUPLENS, "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20", "ml-1m")

ML100K_FILES = ("u.data", "u.item", "u.user", "u.genre")
ML1M_FILES = ("ratings.dat", "movies.dat", "users.dat")
DEFAULT_MIN_RATING = 4.0

# ML-1M age codes (README) and the same groups used to bucket ML-100K's exact ages.
_AGE_GROUPS = {1: "under-18", 18: "18-24", 25: "25-34", 35: "35-44", 45: "45-49", 50: "50-55", 56: "56+"}
_ML1M_OCCUPATIONS = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student", "customer service",
    "doctor/health care", "executive/managerial", "farmer", "homemaker", "K-12 student", "lawyer",
    "programmer", "retired", "sales/marketing", "scientist", "self-employed", "technician/engineer",
    "tradesman/craftsman", "unemployed", "writer",
)
_TITLE_YEAR = re.compile(r"\((\d{4})\)\s*$")


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"MovieLens file not found: {path}")
    text = path.read_bytes().decode("iso-8859-1").replace("\r\n", "\n")
    lines = text.split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def _split(line: str, sep: str, n: int, path: Path, lineno: int) -> list[str]:
    fields = line.split(sep)
    if len(fields) != n:
        raise ValueError(f"{path}, line {lineno}: expected {n} fields separated by {sep!r}, got {len(fields)}")
    return fields


def _int(value: str, what: str, path: Path, lineno: int) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{path}, line {lineno}: {what} {value!r} is not an integer") from None


def _decade(year: int | None) -> list[str]:
    return [] if year is None else [f"year={year // 10 * 10}s"]


def _age_group(age: int) -> str:
    edges = np.array([18, 25, 35, 45, 50, 56])
    return list(_AGE_GROUPS.values())[int(np.searchsorted(edges, age, side="right"))]


def read_ml100k_items(path: Path, genre_path: Path) -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
    """Parse ``u.item`` (``id|title|release date|video date|url|19 genre flags``, ISO-8859-1).

    Returns
    -------
    ids : numpy.ndarray of int64, shape (n_items,)
    titles : numpy.ndarray of str, shape (n_items,)
    features : list of lists of str
        Per item: ``genre=<name>`` for each flag set (names from ``u.genre``) and ``year=<decade>s``
        from the release date (absent when the date is empty).
    """
    genres = [_split(l, "|", 2, genre_path, k + 1)[0] for k, l in enumerate(_lines(genre_path))]
    ids, titles, feats = [], [], []
    for k, line in enumerate(_lines(path), start=1):
        f = _split(line, "|", 5 + len(genres), path, k)
        ids.append(_int(f[0], "item id", path, k))
        titles.append(f[1])
        flags = f[5:]
        if any(x not in ("0", "1") for x in flags):
            raise ValueError(f"{path}, line {k}: genre flags must be 0 or 1, got {flags}")
        date = f[2].strip()
        year = _int(date[-4:], "release year", path, k) if date else None
        feats.append([f"genre={g}" for g, x in zip(genres, flags) if x == "1"] + _decade(year))
    return np.array(ids, dtype=np.int64), np.array(titles, dtype=str), feats


def read_ml100k_users(path: Path) -> tuple[np.ndarray, list[list[str]]]:
    """Parse ``u.user`` (``id|age|gender|occupation|zip``) into ids and age-group/gender/occupation features."""
    ids, feats = [], []
    for k, line in enumerate(_lines(path), start=1):
        f = _split(line, "|", 5, path, k)
        ids.append(_int(f[0], "user id", path, k))
        age = _int(f[1], "age", path, k)
        feats.append([f"age={_age_group(age)}", f"gender={f[2]}", f"occupation={f[3]}"])
    return np.array(ids, dtype=np.int64), feats


def read_ml1m_movies(path: Path) -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
    """Parse ``movies.dat`` (``MovieID::Title::Genres``, ISO-8859-1, genres ``|``-separated).

    Returns ids (int64), titles (str) and per-movie features ``genre=<name>`` and ``year=<decade>s``
    (the year is the trailing ``(1995)`` of the title).
    """
    ids, titles, feats = [], [], []
    for k, line in enumerate(_lines(path), start=1):
        head, sep, genres = line.rpartition("::")
        mid, sep2, title = head.partition("::")
        if not sep or not sep2:
            raise ValueError(f"{path}, line {k}: expected 'MovieID::Title::Genres'")
        ids.append(_int(mid, "movie id", path, k))
        titles.append(title)
        m = _TITLE_YEAR.search(title)
        year = int(m.group(1)) if m else None
        feats.append([f"genre={g}" for g in genres.split("|") if g] + _decade(year))
    return np.array(ids, dtype=np.int64), np.array(titles, dtype=str), feats


def read_ml1m_users(path: Path) -> tuple[np.ndarray, list[list[str]]]:
    """Parse ``users.dat`` (``UserID::Gender::Age::Occupation::Zip``) into ids and demographic features."""
    ids, feats = [], []
    for k, line in enumerate(_lines(path), start=1):
        f = _split(line, "::", 5, path, k)
        ids.append(_int(f[0], "user id", path, k))
        age, occ = _int(f[2], "age code", path, k), _int(f[3], "occupation code", path, k)
        if age not in _AGE_GROUPS:
            raise ValueError(f"{path}, line {k}: unknown age code {age} (expected one of {list(_AGE_GROUPS)})")
        if not 0 <= occ < len(_ML1M_OCCUPATIONS):
            raise ValueError(f"{path}, line {k}: unknown occupation code {occ}")
        feats.append([f"age={_AGE_GROUPS[age]}", f"gender={f[1]}", f"occupation={_ML1M_OCCUPATIONS[occ]}"])
    return np.array(ids, dtype=np.int64), feats


def _build(
    name: str, ratings_path: Path, sep: str, min_rating: float | None,
    items: tuple[np.ndarray, np.ndarray, list[list[str]]], users: tuple[np.ndarray, list[list[str]]],
) -> Interactions:
    cols = read_delimited_columns(ratings_path, user_col=0, item_col=1, rating_col=2, timestamp_col=3,
                                  sep=sep, header=False, encoding="iso-8859-1")
    for what, raw in (("user", cols.users), ("item", cols.items)):
        if raw.dtype.kind != "i":
            raise ValueError(f"{ratings_path}: {what} ids must be integers")
    user_ids, item_ids = np.unique(cols.users), np.unique(cols.items)
    threshold = DEFAULT_MIN_RATING if min_rating is None else float(min_rating)
    item_ids_f, titles, item_feats = items
    user_ids_f, user_feats = users
    inter = Interactions.from_arrays(
        cols.users, cols.items, cols.ratings, cols.timestamps, min_weight=threshold,
        user_ids=user_ids, item_ids=item_ids,
        item_features=multi_hot(item_ids, item_ids_f, item_feats, f"{name} items"),
        user_features=multi_hot(user_ids, user_ids_f, user_feats, f"{name} users"),
        source=str(ratings_path),
    )
    meta = dict(inter.meta)
    meta.update(dataset=name, n_positives=inter.nnz, data_dir=str(ratings_path.parent))
    return Interactions(inter.matrix, inter.user_ids, inter.item_ids, inter.timestamps,
                        inter.item_features, inter.user_features, meta)


def load_ml100k(folder: Path, min_rating: float | None = None) -> Interactions:
    """Load MovieLens 100K from ``folder`` (holding u.data, u.item, u.user, u.genre).

    Returns
    -------
    Interactions
        943 users x 1,682 items; positives are ratings >= ``min_rating`` (default 4).
        ``meta["n_ratings"]`` = 100,000 (all ratings), ``meta["n_positives"]`` = kept pairs.
    """
    folder = Path(folder)
    return _build("ml-100k", folder / "u.data", "\t", min_rating,
                  read_ml100k_items(folder / "u.item", folder / "u.genre"), read_ml100k_users(folder / "u.user"))


def load_ml1m(folder: Path, min_rating: float | None = None) -> Interactions:
    """Load MovieLens 1M from ``folder`` (holding ratings.dat, movies.dat, users.dat).

    Returns
    -------
    Interactions
        6,040 users x 3,706 rated items (of the 3,883 movies listed) with genre/year item features and
        demographic user features; ``meta["n_ratings"]`` = 1,000,209 for the official file.
    """
    folder = Path(folder)
    return _build("ml-1m", folder / "ratings.dat", "::", min_rating,
                  read_ml1m_movies(folder / "movies.dat"), read_ml1m_users(folder / "users.dat"))


def titles_of(folder: Path, name: str) -> dict[int, str]:
    """Raw item id -> title for ``ml-100k`` or ``ml-1m`` (read from u.item / movies.dat)."""
    folder = Path(folder)
    ids, titles, _ = (read_ml100k_items(folder / "u.item", folder / "u.genre") if name == "ml-100k"
                      else read_ml1m_movies(folder / "movies.dat"))
    return dict(zip(ids.tolist(), titles.tolist()))
