"""Steam-200k as preprocessed and split by the LibCML authors (statusrank/LibCML, ``data/Steam-200k``).

``users.dat`` is CollMetric's format (as citeulike-a's): line u is ``n i_1 ... i_n``, the 0-based
games user u played or bought; every pair is a positive (3,757 users x 5,113 games, 115,139 pairs).
The authors' own split is three scipy ``save_npz`` archives of ones, ``user_{train,val,test}_matrix.npz``:
:func:`load_steam_split` reads them without pickle (``scipy.sparse.load_npz`` loads with
``allow_pickle=False``) after their sha256 was checked, and checks that they are disjoint and that their
union is exactly ``users.dat``. That split is the authors' protocol, not ours: compare with figures
reported on it; the protocol's own figures use ``users.dat`` with :func:`~metricrec.data.splits.ratio_split`.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ...errors import DataError
from ..interactions import Interactions
from ..splits import Split
from .lists import no_ratings, user_lists_interactions
from .verify import FileSpec

__all__ = ["STEAM_CHECKS", "STEAM_FILES", "STEAM_SPLIT_CHECKS", "STEAM_SPLIT_FILES", "load_steam_200k",
           "load_steam_split"]

STEAM_FILES = ("users.dat",)
#: The split's parts (train, valid, test), in the authors' names.
STEAM_SPLIT_FILES = ("user_train_matrix.npz", "user_val_matrix.npz", "user_test_matrix.npz")
# Sizes and sha256 of the LibCML files (shared/data/README.md), checked before anything is read.
STEAM_CHECKS = (
    FileSpec("users.dat", 481_433, "c24f37c8741ecbc95baf640391ac7f9d4352aa6657e2997a70129c3df9179ad9"),
)
STEAM_SPLIT_CHECKS = (
    FileSpec("user_train_matrix.npz", 137_214, "02251e43b720a32be13959e9c441668c3e19dd6a75d5e08a6588498d2ade4a87"),
    FileSpec("user_val_matrix.npz", 50_058, "44b75280b605600f970b3ad7445efee174a145e759c1e870a7cae8bc88ec341b"),
    FileSpec("user_test_matrix.npz", 57_286, "b608c33e5dd574dccc34d91747e7125f727e2481012d1b54cbbd1a7157be1cf6"),
)


def load_steam_200k(folder: Path, min_rating: float | None = None) -> Interactions:
    """Load Steam-200k from ``folder`` (holding users.dat).

    Returns
    -------
    Interactions
        3,757 users (ids 0..3756, one per line) x 5,113 games (ids 0..5112, the largest id + 1),
        115,139 positives; no timestamps, no features.
    """
    no_ratings("steam-200k", min_rating)
    return user_lists_interactions(Path(folder) / "users.dat", "steam-200k")


def _read_part(path: Path, shape: tuple[int, int]) -> sp.csr_matrix:
    """One ``save_npz`` archive as a canonical binary CSR of ``shape`` (no pickle)."""
    try:
        m = sp.load_npz(path)  # numpy.load(..., allow_pickle=False) inside
    except (ValueError, OSError, KeyError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a scipy sparse .npz archive ({' '.join(str(exc).split())})") from None
    if m.shape != shape:
        raise DataError(f"{path}: shape {m.shape}, but users.dat gives {shape} (users x games)")
    csr = sp.csr_matrix(m, dtype=np.float64)
    csr.sum_duplicates()
    if csr.nnz and not np.all(csr.data == 1.0):
        raise DataError(f"{path}: holds values other than 1 (expected a binary matrix of ones)")
    return csr


def load_steam_split(folder: Path, data: Interactions) -> Split:
    """The LibCML authors' split of Steam-200k, over the users and games of ``data`` (users.dat).

    Parameters
    ----------
    folder : path-like
        Holding the three ``user_*_matrix.npz`` (checked against their sha256 by the caller,
        :func:`metricrec.data.datasets.load_dataset_split`).
    data : Interactions
        ``users.dat`` as :func:`load_steam_200k` loads it.

    Returns
    -------
    Split
        Train 67,653, valid 21,728 and test 25,758 pairs for the official files; ``meta`` has
        ``method="predefined"``, ``files`` and ``sizes``.

    Raises
    ------
    DataError
        A part that is not a sparse archive of ones of the data's shape, two parts sharing a pair, or
        parts whose union differs from ``users.dat`` (each names the file and the count).
    """
    folder = Path(folder)
    paths = [folder / name for name in STEAM_SPLIT_FILES]
    parts = [_read_part(p, data.shape) for p in paths]
    total = parts[0] + parts[1] + parts[2]
    if total.nnz and total.max() > 1:
        counts = [int((parts[a].multiply(parts[b])).nnz) for a, b in ((0, 1), (0, 2), (1, 2))]
        a, b = ((0, 1), (0, 2), (1, 2))[int(np.argmax(counts))]
        raise DataError(f"{paths[a]} and {paths[b]} share {max(counts):,} (user, game) pairs; a split's parts "
                        "must be disjoint")
    whole = sp.csr_matrix(data.matrix, dtype=np.float64)
    n_diff = int((total != whole).nnz)
    if n_diff:
        raise DataError(f"{folder}: the three parts differ from users.dat in {n_diff:,} (user, game) pairs "
                        f"(parts {total.nnz:,} pairs, users.dat {whole.nnz:,}); they are not its split")
    names = ("train", "valid", "test")
    views = [data.with_matrix(p, None, split_part=n, split_method="predefined") for n, p in zip(names, parts)]
    meta = {"method": "predefined", "files": {n: str(p) for n, p in zip(names, paths)},
            "universe": str(folder / "users.dat"), "sizes": {n: v.nnz for n, v in zip(names, views)}}
    return Split(views[0], views[1], views[2], meta)
