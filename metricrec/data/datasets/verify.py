"""Each benchmark data set's files checked at load: their sizes and sha256 against the official release.

A file that is truncated, edited or from another release is one :class:`~metricrec.errors.DataError`
naming the file and what differs (bytes, or the checksum) -- it is never loaded silently. The
expected values are the GroupLens / citeulike-a originals (see ``shared/data/README.md`` for their
provenance); ``load_dataset(..., verify=False)`` (``--no-verify``) loads other copies on purpose.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ...errors import DataError
from ...fingerprint import file_sha256

__all__ = ["FileSpec", "verify_files"]

_NO_VERIFY = "pass --no-verify (verify=False) to load this copy anyway"


@dataclass(frozen=True)
class FileSpec:
    """What one file of a data set's official release is.

    Attributes
    ----------
    name : str
        File name inside the data set folder (``"u.data"``).
    size : int
        Size in bytes.
    sha256 : str or None
        Checksum of the file (None where no copy was at hand to take it from: the size is checked).
    """

    name: str
    size: int
    sha256: str | None = None


def verify_files(folder: str | Path, specs: Sequence[FileSpec], dataset: str, remedy: str | None = None) -> list[str]:
    """Check the files of ``dataset`` in ``folder`` against their official sizes and checksums.

    Parameters
    ----------
    folder : path
        The data set folder (``<data_dir>/ml-100k``).
    specs : sequence of FileSpec
        The files to check (missing ones are left to the loader, which names them).
    dataset : str
        Name quoted in the error.
    remedy : str, optional
        How to get the right file, quoted in the error (default: put the official file there).

    Returns
    -------
    list of str
        Names of the files checked (``"u.data"``, ...).

    Raises
    ------
    DataError
        A file whose size or sha256 differs; one line naming the file, the expected and the actual
        value, and what to do.
    """
    folder = Path(folder)
    fix = f"{remedy or 'put the official file there'}, or {_NO_VERIFY}"
    checked = []
    for spec in specs:
        path = folder / spec.name
        if not path.is_file():
            continue
        size = path.stat().st_size
        if size != spec.size:
            short = "truncated" if size < spec.size else "longer than the original"
            raise DataError(
                f"{path}: {size:,} bytes, but the official {dataset} {spec.name} has {spec.size:,} ({short}: "
                f"an interrupted copy or another file); {fix}"
            )
        if spec.sha256 is not None:
            got = file_sha256(path)
            if got != spec.sha256:
                raise DataError(
                    f"{path}: sha256 {got} differs from the official {dataset} {spec.name} ({spec.sha256}; same "
                    f"size, other content: an edited or corrupted copy); {fix}"
                )
        checked.append(spec.name)
    return checked
