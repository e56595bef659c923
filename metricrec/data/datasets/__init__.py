"""Named benchmark data sets: ``load_dataset("ml-100k")`` and friends.

Files live in ``<data_dir>/<name>/``. The data directory is, in order: the ``data_dir`` argument, the
``METRICREC_DATA`` environment variable, or the user cache (``$XDG_CACHE_HOME/metricrec``, default
``~/.cache/metricrec``). MovieLens archives are downloaded from GroupLens when missing (sha256 and size
pinned, an overall deadline, nothing left behind: see :mod:`.download`); the others (citeulike-a,
steam-200k, filmtrust, amazon-beauty, amazon-toys) must be put there by hand. Every load checks the
data set's files against the official release (sizes and sha256, see :mod:`.verify`): a truncated or
edited file is a :class:`~metricrec.errors.DataError`, never loaded. :func:`load_dataset_split` gives
the authors' own split where a data set ships one (steam-200k).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..._file_kind import not_a_folder
from ..interactions import Interactions
from ..splits import Split
from .citeulike import CITEULIKE_CHECKS, CITEULIKE_FILES, load_citeulike_a, read_item_tags
from .download import DEFAULT_DEADLINE, DEFAULT_TIMEOUT, Archive, DownloadError, ensure_files
from .movielens import (ML1M, ML1M_CHECKS, ML1M_FILES, ML100K, ML100K_CHECKS, ML100K_FILES, load_ml1m, load_ml100k,
                        titles_of)
from .filmtrust import FILMTRUST_CHECKS, FILMTRUST_FILES, load_filmtrust
from .s3rec import S3REC_SETS
from .steam import STEAM_CHECKS, STEAM_FILES, STEAM_SPLIT_CHECKS, STEAM_SPLIT_FILES, load_steam_200k, load_steam_split
from .verify import FileSpec, verify_files

__all__ = [
    "DATA_ENV", "DownloadError", "available_datasets", "dataset_description", "dataset_folder", "explicit_data_dir",
    "item_titles", "load_dataset", "load_dataset_split", "dataset_has_split", "read_item_tags", "resolve_data_dir",
]

DATA_ENV = "METRICREC_DATA"


@dataclass(frozen=True)
class _Dataset:
    folder: str
    files: tuple[str, ...]
    archive: Archive | None
    loader: Callable[[Path, float | None], Interactions]
    description: str
    checks: tuple[FileSpec, ...]
    #: The authors' split, where the data set ships one: its files, their checks and its reader.
    split_files: tuple[str, ...] = ()
    split_checks: tuple[FileSpec, ...] = ()
    split_loader: Callable[[Path, Interactions], Split] | None = None


def _s3rec(name: str, title: str, counts: str) -> _Dataset:
    s = S3REC_SETS[name]
    return _Dataset(name, s.files, None, s.load, f"{title} (S3-Rec 5-core sequences): {counts}, in time order "
                    "(positives: every item; timestamps: position in the user's sequence)", (s.check,))


_REGISTRY: dict[str, _Dataset] = {
    "ml-100k": _Dataset("ml-100k", ML100K_FILES, ML100K, load_ml100k,
                        "MovieLens 100K: 943 users, 1,682 movies, 100,000 ratings (positives: rating >= 4)",
                        ML100K_CHECKS),
    "ml-1m": _Dataset("ml-1m", ML1M_FILES, ML1M, load_ml1m,
                      "MovieLens 1M: 6,040 users, 3,706 rated movies, 1,000,209 ratings (positives: rating >= 4)",
                      ML1M_CHECKS),
    "citeulike-a": _Dataset("citeulike-a", CITEULIKE_FILES, None, load_citeulike_a,
                            "citeulike-a: 5,551 users, 16,980 articles, 204,986 pairs, article tags (positives: every "
                            "pair)", CITEULIKE_CHECKS),
    "steam-200k": _Dataset("steam-200k", STEAM_FILES, None, load_steam_200k,
                           "Steam-200k (LibCML's implicit version): 3,757 users, 5,113 games, 115,139 pairs "
                           "(positives: every pair); the authors' split: load_dataset_split", STEAM_CHECKS,
                           STEAM_SPLIT_FILES, STEAM_SPLIT_CHECKS, load_steam_split),
    "filmtrust": _Dataset("filmtrust", FILMTRUST_FILES, None, load_filmtrust,
                          "FilmTrust: 1,508 users, 2,071 films, 35,497 ratings 0.5..4, 35,494 pairs (positives: "
                          "every rating; min_rating thresholds)", FILMTRUST_CHECKS),
    "amazon-beauty": _s3rec("amazon-beauty", "Amazon Beauty", "22,363 users, 12,101 items, 198,502 pairs"),
    "amazon-toys": _s3rec("amazon-toys", "Amazon Toys and Games", "19,412 users, 11,924 items, 167,597 pairs"),
}


def available_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`, sorted."""
    return sorted(_REGISTRY)


