"""The Optuna study behind ``metricrec tune``: open or resume it, run it, write what it found.

A study lives in an Optuna storage (``sqlite:///runs/tune.db``): every finished trial is in the
file the moment it ends, so a run stopped at any point -- Ctrl-C, ``kill -9``, a crash -- resumes
by running the same command again. One process runs a study at a time: trials an interrupted run
left RUNNING are marked FAIL when the study is opened again (failed trials are ignored by the
sampler and not counted towards ``--trials``).

The sampler is TPE seeded with ``seed + number of trials so far``, so a resumed study draws new
points (never the first run's again) and the same history always leads to the same next trial.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
from pathlib import Path
from typing import Any, Iterator, Mapping

from .._file_kind import irregular, open_regular
from ..errors import ConfigError
from .objective import METRIC
from .space import Param

__all__ = ["PRUNERS", "open_study", "make_pruner", "study_document", "best_config_document"]

PRUNERS = ("median", "halving", "none")


def require_optuna() -> Any:
    """The ``optuna`` module, or a one-line ImportError naming the extra to install."""
    try:
        import optuna
    except ImportError:
        raise ImportError("metricrec tune needs Optuna: pip install 'metricrec[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # metricrec prints one line per trial itself
    return optuna


def make_pruner(name: str, warmup: int) -> Any:
    """``median``: MedianPruner (5 startup trials, ``warmup`` epochs); ``halving``: successive
    halving from ``warmup`` epochs; ``none``: no pruning."""
    optuna = require_optuna()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=warmup)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, warmup), reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"--pruner must be one of {', '.join(PRUNERS)}; got {name!r}")


def _sqlite_file(url: str) -> None:
    """Check the file of a ``sqlite:///path`` storage and create its folder (Optuna would fail on a
    missing one): refuse a directory, a FIFO, a device or a dangling link there, a file that is not
    SQLite, and an SQLite database of another program (tables, but not Optuna's)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url[len(prefix):] in ("", ":memory:"):
        return
    path = Path(url[len(prefix):]).expanduser()
    if not os.path.lexists(path):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise ConfigError(f"--storage {url}: {path.parent} is not a folder") from None
        return
    problem = irregular(path, "an SQLite file")
    if problem is not None:
        raise ConfigError(f"--storage {url}: {path} {problem}")
    with open_regular(path, "an SQLite file", ConfigError) as fh:
        head = fh.read(16)
    if head and head != b"SQLite format 3\x00":
        raise ConfigError(f"--storage {url}: {path} is not an SQLite database (it starts with {head[:8]!r}); "
                          "give a new file name or an Optuna storage")
    with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if tables and "version_info" not in tables:  # Optuna's schema has a version_info table
        raise ConfigError(f"--storage {url}: {path} is an SQLite database of another program (tables "
                          f"{', '.join(sorted(tables)[:3])}), not an Optuna storage; give another file")


@contextlib.contextmanager
def _storage_errors(url: str) -> Iterator[None]:
    """What the storage at ``url`` raises while it is opened (a malformed URL, a database that cannot
    be opened or is locked) as one :class:`ConfigError` naming it."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except (SQLAlchemyError, sqlite3.Error) as exc:
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise ConfigError(f"--storage {url}: cannot open it as an Optuna storage ({detail})") from None


def open_study(storage: str, name: str, *, seed: int, pruner: Any,
               identity: Mapping[str, Any]) -> tuple[Any, list[int]]:
    """Create the study ``name`` in ``storage``, or load it when it exists.

    Parameters
    ----------
    storage : str
        An Optuna storage URL (``sqlite:///runs/tune.db``).
    name : str
    seed : int
        TPE's seed is ``seed + len(study.trials)``.
    pruner : optuna.pruners.BasePruner
    identity : mapping
        What the study tunes (training data fingerprint, parameter names, metric), saved with a new
        study and compared with a loaded one.

    Returns
    -------
    study : optuna.Study
    failed : list of int
        Numbers of the trials an interrupted run had left RUNNING, now marked FAIL.

    Raises
    ------
    ConfigError
        The stored study tunes something else (other data, parameters or metric), or ``storage`` cannot
        be opened (a malformed URL; a ``sqlite:///`` path that is a directory, a FIFO, not SQLite, or
        another program's database).
    """
    optuna = require_optuna()
    _sqlite_file(storage)
    with _storage_errors(storage):
        store = optuna.storages.RDBStorage(storage)
        failed = _fail_interrupted(store, name)
        study = optuna.create_study(storage=store, study_name=name, direction="maximize", pruner=pruner,
                                    load_if_exists=True)
    stored = study.user_attrs.get("metricrec")
    want = json.loads(json.dumps(dict(identity)))
    if stored is None:
        study.set_user_attr("metricrec", want)
    else:
        for key in want:
            if stored.get(key) != want[key]:
                raise ConfigError(f"study {name!r} in {storage} was made with another {key} "
                                  f"({stored.get(key)!r}); give another --study-name")
    study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials))
    return study, failed


def _fail_interrupted(store: Any, name: str) -> list[int]:
    """Mark the trials of study ``name`` left RUNNING (by a killed run) as FAIL; return their numbers."""
    optuna = require_optuna()
    try:
        study_id = store.get_study_id_from_name(name)
    except KeyError:
        return []
    running = store.get_all_trials(study_id, deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for t in running:
        trial_id = store.get_trial_id_from_study_id_trial_number(study_id, t.number)
        store.set_trial_user_attr(trial_id, "failed_because", "left RUNNING by an interrupted run")
        store.set_trial_state_values(trial_id, state=optuna.trial.TrialState.FAIL)
    return [t.number for t in running]


def _finite(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def _trial_doc(t: Any) -> dict[str, Any]:
    return {"number": t.number, "state": t.state.name, "value": _finite(t.value), "params": dict(t.params),
            "seconds": t.user_attrs.get("seconds"), "train_seconds": t.user_attrs.get("train_seconds"),
            "epochs": t.user_attrs.get("epochs"), "best_epoch": t.user_attrs.get("best_epoch"),
            "intermediate": {str(k): v for k, v in sorted(t.intermediate_values.items())},
            "failed_because": t.user_attrs.get("failed_because"), "defaults": bool(t.user_attrs.get("defaults")),
            "started": None if t.datetime_start is None else t.datetime_start.isoformat(timespec="seconds")}


def best_config_document(base: Any, params: Mapping[str, Any]) -> dict[str, Any]:
    """The best trial's full configuration as ``metricrec train --config`` reads it.

    Every field of ``base``'s config class (:class:`CMLConfig` for CML) is written (so a later change of the library's defaults does not
    change what the file means), except those that are None by default and in this config.
    """
    config = base.replace(**dict(params)).to_dict()
    defaults = type(base)().to_dict()
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items()
            if not (v is None and defaults.get(k) is None)}


def study_document(study: Any, storage: str, space: tuple[Param, ...], base: Any,
                   extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Everything ``study.json`` records: settings, search space, every trial, the best one."""
    optuna = require_optuna()
    trials = [_trial_doc(t) for t in study.get_trials(deepcopy=False)]
    states: dict[str, int] = {}
    for t in trials:
        states[t["state"]] = states.get(t["state"], 0) + 1
    complete = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
    best = None
    if complete:
        b = max(complete, key=lambda t: t.value)
        best = {**_trial_doc(b), "config": best_config_document(base, b.params)}
    dists = {}
    for t in study.get_trials(deepcopy=False):
        for k, d in t.distributions.items():
            dists.setdefault(k, optuna.distributions.distribution_to_json(d))
    return {"kind": "metricrec.tune", "study_name": study.study_name, "storage": storage, "direction": "maximize",
            "metric": f"valid {METRIC} (best epoch)", **dict(extra or {}),
            "space": [{"name": p.name, "kind": p.kind, "range": p.range_text(), "why": p.why} for p in space],
            "distributions": dists, "base_config": best_config_document(base, {}),
            "identity": study.user_attrs.get("metricrec"), "n_trials": len(trials), "states": states,
            "best": best, "trials": trials}
