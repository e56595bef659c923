"""The serving cache: an immutable copy of a model, with its tables as raw ``.npy`` files that every
worker of ``metricrec serve --workers N`` maps into memory (one copy in RAM, whatever N).

A **snapshot** is a folder named by the digest of the model's files::

    CACHE/<digest>/model/...          the model's files as read (config.json, weights, index/)
    CACHE/<digest>/tables/<name>.npy  user, item, item_sq, indptr, indices, liked_data,
                                      user_sorted, user_order, item_json
    CACHE/<digest>/manifest.json      the digest, each table's shape, dtype and sha256

:func:`prepare_snapshot` reads the model folder through one handle of it (a save swapping a new
folder in meanwhile never yields a mix), hashes what it read, and reuses ``CACHE/<digest>`` when it
exists and its tables still match their recorded sha256; otherwise it loads the model from the copy
(every check of :func:`~metricrec.models.load_model` and the index's stale check), writes the
tables and renames the folder into place, complete or not at all. The model format is unchanged:
the cache is the serving layer's own, and can be deleted at any time.

:func:`load_snapshot` loads the copy and replaces the model's tables by memory maps of the
``.npy`` files (``mmap_mode="c"``: pages shared with every other process mapping the file, a write
-- which serving never does -- would stay private instead of corrupting the file); the private copy
the load made is freed. :class:`~metricrec.serving.fastpath.FastTables` reads the same maps.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SNAPSHOT_FORMAT", "load_snapshot", "prepare_snapshot", "read_model_source", "source_digest"]

SNAPSHOT_FORMAT = 1
#: Snapshots kept in a cache folder (the newest by use; the current one is never removed).
KEEP_SNAPSHOTS = 3


def _read_at(name: str, dir_fd: int) -> bytes | None:
    """A regular file's bytes (through ``dir_fd``), or None for anything else."""
    try:
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0), dir_fd=dir_fd)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 22)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        os.close(fd)


def _read_folder(path: Path, prefix: str, out: dict[str, bytes], *, index: bool) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        for name in sorted(os.listdir(fd)):
            if name.startswith("."):
                continue
            mode = os.stat(name, dir_fd=fd).st_mode
            if stat.S_ISREG(mode):
                data = _read_at(name, fd)
                if data is not None:
                    out[prefix + name] = data
            elif stat.S_ISDIR(mode) and index and name == "index" and not prefix:
                _read_folder(path / name, "index/", out, index=False)
    finally:
        os.close(fd)


def read_model_source(path: str | os.PathLike, *, index: bool = True) -> dict[str, bytes]:
    """The files of the model at ``path`` -- a model folder's top-level files (and ``index/`` when
    ``index``), or a single ``.npz`` file (and its ``FILE.index/``) -- as ``{relative name: bytes}``."""
    p = Path(path)
    out: dict[str, bytes] = {}
    if p.is_dir():
        _read_folder(p, "", out, index=index)
    else:
        out[p.name] = p.read_bytes()
        idx = p.with_suffix(".index")
        if index and idx.is_dir():
            sub: dict[str, bytes] = {}
            _read_folder(idx, "", sub, index=False)
            out.update({f"{idx.name}/{k}": v for k, v in sub.items()})
    return out


def source_digest(files: dict[str, bytes]) -> str:
    """sha256 of the files (names, sizes and contents, in name order)."""
    h = hashlib.sha256(f"metricrec-serving-snapshot-{SNAPSHOT_FORMAT}\n".encode())
    for name in sorted(files):
        h.update(f"{name}\0{len(files[name])}\0".encode("utf-8"))
        h.update(files[name])
    return h.hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _model_entry(snap: Path, files: dict[str, bytes] | None = None) -> Path:
    """The path to load inside ``snap/model``: the folder itself, or the single ``.npz`` file."""
    names = sorted(files) if files is not None else sorted(p.name for p in (snap / "model").iterdir())
    single = [n for n in names if n.endswith(".npz") and "/" not in n]
    if single and not any(n == "config.json" for n in names):
        return snap / "model" / single[0]
    return snap / "model"


