"""Model files without pickle: named arrays (.npz or safetensors) plus a JSON document.

Two layouts:

- a directory ``DIR/`` holding ``weights.npz`` (or ``weights.safetensors``) and ``config.json``;
- a single ``FILE.npz`` whose JSON document is stored as the uint8 array ``__metadata__``.

A directory is built beside its final place and swapped in whole, a single file written to a temp
name and renamed: a crash at any moment leaves the old complete model or the new one, never a mix
(see :mod:`metricrec._atomic`; its writers are re-exported here and are the package's only way of
writing files). Loading never unpickles anything, allocates nothing a file asks for before checking
it against the file and the model's document (:mod:`metricrec._array_files`), and refuses files
that are not metricrec models with :class:`ModelFormatError`.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from ._atomic import (atomic_directory, atomic_output, atomic_write_bytes, atomic_write_json, atomic_write_text,
                      recover, recovery_source, write_new_file)
from ._array_files import ArraySpec, npz_member_bytes, read_npz, read_safetensors
from ._file_kind import open_regular
from .errors import ModelFileError

__all__ = ["jsonable", "ModelFormatError", "save_model_files", "load_model_files", "atomic_write_bytes", "atomic_write_text",
           "atomic_write_json", "atomic_output", "atomic_directory", "recover"]

FORMAT = "metricrec.model"
FORMAT_VERSION = 1
_META_KEY = "__metadata__"
#: A model's JSON document larger than this is refused unread (id lists of 10^7 users fit well under it).
MAX_DOC_BYTES = 1 << 30
#: ``expect(doc, specs, doc_path, arrays_path)``: a model's check of its document and of its arrays'
#: declared shapes against it (the paths name the files in its messages).
Expect = Callable[[dict, Mapping[str, ArraySpec], Path, Path], None]
_MODEL_FILES = ("config.json", "weights.npz", "weights.safetensors")


class ModelFormatError(ModelFileError):
    """The file is not a readable metricrec model (corrupt, truncated or foreign); a ``ValueError``."""


# ---------------------------------------------------------------------- model files
def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.ascontiguousarray(v) for k, v in arrays.items()})
    return buf.getvalue()


def _weights_blob(arrays: Mapping[str, np.ndarray], weights_format: str) -> tuple[str, bytes]:
    if weights_format == "npz":
        return "weights.npz", _npz_bytes(arrays)
    if weights_format != "safetensors":
        raise ValueError(f"weights_format must be 'npz' or 'safetensors', got {weights_format!r}")
    try:
        from safetensors.numpy import save as st_save
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("saving safetensors needs the 'safetensors' package: pip install metricrec[safetensors]") from exc
    return "weights.safetensors", st_save({k: np.ascontiguousarray(v) for k, v in arrays.items()})


def _not_model_file(name: str) -> bool:
    """Entries of a model folder that a new save carries over (e.g. an ``index/`` folder)."""
    return name not in _MODEL_FILES and not (name.startswith(".") and name.endswith(".tmp"))


def save_model_files(path: str | os.PathLike, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any],
                     *, weights_format: str = "npz") -> Path:
    """Save named arrays and a JSON-serialisable ``meta`` document as one atomic unit.

    Parameters
    ----------
    path : path
        A path ending in ``.npz`` gives the single-file layout; anything else is a directory, built
        beside ``path`` and swapped in whole (:func:`atomic_directory`); entries of an existing model
        directory other than the model files (e.g. ``index/``) are carried over.
    arrays : mapping of str to numpy.ndarray
    meta : mapping
        Stored as ``config.json`` (directory) or inside the npz; ``format`` keys are added.
    weights_format : {"npz", "safetensors"}
        Directory layout only.

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, **dict(meta)}
    if path.suffix == ".npz":
        payload = dict(arrays)
        payload[_META_KEY] = np.frombuffer(json.dumps(doc).encode("utf-8"), dtype=np.uint8)
        atomic_write_bytes(path, _npz_bytes(payload))
        return path
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path}: exists and is not a directory (use a directory or a .npz file name)")
    name, data = _weights_blob(arrays, weights_format)
    doc["weights"] = name
    if path.is_dir() and os.listdir(path) and not (path / "config.json").is_file():
        raise ValueError(f"{path}: a folder that is not a metricrec model (no config.json); "
                         "save to a new or empty folder")
    with atomic_directory(path, keep=_not_model_file) as tmp:
        write_new_file(tmp / name, data, sync=False)
        write_new_file(tmp / "config.json", (json.dumps(doc, indent=2) + "\n").encode("utf-8"), sync=False)
    return path