def dataset_description(name: str) -> str:
    """One line on data set ``name``: its size and which pairs are positives."""
    return _spec(name).description


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data directory: ``data_dir``, else ``$METRICREC_DATA``, else the user cache directory.

    An explicitly given directory (argument or environment variable) must exist; the default cache
    directory may not exist yet (it is created when something is downloaded into it).

    Raises
    ------
    FileNotFoundError
        ``data_dir`` or ``$METRICREC_DATA`` names a directory that does not exist, or something that is
        not a folder (a file, a FIFO: the message says which).
    """
    if data_dir is not None:
        path = Path(data_dir).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"data directory {path} {_missing(path)} (given as data_dir)")
        return path
    env = os.environ.get(DATA_ENV)
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"data directory {path} {_missing(path)} (given by ${DATA_ENV})")
        return path
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "metricrec"


def _missing(path: Path) -> str:
    """Why ``path`` is no data directory: ``"does not exist"``, or what it is instead (``"is a file,
    not a folder"``, ``"is a FIFO (named pipe), not a folder"``, ...)."""
    what = not_a_folder(path)
    return f"{what}, not a folder" if what else "does not exist"


def explicit_data_dir(data_dir: str | os.PathLike | None = None) -> bool:
    """True when the data directory is chosen (``data_dir`` or ``$METRICREC_DATA``), False for the
    default cache directory."""
    return data_dir is not None or bool(os.environ.get(DATA_ENV))


def _spec(name: str) -> _Dataset:
    if name not in _REGISTRY:
        raise ValueError(f"unknown data set {name!r}; available: {', '.join(available_datasets())}")
    return _REGISTRY[name]


def dataset_folder(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool = True,
    base_url: str | None = None,
    sha256: str | None = None,
    size: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    deadline: float = DEFAULT_DEADLINE,
) -> Path:
    """Folder holding the files of data set ``name``, downloading them first when missing and allowed.

    ``base_url`` (or ``$METRICREC_MIRROR``) replaces the official download location, ``sha256`` the
    pinned checksum and ``size`` the archive's size cap (for mirrors and tests); ``timeout`` bounds each
    read and ``deadline`` the whole download (seconds). The files are not verified here (see
    :func:`load_dataset`).
    """
    spec = _spec(name)
    return ensure_files(name, resolve_data_dir(data_dir), spec.folder, spec.files, spec.archive,
                        download=download, base_url=base_url, sha256=sha256, size=size, timeout=timeout,
                        deadline=deadline)


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    min_rating: float | None = None,
    download: bool = True,
    base_url: str | None = None,
    sha256: str | None = None,
    size: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    deadline: float = DEFAULT_DEADLINE,
    verify: bool = True,
) -> Interactions:
    """Load a benchmark data set as binary positives.

    Parameters
    ----------
    name : str
        One of :func:`available_datasets` (``"ml-100k"``, ``"ml-1m"``, ``"citeulike-a"``, ``"steam-200k"``,
        ``"filmtrust"``, ``"amazon-beauty"``, ``"amazon-toys"``; :func:`dataset_description` says what each is).
    data_dir : path-like, optional
        See :func:`resolve_data_dir`.
    min_rating : float, optional
        Positives are ratings >= this: MovieLens default 4 (``1`` keeps every rating), FilmTrust default
        0.5 (every rating). The data sets without ratings refuse a threshold above 1.
    download : bool, default True
        Download missing MovieLens files; when False (or offline) a missing file raises an error that
        names the URL, the directory and the files to put there.
    base_url, sha256, size, timeout, deadline
        Download location, expected checksum and size, per-read timeout and overall deadline (see
        :func:`dataset_folder`).
    verify : bool, default True
        Check the files' sizes and sha256 against the official release first; False loads another
        copy on purpose (``meta["verified"]`` says which).

    Returns
    -------
    Interactions
        Shape (n_users, n_items) with item/user features; ``meta`` has ``dataset``, ``n_ratings``
        (lines read), ``n_positives`` and ``verified`` (the files checked, ``[]`` with ``verify=False``).

    Raises
    ------
    DataError
        A file differs from the official one (truncated, edited): the message names it and what differs.
    """
    spec = _spec(name)
    folder = dataset_folder(name, data_dir, download=download, base_url=base_url, sha256=sha256, size=size,
                            timeout=timeout, deadline=deadline)
    remedy = f"delete {folder} to download it again" if spec.archive is not None else None
    checked = verify_files(folder, spec.checks, name, remedy) if verify else []
    data = spec.loader(folder, min_rating)
    return dataclasses.replace(data, meta={**data.meta, "verified": checked})