def _valid(snap: Path, digest: str) -> bool:
    """A snapshot folder that is complete and whose tables still match their recorded sha256."""
    try:
        manifest = json.loads((snap / "manifest.json").read_text())
        if manifest.get("format") != SNAPSHOT_FORMAT or manifest.get("digest") != digest:
            return False
        return all(_file_sha256(snap / "tables" / f"{name}.npy") == spec["sha256"]
                   for name, spec in manifest["tables"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _table_arrays(model: Any) -> dict[str, np.ndarray]:
    """The arrays a snapshot keeps as ``.npy`` (those the model has)."""
    from .fastpath import FastTables, fast_path_supported

    try:
        user, item = model._fitted()  # noqa: SLF001 - the model's tables, to share them
    except Exception:  # noqa: BLE001 - a model without embedding tables: nothing to share
        return {}
    if user.device.type != "cpu":
        return {}
    out = {"user": model.user_embeddings, "item": model.item_embeddings}
    liked = getattr(model, "user_items", None)
    if liked is not None:
        out.update(indptr=liked.indptr, indices=liked.indices, liked_data=liked.data)
    if fast_path_supported(model):
        out.update(FastTables.arrays_of(model))
    return out


def prepare_snapshot(path: str | os.PathLike, cache: str | os.PathLike, *, exact: bool,
                     loader: Any) -> tuple[str, Path]:
    """The snapshot of the model at ``path`` in folder ``cache``: (digest, folder).

    ``loader(model_path) -> model`` loads (and checks) the copy before the folder is put in place;
    any failure leaves no snapshot behind and propagates.
    """
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    files = read_model_source(path, index=not exact)
    if not files:
        raise FileNotFoundError(f"no model at {path}")
    digest = source_digest(files)
    snap = cache / digest[:40]
    if _valid(snap, digest):
        os.utime(snap)
        return digest, snap
    tmp = cache / f".{digest[:40]}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for name, data in files.items():
            target = tmp / "model" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        del files
        entry = _model_entry(tmp)
        try:
            model = loader(str(entry))
        except BaseException as exc:  # the message names the model, not the cache's copy of it
            _rename_in(exc, str(entry), str(path))
            raise
        arrays = _table_arrays(model)
        kind = getattr(getattr(model, "user_map", None), "kind", None)
        distance = getattr(model, "distance", None)
        del model
        (tmp / "tables").mkdir()
        specs = {}
        for name, arr in arrays.items():
            target = tmp / "tables" / f"{name}.npy"
            np.save(target, np.ascontiguousarray(arr), allow_pickle=False)
            specs[name] = {"shape": list(arr.shape), "dtype": str(arr.dtype), "sha256": _file_sha256(target)}
        manifest = {"format": SNAPSHOT_FORMAT, "digest": digest, "source": str(path), "created": time.time(),
                    "user_kind": kind, "distance": distance, "tables": specs}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        try:
            os.rename(tmp, snap)
        except OSError:  # another process put the same snapshot there first: use that one
            if not _valid(snap, digest):
                shutil.rmtree(snap, ignore_errors=True)
                os.rename(tmp, snap)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _prune(cache, keep=snap)
    return digest, snap


def _rename_in(exc: BaseException, old: str, new: str) -> None:
    """Replace the path ``old`` by ``new`` in an exception's message (its args, and an OSError's file names)."""
    with contextlib.suppress(Exception):
        exc.args = tuple(a.replace(old, new) if isinstance(a, str) else a for a in exc.args)
        if isinstance(exc, OSError):
            for attr in ("filename", "filename2"):
                value = getattr(exc, attr, None)
                if isinstance(value, str):
                    setattr(exc, attr, value.replace(old, new))


def _prune(cache: Path, keep: Path) -> None:
    """Remove all but the :data:`KEEP_SNAPSHOTS` most recently used snapshots (never ``keep``).
    Workers still mapping a removed one keep their pages (an unlinked file lives while mapped)."""
    try:
        snaps = sorted((p for p in cache.iterdir() if p.is_dir() and not p.name.startswith(".")),
                       key=lambda p: p.stat().st_mtime, reverse=True)
    except OSError:
        return
    for old in snaps[KEEP_SNAPSHOTS:]:
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)


def load_snapshot(snap: str | os.PathLike, *, loader: Any) -> tuple[Any, Any]:
    """(model, :class:`~metricrec.serving.fastpath.FastTables` or None) of a snapshot folder: the
    model loaded from its copy by ``loader(path)``, its tables replaced by memory maps of the
    snapshot's ``.npy`` files."""
    from .fastpath import FastTables, fast_path_supported

    snap = Path(snap)
    manifest = json.loads((snap / "manifest.json").read_text())
    model = loader(str(_model_entry(snap)))
    arrays = {}
    for name, spec in manifest["tables"].items():
        arr = np.load(snap / "tables" / f"{name}.npy", mmap_mode="c", allow_pickle=False)
        if list(arr.shape) != spec["shape"] or str(arr.dtype) != spec["dtype"]:
            raise ValueError(f"{snap}: table {name} does not match its manifest")
        arrays[name] = arr
    _share_tables(model, arrays)
    tables = None
    if fast_path_supported(model) and "item_json" in arrays:
        names = ("user", "item", "item_sq", "indptr", "indices", "user_sorted", "user_order", "item_json")
        tables = FastTables.from_arrays({k: arrays[k] for k in names if k in arrays},
                                        user_kind=manifest.get("user_kind"), distance=model.distance)
    return model, tables


def _share_tables(model: Any, arrays: dict[str, np.ndarray]) -> None:
    """Point the model's tables (and liked items) at the mapped arrays, when they hold the same shapes."""
    if "user" not in arrays:
        return
    import scipy.sparse as sp
    import torch

    user, item = model._fitted()  # noqa: SLF001
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if tuple(user.shape) == arrays["user"].shape and tuple(item.shape) == arrays["item"].shape:
            model._user = torch.from_numpy(arrays["user"])  # noqa: SLF001 - the same values, shared pages
            model._item = torch.from_numpy(arrays["item"])  # noqa: SLF001
    if "item_sq" in arrays and hasattr(model, "_item_sq"):
        model._item_sq = arrays["item_sq"]  # noqa: SLF001 - the cache of |v|^2, as the model computed it
    liked = getattr(model, "user_items", None)
    if liked is not None and "indptr" in arrays:
        m = sp.csr_matrix((arrays["liked_data"], arrays["indices"], arrays["indptr"]), shape=liked.shape, copy=False)
        if m.nnz == liked.nnz:
            m.has_sorted_indices = liked.has_sorted_indices
            model.user_items = m
