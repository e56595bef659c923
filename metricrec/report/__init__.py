"""``metricrec report``: one self-contained HTML page (figures as embedded PNG) of a run or a study.

- a ``metricrec train`` run folder (``report.json``): training curves (loss, validation
  Recall@50/@100, seconds per epoch), the test metrics table, a 2-D map of the item vectors
  coloured by popularity and, when the data has one, by a feature group such as genre;
- a ``metricrec tune`` folder (``study.json``): the optimisation history, the trials' learning
  curves, parameter importances, the best configuration and every trial.

Needs matplotlib (``pip install 'metricrec[plot]'``); figures are drawn on the Agg canvas.
"""

from __future__ import annotations

import os
from pathlib import Path

from .._file_kind import irregular
from ..errors import DataError
from ..serialization import atomic_write_text

__all__ = ["write_report", "folder_kind"]


def folder_kind(folder: str | Path) -> str:
    """``"study"`` for a ``metricrec tune`` folder, ``"run"`` for a ``metricrec train`` one.

    Raises
    ------
    DataError
        Not a folder (missing, a file, a FIFO, a dangling link), or a folder that is neither.
    """
    p = Path(folder)
    if not p.is_dir():
        problem = irregular(p, "a folder") if os.path.lexists(p) else "no such folder"
        raise DataError(f"{p}: {problem or 'is a file, not a folder'} (give a run folder or a tune --out folder)")
    if os.path.lexists(p / "study.json"):  # a directory or a FIFO there is refused when it is read
        return "study"
    if os.path.lexists(p / "report.json"):
        return "run"
    raise DataError(f"{p}: neither a 'metricrec train' run folder (report.json) nor a 'metricrec tune' "
                    "folder (study.json)")


def write_report(folder: str | Path, out: str | Path | None = None, *, method: str = "auto",
                 with_features: bool = True) -> Path:
    """Write the report page of ``folder`` to ``out`` (default ``folder/report.html``), atomically.

    Parameters
    ----------
    folder : path
        A run folder of ``metricrec train`` or an ``--out`` folder of ``metricrec tune``.
    out : path, optional
    method : {"auto", "pca", "umap"}
        The item map's projection (runs only; ``auto``: UMAP when installed, else PCA).
    with_features : bool
        Also colour the item map by a feature group such as genre when the data has one.

    Returns
    -------
    Path
        The page written.
    """
    from .figures import require_matplotlib

    kind = folder_kind(folder)
    p = Path(folder)
    target = Path(out) if out is not None else p / "report.html"
    if target.is_dir():  # found before the figures are drawn
        raise DataError(f"{target}: is a directory; give the page a file name (e.g. {target / 'report.html'})")
    require_matplotlib()
    if kind == "study":
        from .study_page import render_study
        text = render_study(p)
    else:
        from .run_page import render_run
        text = render_run(p, method=method, with_features=with_features)
    atomic_write_text(target, text)
    return target
