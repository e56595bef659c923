"""MovieLens 100K and 1M (GroupLens): ratings, item genres/years and user demographics.

Positives are ratings >= ``min_rating`` (4 by default, the CML paper's rule). The id universe is every
user and item with at least one rating of any value, so thresholding never changes the shape.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..columns import float_column, id_column, int_column
from ..delimited import TextTable, read_columns
from ..ids import IdIndex, canonical_ids
from ..interactions import Interactions
from ._features import multi_hot
from .download import Archive
from .verify import FileSpec

__all__ = [
    "ML100K", "ML1M", "ML100K_CHECKS", "ML1M_CHECKS", "load_ml100k", "load_ml1m",
    "read_ml100k_items", "read_ml100k_users", "read_ml1m_movies", "read_ml1m_users",
]

GROUPLENS = "https://files.grouplens.org/datasets/movielens"
# sha256 and size of the official archives, as pinned by tensorflow/datasets
# (tensorflow_datasets/url_checksums/movielens.txt: ml-100k.zip 4,924,029 bytes, ml-1m.zip 5,917,549 bytes).
ML100K = Archive("ml-100k.zip", GROUPLENS, "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
                 "ml-100k", 4_924_029)
ML1M = Archive("ml-1m.zip", GROUPLENS, "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20", "ml-1m",
               5_917_549)

ML100K_FILES = ("u.data", "u.item", "u.user", "u.genre")
ML1M_FILES = ("ratings.dat", "movies.dat", "users.dat")
# The extracted files, checked at every load: sizes and sha256 of the GroupLens originals (shared/data/README.md).
# ratings.dat of ML-1M was not at hand: its size (24,594,131 bytes, as the GroupLens archive extracts) is checked.
ML100K_CHECKS = (
    FileSpec("u.data", 1_979_173, "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490"),
    FileSpec("u.item", 236_344, "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701"),
    FileSpec("u.user", 22_628, "f120e114da2e8cf314fd28f99417c94ae9ddf1cb6db8ce0e4b5995d40e90e62c"),
    FileSpec("u.genre", 202, "9757e0d3e6b298159a80dd48eaf938114690e911e39af97a76949ef1663610bb"),
)
ML1M_CHECKS = (
    FileSpec("ratings.dat", 24_594_131),
    FileSpec("movies.dat", 171_308, "0140fc2356357c1a851d0f52e893a1e4d3696df632c4141cea8d5bc3d621f0b9"),
    FileSpec("users.dat", 134_368, "1dc3a95300cb19f7c10e027daf29b8cdf1d908dab65b5edfb45950aa389a10a3"),
)
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


def _table(path: Path, sep: str, columns: dict[str, int], fields: int) -> TextTable:
    """Columns of a MovieLens file (ISO-8859-1, no header, no quoting, exactly ``fields`` per line)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"MovieLens file not found: {path}")
    return read_columns(path, columns, sep=sep, header=False, encoding="iso-8859-1", quoting=False,
                        fields=fields, what="lines")


def _ints(t: TextTable, role: str, what: str) -> np.ndarray:
    """A column of integers (canonical integer text); the first other value is reported by line."""
    values = id_column(t, role, what)
    if values.dtype.kind != "i":
        texts = values.tolist()
        k = next(k for k, v in enumerate(texts) if canonical_ids([v]).dtype.kind != "i")
        raise ValueError(f"{t.path}, line {t.line(k)}: {what} {texts[k]!r} is not an integer")
    return values


def _strings(t: TextTable, role: str) -> list[str]:
    return t.columns[role].to_pylist()


def _decade(year: int | None) -> list[str]:
    return [] if year is None else [f"year={year // 10 * 10}s"]


def _age_groups(ages: np.ndarray) -> list[str]:
    edges = np.array([18, 25, 35, 45, 50, 56])
    names = list(_AGE_GROUPS.values())
    return [names[k] for k in np.searchsorted(edges, ages, side="right")]


def _release_years(t: TextTable, path: Path) -> list[int | None]:
    years: list[int | None] = []
    for k, date in enumerate(_strings(t, "date")):
        date = date.strip()
        if date and not date[-4:].isdigit():
            raise ValueError(f"{path}, line {t.line(k)}: release year {date[-4:]!r} is not an integer")
        years.append(int(date[-4:]) if date else None)
    return years


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
    genres = _strings(_table(genre_path, "|", {"name": 0}, 2), "name")
    flag_cols = {f"g{k}": 5 + k for k in range(len(genres))}
    t = _table(path, "|", {"id": 0, "title": 1, "date": 2, **flag_cols}, 5 + len(genres))
    ids = _ints(t, "id", "item id")
    flags = np.stack([np.asarray(_strings(t, c), dtype=str) for c in flag_cols], axis=1) if genres \
        else np.zeros((t.n_rows, 0), dtype=str)
    bad = np.flatnonzero(~np.isin(flags, ["0", "1"]).all(axis=1))
    if bad.size:
        k = int(bad[0])
        raise ValueError(f"{path}, line {t.line(k)}: genre flags must be 0 or 1, got {flags[k].tolist()}")
    feats = [[f"genre={g}" for g, x in zip(genres, row) if x == "1"] + _decade(year)
             for row, year in zip(flags.tolist(), _release_years(t, path))]
    return ids, np.array(_strings(t, "title"), dtype=str), feats


