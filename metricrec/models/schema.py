"""The JSON documents of a model and of a run, checked as schemas before anything is built from them.

A model's ``config.json`` (or the metadata of a single ``.npz``) says how big its arrays are; a run's
``data.json`` says where its data came from. Both are checked here -- types, finite numbers, bounds --
and every failure is one :class:`~metricrec.serialization.ModelFormatError` (a
:class:`~metricrec.errors.ModelFileError`) naming the file and the key. :func:`check_model_arrays` is
the ``expect`` hook of :func:`metricrec.serialization.load_model_files`: the shapes the document
implies are compared with the array headers before a single array is read.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

from .._file_kind import open_regular
from ..errors import ConfigError
from ..limits import MAX_ARRAY_BYTES, MAX_FACTORS, MAX_ROWS
from ..serialization import MAX_DOC_BYTES, ModelFormatError

__all__ = ["MAX_ROWS", "MAX_FACTORS", "MAX_ARRAY_BYTES", "model_facts", "check_history_doc", "check_model_arrays",
           "check_specs", "read_run_doc"]

# The bounds (users, items, factors, array bytes) are the one table of :mod:`metricrec.limits`, which the
# CLI's flags and the configs check too: a model the loader refuses is never trained.
_RUN_KINDS = ("dataset", "synthetic", "file", "predefined")


def _int(doc: Mapping[str, Any], key: str, lo: int, hi: int, where: Any, what: str = "invalid model config",
         label: str | None = None) -> int:
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ModelFormatError(f"{where}: {what} (key {label or repr(key)} must be an integer in [{lo:,}, {hi:,}], "
                               f"got {_short(value)})")
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def model_facts(cls: type, doc: Mapping[str, Any], where: Any) -> tuple[Any, int, int]:
    """(config, n_users, n_items) of a model document, every field checked (see the module docstring)."""
    if doc.get("model") != cls.model_name:
        raise ModelFormatError(f"{where}: holds a {doc.get('model')!r} model, not {cls.model_name}")
    raw = doc.get("config")
    if not isinstance(raw, dict):
        raise ModelFormatError(f"{where}: invalid model config (key 'config' must be an object, got {_short(raw)})")
    factors = raw.get("factors")
    if isinstance(factors, int) and not isinstance(factors, bool) and factors > MAX_FACTORS:
        raise ModelFormatError(f"{where}: invalid model config (key 'config.factors' is {factors:,}, "
                               f"more than {MAX_FACTORS:,})")
    try:
        config = cls.config_class.from_dict(raw)  # its own bounds are the same table (metricrec.limits)
    except (ConfigError, TypeError, ValueError, OverflowError) as exc:
        raise ModelFormatError(f"{where}: invalid model config ({exc})") from None
    n_users, n_items = _int(doc, "n_users", 0, MAX_ROWS, where), _int(doc, "n_items", 0, MAX_ROWS, where)
    for n, width in ((n_users, cls._user_width(config)), (n_items, config.factors)):
        if n * width * 8 > MAX_ARRAY_BYTES:
            raise ModelFormatError(f"{where}: {n:,} rows x {width} factors is more than a model may hold")
    check_history_doc(doc.get("history"), where)
    return config, n_users, n_items


def check_history_doc(doc: Any, where: Any) -> None:
    """Refuse a saved training history that :meth:`History.from_dict` could not rebuild exactly."""
    if doc is None:
        return
    if not isinstance(doc, dict) or not isinstance(doc.get("epochs", []), list):
        raise ModelFormatError(f"{where}: invalid history (key 'history' must be an object with a list of epochs)")
    for k, e in enumerate(doc.get("epochs") or []):
        key = f"history.epochs[{k}]"
        if not isinstance(e, dict) or not isinstance(e.get("valid") or {}, dict):
            raise ModelFormatError(f"{where}: invalid history (key {key!r} must be an object)")
        _int(e, "epoch", 1, 2**31, where, "invalid history", repr(f"{key}.epoch"))
        numbers = {n: v for n, v in e.items() if n not in ("epoch", "valid")}
        numbers.update({f"valid.{n}": v for n, v in (e.get("valid") or {}).items()})
        if "loss" not in e or "seconds" not in e:
            raise ModelFormatError(f"{where}: invalid history (key {key!r} lacks 'loss' or 'seconds')")
        bad = [n for n, v in numbers.items() if not _finite(v)]
        if bad:
            raise ModelFormatError(f"{where}: invalid history (key '{key}.{bad[0]}' must be a finite number, "
                                   f"got {_short(numbers[bad[0]])})")
    best = doc.get("best_epoch")
    if best is not None:
        _int(doc, "best_epoch", 1, 2**31, where, "invalid history", "'history.best_epoch'")
    if not isinstance(doc.get("stopped_early", False), bool):
        raise ModelFormatError(f"{where}: invalid history (key 'stopped_early' must be true or false)")


def check_specs(expected: Mapping[str, tuple[tuple[int | None, ...], str, bool]],
                specs: Mapping[str, Any], where: Any) -> None:
    """Compare array headers ``{name: (shape, dtype)}`` with ``{name: (shape, kinds, required)}``
    (None in a shape: any length up to :data:`MAX_ROWS`); refuse missing, unexpected or misshapen arrays."""
    for name, (shape, kinds, required) in expected.items():
        if name not in specs:
            if required:
                raise ModelFormatError(f"{where}: array {name!r} is missing")
            continue
        got, dtype = specs[name]
        fits = len(got) == len(shape) and all(g == s if s is not None else g <= MAX_ROWS for g, s in zip(got, shape))
        if not fits or dtype.kind not in kinds:
            want = tuple("n" if s is None else s for s in shape)
            raise ModelFormatError(f"{where}: array {name!r} has shape {tuple(got)} dtype {dtype}, expected "
                                   f"{want} {'float' if kinds == 'f' else 'integer'}")
    unexpected = sorted(set(specs) - set(expected))
    if unexpected:
        raise ModelFormatError(f"{where}: unexpected array {unexpected[0]!r} (not part of a {len(expected)}-array model)")


def check_model_arrays(cls: type, doc: dict[str, Any], specs: Mapping[str, Any], doc_where: Any,
                       where: Any) -> None:
    """The ``expect`` hook of :func:`~metricrec.serialization.load_model_files` for model class ``cls``:
    the document (at ``doc_where``) checked, then every array header (of the file ``where``) against
    the shapes it implies (nothing read yet)."""
    config, n_users, n_items = model_facts(cls, doc, doc_where)
    d = config.factors
    expected: dict[str, tuple[tuple[int | None, ...], str, bool]] = {
        "user_embeddings": ((n_users, cls._user_width(config)), "f", True),
        "item_embeddings": ((n_items, d), "f", True),
        "user_items.indptr": ((n_users + 1,), "iu", False), "user_items.indices": ((None,), "iu", False)}
    for name, shape in cls._expected_extra(doc, config, doc_where).items():
        expected[name] = (shape, "f", True)
    check_specs(expected, specs, where)


def read_run_doc(path: str | Path) -> dict[str, Any]:
    """A run's ``data.json`` (written by ``metricrec train``), checked: an object whose ``source`` is an
    object naming its kind, whose ``args``/``split``/``train_fingerprint`` are objects and whose
    ``sizes`` are counts. Raises :class:`ModelFormatError` naming the file and the key (also for a
    ``data.json`` that is a directory, a FIFO or a dangling link); ``FileNotFoundError`` when there is none."""
    path = Path(path)
    with open_regular(path, "a run document", ModelFormatError) as fh:  # never a directory or a FIFO
        if os.fstat(fh.fileno()).st_size > MAX_DOC_BYTES:
            raise ModelFormatError(f"{path}: larger than {MAX_DOC_BYTES:,} bytes: not a run document")
        raw = fh.read()
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ModelFormatError(f"{path}: not valid JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(doc, dict):
        raise ModelFormatError(f"{path}: expected a JSON object (the run's data description), got {type(doc).__name__}")
    source = doc.get("source", {})
    if not isinstance(source, dict) or source.get("kind", "file") not in _RUN_KINDS:
        raise ModelFormatError(f"{path}: key 'source' must be an object whose 'kind' is one of {', '.join(_RUN_KINDS)}")
    for key in ("args", "split", "train_fingerprint", "sizes"):
        if doc.get(key) is not None and not isinstance(doc[key], dict):
            raise ModelFormatError(f"{path}: key {key!r} must be an object, got {type(doc[key]).__name__}")
    for key, value in (doc.get("sizes") or {}).items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ModelFormatError(f"{path}: key 'sizes.{key}' must be a count, got {_short(value)}")
    for key, value in {**(doc.get("args") or {}), **source}.items():
        if isinstance(value, (dict, list)) or (isinstance(value, float) and not math.isfinite(value)):
            raise ModelFormatError(f"{path}: key {key!r} must be a plain value, got {_short(value)}")
    return doc
