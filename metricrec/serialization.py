"""Model files without pickle: named float arrays (.npz or safetensors) plus a JSON document.

Two layouts:

- a directory ``DIR/`` holding ``weights.npz`` (or ``weights.safetensors``) and ``config.json``;
- a single ``FILE.npz`` whose JSON document is stored as the uint8 array ``__metadata__``.

Every file is written to a temporary name and renamed into place, so a crash never leaves a
half-written model behind. Loading never unpickles anything (``np.load(..., allow_pickle=False)``)
and refuses files that are not metricrec models with :class:`ModelFormatError`.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

__all__ = ["ModelFormatError", "save_model_files", "load_model_files", "atomic_write_bytes", "atomic_write_json"]

FORMAT = "metricrec.model"
FORMAT_VERSION = 1
_META_KEY = "__metadata__"


class ModelFormatError(ValueError):
    """The file is not a readable metricrec model (corrupt, truncated or foreign)."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode("utf-8"))


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, **{k: np.ascontiguousarray(v) for k, v in arrays.items()})
    return buf.getvalue()


def save_model_files(path: str | os.PathLike, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any],
                     *, weights_format: str = "npz") -> Path:
    """Save named arrays and a JSON-serialisable ``meta`` document.

    Parameters
    ----------
    path : path
        A path ending in ``.npz`` gives the single-file layout; anything else is a directory.
    arrays : mapping of str to numpy.ndarray
    meta : mapping
        Stored as ``config.json`` (directory) or inside the npz; ``format`` keys are added.
    weights_format : {"npz", "safetensors"}
        Directory layout only.
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
    if weights_format == "npz":
        name, data = "weights.npz", _npz_bytes(arrays)
    elif weights_format == "safetensors":
        try:
            from safetensors.numpy import save as st_save
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("saving safetensors needs the 'safetensors' package: pip install metricrec[safetensors]") from exc
        name, data = "weights.safetensors", st_save({k: np.ascontiguousarray(v) for k, v in arrays.items()})
    else:
        raise ValueError(f"weights_format must be 'npz' or 'safetensors', got {weights_format!r}")
    doc["weights"] = name
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path / name, data)
    atomic_write_json(path / "config.json", doc)  # last: a directory with a config is complete
    return path


def load_model_files(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read what :func:`save_model_files` wrote; raise :class:`ModelFormatError` on anything else."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no model at {path}")
    if path.is_dir():
        cfg_path = path / "config.json"
        if not cfg_path.is_file():
            raise ModelFormatError(f"{path}: not a metricrec model directory (config.json is missing)")
        try:
            doc = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelFormatError(f"{cfg_path}: not valid JSON ({exc})") from None
        _check_doc(doc, cfg_path)
        name = doc.get("weights", "weights.npz")
        if name not in ("weights.npz", "weights.safetensors"):  # exact names: no path outside DIR
            raise ModelFormatError(f"{cfg_path}: unexpected weights file name {name!r}")
        weights = path / name
        if not weights.is_file():
            raise ModelFormatError(f"{path}: weights file {weights.name} is missing")
        arrays = _read_safetensors(weights) if weights.suffix == ".safetensors" else _read_npz(weights)
        return arrays, doc
    arrays = _read_npz(path)
    if _META_KEY not in arrays:
        raise ModelFormatError(f"{path}: an .npz without metricrec metadata (not a metricrec model)")
    raw = arrays.pop(_META_KEY)
    try:
        doc = json.loads(raw.astype(np.uint8).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFormatError(f"{path}: corrupt metadata ({exc})") from None
    _check_doc(doc, path)
    return arrays, doc


def _check_doc(doc: Any, where: Path) -> None:
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ModelFormatError(f"{where}: not a metricrec model (format is {doc.get('format') if isinstance(doc, dict) else None!r})")
    version = doc.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelFormatError(f"{where}: format_version {version!r} is not supported (this metricrec reads <= {FORMAT_VERSION})")


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):  # a bare .npy array, whatever the file name
            raise ModelFormatError(f"{path}: not an .npz archive (a single .npy array)")
        with z:
            return {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        if isinstance(exc, ModelFormatError):
            raise
        raise ModelFormatError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from None


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    try:
        from safetensors.numpy import load_file
    except ImportError as exc:  # pragma: no cover
        raise ImportError("reading safetensors needs the 'safetensors' package: pip install metricrec[safetensors]") from exc
    try:
        return dict(load_file(str(path)))
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise ModelFormatError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from None