def read_ml100k_users(path: Path) -> tuple[np.ndarray, list[list[str]]]:
    """Parse ``u.user`` (``id|age|gender|occupation|zip``) into ids and age-group/gender/occupation features."""
    t = _table(path, "|", {"id": 0, "age": 1, "gender": 2, "occupation": 3}, 5)
    ids, ages = _ints(t, "id", "user id"), _ints(t, "age", "age")
    feats = [[f"age={a}", f"gender={g}", f"occupation={o}"]
             for a, g, o in zip(_age_groups(ages), _strings(t, "gender"), _strings(t, "occupation"))]
    return ids, feats


def read_ml1m_movies(path: Path) -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
    """Parse ``movies.dat`` (``MovieID::Title::Genres``, ISO-8859-1, genres ``|``-separated).

    Returns ids (int64), titles (str) and per-movie features ``genre=<name>`` and ``year=<decade>s``
    (the year is the trailing ``(1995)`` of the title).
    """
    t = _table(path, "::", {"id": 0, "title": 1, "genres": 2}, 3)
    ids, titles = _ints(t, "id", "movie id"), _strings(t, "title")
    feats = []
    for title, genres in zip(titles, _strings(t, "genres")):
        m = _TITLE_YEAR.search(title)
        feats.append([f"genre={g}" for g in genres.split("|") if g] + _decade(int(m.group(1)) if m else None))
    return ids, np.array(titles, dtype=str), feats


def read_ml1m_users(path: Path) -> tuple[np.ndarray, list[list[str]]]:
    """Parse ``users.dat`` (``UserID::Gender::Age::Occupation::Zip``) into ids and demographic features."""
    t = _table(path, "::", {"id": 0, "gender": 1, "age": 2, "occupation": 3}, 5)
    ids, ages, occs = _ints(t, "id", "user id"), _ints(t, "age", "age code"), _ints(t, "occupation", "occupation code")
    for bad, what, allowed in ((~np.isin(ages, list(_AGE_GROUPS)), "age code", f"one of {list(_AGE_GROUPS)}"),
                               ((occs < 0) | (occs >= len(_ML1M_OCCUPATIONS)), "occupation code",
                                f"0..{len(_ML1M_OCCUPATIONS) - 1}")):
        if bad.any():
            k = int(np.argmax(bad))
            value = (ages if what == "age code" else occs)[k]
            raise ValueError(f"{path}, line {t.line(k)}: unknown {what} {value} (expected {allowed})")
    feats = [[f"age={_AGE_GROUPS[a]}", f"gender={g}", f"occupation={_ML1M_OCCUPATIONS[o]}"]
             for a, g, o in zip(ages.tolist(), _strings(t, "gender"), occs.tolist())]
    return ids, feats


def _build(
    name: str, ratings_path: Path, sep: str, min_rating: float | None,
    items: tuple[np.ndarray, np.ndarray, list[list[str]]], users: tuple[np.ndarray, list[list[str]]],
) -> Interactions:
    t = _table(ratings_path, sep, {"user": 0, "item": 1, "rating": 2, "timestamp": 3}, 4)
    users_raw, items_raw = _ints(t, "user", "user id"), _ints(t, "item", "item id")
    user_map, u = IdIndex.from_values(users_raw, name="user")
    item_map, i = IdIndex.from_values(items_raw, name="item")
    threshold = DEFAULT_MIN_RATING if min_rating is None else float(min_rating)
    item_ids_f, titles, item_feats = items
    user_ids_f, user_feats = users
    inter = Interactions.from_arrays(
        u, i, float_column(t, "rating", "rating"), int_column(t, "timestamp", "timestamp"),
        min_weight=threshold, user_ids=np.arange(len(user_map)), item_ids=np.arange(len(item_map)),
        source=str(ratings_path),
    )
    meta = dict(inter.meta)
    meta.update(dataset=name, n_positives=inter.nnz, data_dir=str(ratings_path.parent))
    return Interactions(inter.matrix, user_map.ids, item_map.ids, inter.timestamps,
                        multi_hot(item_map.ids, item_ids_f, item_feats, f"{name} items"),
                        multi_hot(user_map.ids, user_ids_f, user_feats, f"{name} users"), meta)


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