def dataset_has_split(name: str) -> bool:
    """Whether data set ``name`` ships a published train/valid/test split (:func:`load_dataset_split`)."""
    return _spec(name).split_loader is not None


def load_dataset_split(
    name: str, data_dir: str | os.PathLike | None = None, *, verify: bool = True,
) -> Split:
    """The data set's own train/valid/test split, as its authors published it (steam-200k's three
    ``user_{train,val,test}_matrix.npz``).

    The data set is loaded as :func:`load_dataset` does and the split's files are checked against
    their official sizes and sha256 before they are read (without pickle); the parts are checked to be
    disjoint and to make up the data set exactly.

    Returns
    -------
    Split
        Parts over the data set's users and items; ``meta["method"]`` is ``"predefined"``,
        ``meta["verified"]`` the split files checked.

    Raises
    ------
    ValueError
        The data set ships no split (use :mod:`metricrec.data.splits` on it).
    FileNotFoundError
        A split file is missing (the message names the folder and the files).
    DataError
        A split file differs from the official one, or the parts overlap or differ from the data set.
    """
    spec = _spec(name)
    if spec.split_loader is None:
        with_split = [n for n in available_datasets() if _REGISTRY[n].split_loader is not None]
        raise ValueError(f"data set {name!r} ships no predefined split (those that do: {', '.join(with_split)}); "
                         "split it with ratio_split, leave_k_out or temporal_split")
    data = load_dataset(name, data_dir, download=False, verify=verify)
    folder = ensure_files(name, resolve_data_dir(data_dir), spec.folder, spec.split_files, None, download=False)
    checked = verify_files(folder, spec.split_checks, name) if verify else []
    split = spec.split_loader(folder, data)
    return dataclasses.replace(split, meta={**split.meta, "verified": checked})


def item_titles(name: str, data_dir: str | os.PathLike | None = None, *, download: bool = False) -> dict:
    """Raw item id -> title for the MovieLens data sets (empty dict for data sets without titles)."""
    spec = _spec(name)
    if not name.startswith("ml-"):
        return {}
    folder = resolve_data_dir(data_dir) / spec.folder
    if download:
        folder = dataset_folder(name, data_dir, download=True)
    return titles_of(folder, name)
