"""The manifest of a split folder (``split.json``) and its id lists (``users.csv``, ``items.csv``).

:func:`metricrec.data.split_files.write_split` writes five CSV files and the manifest into one folder,
swapped in as one unit. The manifest lists every file with its size and sha256 (and the pair or id
count), so that :func:`metricrec.data.split_files.read_split` refuses parts that are not the ones
written together (edited, or copied from another split), and the id lists keep the split's whole id
universe -- users and items without a training pair included -- in its order.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from .._file_kind import irregular
from ..errors import DataError
from ..fingerprint import file_sha256
from .columns import id_column
from .delimited import REGULAR, read_columns
from .ids import IdIndex

__all__ = ["MANIFEST", "FORMAT", "ID_FILES", "file_entry", "read_manifest", "check_files", "read_id_list"]

MANIFEST = "split.json"
FORMAT = "metricrec split"
VERSION = 1
#: role -> (file name, header)
ID_FILES = {"users": ("users.csv", "user"), "items": ("items.csv", "item")}
_MAX_MANIFEST_BYTES = 1 << 20


def file_entry(name: str, data: bytes, **counts: int) -> dict[str, Any]:
    """A manifest entry: the file's name, size, sha256 and counts."""
    return {"file": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), **counts}


def read_manifest(path: Path) -> dict[str, Any]:
    """A split folder's ``split.json``, checked as a schema (one :class:`DataError` naming the key)."""
    try:
        if path.stat().st_size > _MAX_MANIFEST_BYTES:
            raise DataError(f"{path}: larger than {_MAX_MANIFEST_BYTES:,} bytes: not a split manifest")
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise DataError(f"{path}: not valid JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise DataError(f"{path}: not a split manifest (expected an object with format {FORMAT!r})")
    if doc.get("version") != VERSION:
        raise DataError(f"{path}: split manifest version {doc.get('version')!r}, this metricrec reads {VERSION}")
    for role in ("train", "valid", "test", "users", "items"):
        entry = doc.get("files", {}).get(role) if isinstance(doc.get("files"), dict) else None
        ok = isinstance(entry, dict) and isinstance(entry.get("file"), str) and "/" not in entry["file"] \
            and isinstance(entry.get("bytes"), int) and isinstance(entry.get("sha256"), str)
        if not ok:
            raise DataError(f"{path}: key 'files.{role}' must be an object with file, bytes and sha256")
    return doc


def check_files(folder: Path, manifest: dict[str, Any], where: Path) -> None:
    """Refuse files of ``folder`` that are not the ones ``manifest`` lists (size, then sha256)."""
    for role, entry in manifest["files"].items():
        path = folder / entry["file"]
        try:
            problem = irregular(path, REGULAR)  # by os.stat: a FIFO is never opened (or hashed)
        except FileNotFoundError:
            problem = "missing"
        if problem is not None:
            raise DataError(f"{path}: {problem}; {where} lists it as the {role} file of this split")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise DataError(f"{path}: {size:,} bytes, but {where} lists {entry['bytes']:,}: this file was changed "
                            "or comes from another split; write the split again ('metricrec data split')")
        if file_sha256(path) != entry["sha256"]:
            raise DataError(f"{path}: its sha256 differs from the one {where} lists: this file was changed or "
                            "comes from another split; write the split again ('metricrec data split')")


def read_id_list(path: Path, role: str) -> IdIndex:
    """The ids of ``users.csv`` or ``items.csv`` (header ``user`` / ``item``), in file order."""
    header = ID_FILES[role][1]
    t = read_columns(path, {"id": header}, sep=",", header=True, quoting=True, allow_empty=True, what="ids")
    ids = id_column(t, "id", header) if t.n_rows else np.zeros(0, dtype=np.int64)
    try:
        return IdIndex(ids, name=header)
    except (ValueError, TypeError) as exc:
        raise DataError(f"{path}: {exc}") from None