def load_model_files(path: str | os.PathLike, expect: Expect | None = None, *,
                     doc_only: bool = False) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read what :func:`save_model_files` wrote; raise :class:`ModelFormatError` on anything else.

    Nothing is allocated on a file's word: the JSON document is read first (at most
    :data:`MAX_DOC_BYTES`), then every array header (:mod:`metricrec._array_files`: dtype, shape,
    sizes against the file), then ``expect`` -- the model's own check of the
    shapes its document implies -- and only then the arrays.

    Only regular files are opened (:mod:`metricrec._file_kind`): a ``config.json`` or weights file that
    is a directory, a FIFO (never waited on), a device or a dangling link is a :class:`ModelFormatError`
    saying so; a ``path`` that is a dangling link is as missing as no file (``FileNotFoundError``).

    Both files of a directory are read through one open handle of the folder, so a save swapping a
    new folder in meanwhile never yields a mix. While ``path`` is missing after an interrupted
    two-rename swap, the complete copy that save left is read (nothing is changed on disk).

    Parameters
    ----------
    path : path
    expect : callable, optional
        ``expect(doc, specs, doc_path, arrays_path)`` with ``specs`` ``{name: (shape, dtype)}``; raises
        :class:`ModelFormatError` to refuse the file before its arrays are read.
    doc_only : bool
        Return ``({}, doc)`` without reading any array.
    """
    path = Path(path)
    for attempt in range(3):
        source = path if os.path.lexists(path) else recovery_source(path)
        if source is None:
            break
        if not source.is_dir():
            return _read_single(source, expect, doc_only)
        try:
            fd = os.open(source, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except FileNotFoundError:
            continue
        try:
            seen = os.fstat(fd)
            return _read_dir(fd, path, expect, doc_only)
        except (ModelFormatError, OSError):
            if attempt == 2 or not _replaced(source, seen):
                raise
        finally:
            os.close(fd)
    raise FileNotFoundError(f"no model at {path}")


def _replaced(path: Path, seen: os.stat_result) -> bool:
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return True
    return (now.st_ino, now.st_dev) != (seen.st_ino, seen.st_dev)


def _parse_doc(raw: bytes, where: Path, what: str = "not valid JSON") -> dict[str, Any]:
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ModelFormatError(f"{where}: {what} ({type(exc).__name__}: {exc})") from None
    _check_doc(doc, where)
    return doc


def _read_dir(folder_fd: int, path: Path, expect: Expect | None,
              doc_only: bool) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    cfg_path = path / "config.json"
    try:
        with open_regular("config.json", "a model document", ModelFormatError, dir_fd=folder_fd,
                          where=cfg_path) as fh:
            if os.fstat(fh.fileno()).st_size > MAX_DOC_BYTES:
                raise ModelFormatError(f"{cfg_path}: larger than {MAX_DOC_BYTES:,} bytes: not a model document")
            raw = fh.read()
    except FileNotFoundError:
        raise ModelFormatError(f"{path}: not a metricrec model directory (config.json is missing)") from None
    doc = _parse_doc(raw, cfg_path)
    if doc_only:
        return {}, doc
    name = doc.get("weights", "weights.npz")
    if name not in ("weights.npz", "weights.safetensors"):  # exact names: no path outside DIR
        raise ModelFormatError(f"{cfg_path}: unexpected weights file name {name!r}")
    try:
        fh = open_regular(name, "a weights file", ModelFormatError, dir_fd=folder_fd, where=path / name)
    except FileNotFoundError:
        raise ModelFormatError(f"{path}: weights file {name} is missing") from None
    check = None if expect is None else (lambda specs: expect(doc, specs, cfg_path, path / name))
    with fh:
        if name.endswith(".safetensors"):
            return read_safetensors(fh, path / name, check, error=ModelFormatError), doc
        return read_npz(fh, path / name, check, error=ModelFormatError), doc


def _read_single(path: Path, expect: Expect | None,
                 doc_only: bool) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    if not path.exists():  # a dangling link: as missing as no file at all
        raise FileNotFoundError(f"no model at {path} (a symbolic link to {os.readlink(path)!r}, which does not exist)")
    with open_regular(path, "a model file or folder", ModelFormatError) as fh:
        raw = npz_member_bytes(fh, _META_KEY, path, limit=MAX_DOC_BYTES, error=ModelFormatError)
        if raw is None:
            raise ModelFormatError(f"{path}: an .npz without metricrec metadata (not a metricrec model)")
        doc = _parse_doc(raw, path, "corrupt metadata, not valid JSON")
        if doc_only:
            return {}, doc
        check = None if expect is None else (lambda specs: expect(doc, specs, path, path))
        return read_npz(fh, path, check, skip=(_META_KEY,), error=ModelFormatError), doc


def _check_doc(doc: Any, where: Path) -> None:
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ModelFormatError(f"{where}: not a metricrec model (format is {doc.get('format') if isinstance(doc, dict) else None!r})")
    version = doc.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelFormatError(f"{where}: format_version {version!r} is not supported (this metricrec reads <= {FORMAT_VERSION})")


def jsonable(obj: Any) -> Any:
    """``obj`` with numpy scalars and small arrays turned into plain JSON values (dict keys become
    strings; an array of more than 100 values becomes a short description; anything else its text)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist() if obj.size <= 100 else f"<array of {obj.size}>"
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)
