"""Named benchmark data sets: ``load_dataset("ml-100k")`` and friends.

Files live in ``<data_dir>/<name>/``. The data directory is, in order: the ``data_dir`` argument, the
``METRICREC_DATA`` environment variable, or the user cache (``$XDG_CACHE_HOME/metricrec``, default
``~/.cache/metricrec``). MovieLens archives are downloaded from GroupLens when missing (sha256 and size
pinned, an overall deadline, nothing left behind: see :mod:`.download`); citeulike-a must be put there by
hand. Every load checks the data set's files against the official release (sizes and sha256, see
:mod:`.verify`): a truncated or edited file is a :class:`~metricrec.errors.DataError`, never loaded.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..interactions import Interactions
from .citeulike import CITEULIKE_CHECKS, CITEULIKE_FILES, load_citeulike_a, read_item_tags
from .download import DEFAULT_DEADLINE, DEFAULT_TIMEOUT, Archive, DownloadError, ensure_files
from .movielens import (ML1M, ML1M_CHECKS, ML1M_FILES, ML100K, ML100K_CHECKS, ML100K_FILES, load_ml1m, load_ml100k,
                        titles_of)
from .verify import FileSpec, verify_files

__all__ = [
    "DATA_ENV", "DownloadError", "available_datasets", "dataset_folder", "explicit_data_dir", "item_titles",
    "load_dataset", "read_item_tags", "resolve_data_dir",
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


_REGISTRY: dict[str, _Dataset] = {
    "ml-100k": _Dataset("ml-100k", ML100K_FILES, ML100K, load_ml100k,
                        "MovieLens 100K: 943 users, 1,682 movies, 100,000 ratings (positives: rating >= 4)",
                        ML100K_CHECKS),
    "ml-1m": _Dataset("ml-1m", ML1M_FILES, ML1M, load_ml1m,
                      "MovieLens 1M: 6,040 users, 3,706 rated movies, 1,000,209 ratings (positives: rating >= 4)",
                      ML1M_CHECKS),
    "citeulike-a": _Dataset("citeulike-a", CITEULIKE_FILES, None, load_citeulike_a,
                            "citeulike-a: 5,551 users, 16,980 articles, 204,986 pairs, article tags", CITEULIKE_CHECKS),
}


def available_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`, sorted."""
    return sorted(_REGISTRY)


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data directory: ``data_dir``, else ``$METRICREC_DATA``, else the user cache directory.

    An explicitly given directory (argument or environment variable) must exist; the default cache
    directory may not exist yet (it is created when something is downloaded into it).

    Raises
    ------
    FileNotFoundError
        ``data_dir`` or ``$METRICREC_DATA`` names a directory that does not exist.
    """
    if data_dir is not None:
        path = Path(data_dir).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"data directory {path} does not exist (given as data_dir)")
        return path
    env = os.environ.get(DATA_ENV)
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"data directory {path} does not exist (given by ${DATA_ENV})")
        return path
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "metricrec"


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
        One of :func:`available_datasets` (``"ml-100k"``, ``"ml-1m"``, ``"citeulike-a"``).
    data_dir : path-like, optional
        See :func:`resolve_data_dir`.
    min_rating : float, optional
        MovieLens: positives are ratings >= this (default 4; ``1`` keeps every rating).
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


def item_titles(name: str, data_dir: str | os.PathLike | None = None, *, download: bool = False) -> dict:
    """Raw item id -> title for the MovieLens data sets (empty dict for data sets without titles)."""
    spec = _spec(name)
    if not name.startswith("ml-"):
        return {}
    folder = resolve_data_dir(data_dir) / spec.folder
    if download:
        folder = dataset_folder(name, data_dir, download=True)
    return titles_of(folder, name)
