"""``RUN_DIR/run.json``: the record that makes every `metricrec train` folder resumable or restartable.

`metricrec train` writes it (atomically) once the flags are checked and the data is loaded and split
-- before the spectral init, the kernels' compile and the first epoch -- so a run killed at any
later moment can be taken up with ``metricrec train --resume RUN_DIR`` without typing its arguments
again. It holds:

- ``format`` ``"metricrec.run"``, ``format_version`` 1, ``metricrec_version``;
- ``status``: ``"started"`` (no checkpoint yet), ``"training"`` (the first checkpoint was written) or
  ``"finished"`` (model and ``report.json`` saved; written just before the checkpoint is removed);
- ``started_at`` / ``updated_at`` (ISO 8601, UTC; a restart keeps ``started_at``);
- ``args``: the run's arguments as ``--resume`` reads them (paths absolute; the checkpoint's
  ``args.json`` holds the same);
- ``data``: the data source (paths absolute) and ``train_fingerprint``, the fingerprint of the
  training part (:mod:`metricrec.fingerprint`), checked again by every ``--resume``.

The status is a record for people; what ``--resume`` does is decided by the folder: finished (the
status says so) -> nothing to do; a ``checkpoint/`` -> go on from it; else -> start again from scratch
with the recorded arguments (see :func:`metricrec.cli.train_run.resumed_args`).
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any, Container

from .. import __version__
from ..errors import CheckpointError, ConfigError, DataError
from ..fingerprint import compare_fingerprints
from ..serialization import atomic_write_json
from ..training.json_files import read_json

__all__ = ["RUN_FILE", "STATUSES", "read_run", "check_out_record", "start_run", "mark_run", "check_run_data",
           "finished_line"]

RUN_FILE = "run.json"
FORMAT = "metricrec.run"
FORMAT_VERSION = 1
STATUSES = ("started", "training", "finished")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def read_run(run: Path, *, known_args: Container[str] | None = None) -> dict[str, Any] | None:
    """The checked ``run.json`` of the folder ``run`` (None when there is none).

    Parameters
    ----------
    run : Path
        A run folder.
    known_args : container of str, optional
        The argument names a recorded run may hold (others: refused).

    Returns
    -------
    dict or None

    Raises
    ------
    CheckpointError
        When the file is not a run record this version reads (names the file).
    """
    path = run / RUN_FILE
    if not path.is_file():
        return None
    doc = read_json(path, "run record")
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not the record of a 'metricrec train' run")
    if doc.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: run record format_version {doc.get('format_version')!r} is not supported")
    args, data = doc.get("args"), doc.get("data")
    fp = data.get("train_fingerprint") if isinstance(data, dict) else None
    if doc.get("status") not in STATUSES or not isinstance(args, dict) or not isinstance(data, dict) \
            or not (isinstance(fp, dict) or (fp is None and doc.get("status") == "started")) \
            or (known_args is not None and any(k not in known_args for k in args)):
        raise CheckpointError(f"{path}: damaged run record (status one of {', '.join(STATUSES)}, the run's args "
                              "and the data's train_fingerprint expected)")
    return doc


def check_out_record(out: Path) -> None:
    """Refuse ``--out`` when its ``run.json`` is some other file (a new run would replace it)."""
    if (out / RUN_FILE).exists():
        try:
            read_run(out)
        except CheckpointError:
            raise ConfigError(f"--out {out}: {out / RUN_FILE} exists and is not a metricrec run record; "
                              "choose another --out") from None


def start_run(out: Path, args: dict[str, Any], source: dict[str, Any] | None,
              train_fingerprint: dict[str, Any] | None, *, previous: dict[str, Any] | None = None,
              checkpointed: bool = False) -> None:
    """Write ``out/run.json`` at the start of a run: status ``started`` (``training`` when going on
    from a checkpoint); a resumed or restarted run keeps the ``started_at`` of ``previous``. The
    first record of a new run has no ``source`` and fingerprint yet (None: the data is not loaded)."""
    now = _now()
    atomic_write_json(out / RUN_FILE, {
        "format": FORMAT, "format_version": FORMAT_VERSION, "metricrec_version": __version__,
        "status": "training" if checkpointed else "started",
        "started_at": (previous or {}).get("started_at", now), "updated_at": now,
        "args": args, "data": {"source": source, "train_fingerprint": train_fingerprint},
    })


def mark_run(out: Path, status: str) -> None:
    """Set the status of ``out/run.json`` (nothing when there is none, e.g. a library caller's folder)."""
    doc = read_run(out)
    if doc is not None and doc["status"] != status:
        atomic_write_json(out / RUN_FILE, {**doc, "status": status, "updated_at": _now()})


def check_run_data(run: Path, record: dict[str, Any], actual: dict[str, Any], what: str) -> None:
    """:class:`DataError` naming what changed when the data's training part is not the one ``record``
    (the run's ``run.json``) was started on."""
    if record["data"]["train_fingerprint"] is None:  # killed before its data was loaded: nothing to compare
        return
    diffs = compare_fingerprints(record["data"]["train_fingerprint"], actual,
                                 sides=("when the run started", "now"))
    if diffs:
        raise DataError(f"--resume {run}: the data ({what}, training part) changed since the run started: "
                        f"{'; '.join(diffs)}; restore that data, or train on this data as a new run (without --resume)")


def _report(run: Path) -> dict[str, Any] | None:
    try:
        doc = read_json(run / "report.json", "run report")
    except CheckpointError:
        return None
    return doc if isinstance(doc, dict) else None


def finished_line(run: Path, record: dict[str, Any] | None) -> str | None:
    """The one line for ``--resume`` of a finished run, None when the run is not finished. Without a
    record (a run of an older version) a run is finished when its ``report.json`` says it completed."""
    report = _report(run)
    if record is None and (report is None or report.get("interrupted") or not (run / "model").is_dir()):
        return None
    if record is not None and record["status"] != "finished":
        return None
    test = (report or {}).get("test")
    shown = [f"{k} {test[k]:.4f}" for k in ("recall@50", "ndcg@50")
             if isinstance(test, dict) and isinstance(test.get(k), (int, float))]
    metrics = f"test {', '.join(shown)}" if shown else "no test metrics recorded"
    return f"RESUME: {run} is finished: model {run / 'model'} ({metrics}; see {run / 'report.json'}); nothing to resume"
