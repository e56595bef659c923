"""Approximate nearest-neighbour indexes over a model's item table (faiss-cpu, extra ``ann``).

CML is a true Euclidean metric, so exact L2 indexes apply directly: a user's top-N items are its
N nearest item vectors. Three kinds:

``"flat"``
    ``IndexFlatL2``: exact, brute force (the reference, and for tests).
``"hnsw"``
    ``IndexHNSWFlat``: a navigable small-world graph; parameters ``m`` (links per node),
    ``ef_construction`` and ``ef_search`` (beam widths when building and searching).
``"ivf"``
    ``IndexIVFFlat`` over an ``IndexFlatL2`` coarse quantiser: ``nlist`` k-means cells (trained on
    the table, or on a sample of ``train_size`` rows of it), ``nprobe`` cells searched per query.

For a model that scores by inner product (``distance == "dot"``, e.g. BPR) the same kinds are
built with ``METRIC_INNER_PRODUCT``: :meth:`AnnIndex.search` then returns inner products, best
(largest) first, instead of squared distances, smallest first. ``AnnIndex.metric`` says which.

An index is saved to a directory as ``index.faiss`` (faiss' own format) and ``index.json`` (kind,
parameters, table shape, distance, and the sha256 of the item table and of ``index.faiss``),
swapped in as one unit; it is loaded only against the same item table, so a stale index is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from .._file_kind import not_a_folder, open_regular
from ..errors import ConfigError, ModelFileError
from ..serialization import atomic_directory, atomic_output, atomic_write_json
from .faiss_file import check_index_file

__all__ = ["AnnIndex", "KINDS", "INDEX_DIR", "index_dir_for", "load_index_for", "table_digest"]

#: Index kinds :meth:`AnnIndex.build` knows.
KINDS = ("flat", "hnsw", "ivf")
#: Name of the index directory beside a model directory (``DIR/index/``).
INDEX_DIR = "index"
_FORMAT, _VERSION = "metricrec.ann", 1
_INDEX_FILE, _META_FILE = "index.faiss", "index.json"
#: ``ef_construction`` 40: over 1,000,000 items (d = 100, the mixture of benchmarks/ann.py) the graph
#: builds in 203 s on 2 threads where 100 took 1,509 s and 200 about twice that, with recall@10 0.968 at
#: ef_search 64 and 0.988 at the default 128 (100,000 items: 0.998 at 128).
_HNSW_DEFAULTS = {"m": 32, "ef_construction": 40, "ef_search": 128}
#: The largest ``index.json`` read (it holds a few hundred bytes).
_MAX_META_BYTES = 1 << 20


def _faiss():
    try:
        import faiss
    except ImportError as exc:
        raise ImportError("approximate retrieval needs faiss: pip install metricrec[ann]") from exc
    return faiss


def table_digest(table: np.ndarray) -> str:
    """sha256 (hex) of a float32 table's shape and bytes: what an index was built from."""
    arr = np.ascontiguousarray(table, dtype=np.float32)
    h = hashlib.sha256(f"{arr.shape[0]}x{arr.shape[1]}:float32:".encode())
    h.update(memoryview(arr).cast("B"))
    return h.hexdigest()


def _metric_of(distance: str) -> str:
    if distance == "euclidean":
        return "l2"
    if distance == "dot":
        return "ip"
    raise ConfigError(f"distance must be 'euclidean' or 'dot', got {distance!r}")


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # not Linux: no measurement
        return 0


def _int_param(params: dict[str, Any], name: str, lo: int, hi: int | None = None) -> int:
    v = params[name]
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo or (hi is not None and v > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ConfigError(f"{name} must be an integer {bound}, got {v!r}")
    return int(v)


def _check_params(kind: str, n: int, params: dict[str, Any]) -> dict[str, Any]:
    """Complete and validate the parameters of ``kind`` for a table of ``n`` rows."""
    if kind == "flat":
        allowed: dict[str, Any] = {}
    elif kind == "hnsw":
        allowed = dict(_HNSW_DEFAULTS)
    elif kind == "ivf":
        nlist = params.get("nlist") or max(1, min(int(round(4 * math.sqrt(n))), n // 39))  # >= 39 rows a cell
        allowed = {"nlist": nlist, "nprobe": None, "train_size": None, "seed": 0}
    else:
        raise ConfigError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown {kind} index parameter(s) {', '.join(unknown)} "
                          f"(known: {', '.join(allowed) or 'none'})")
    out = {**allowed, **{k: v for k, v in params.items() if v is not None}}
    if kind == "hnsw":
        for name in ("m", "ef_construction", "ef_search"):
            out[name] = _int_param(out, name, 2 if name == "m" else 1)
    elif kind == "ivf":
        out["nlist"] = _int_param(out, "nlist", 1, n)
        out["nprobe"] = min(out["nlist"], max(1, out["nlist"] // 16)) if out["nprobe"] is None else out["nprobe"]
        out["nprobe"] = _int_param(out, "nprobe", 1, out["nlist"])
        ts = out["train_size"] if out["train_size"] is not None else min(n, 64 * out["nlist"])
        out["train_size"] = _int_param({"train_size": ts}, "train_size", out["nlist"], n)
        out["seed"] = _int_param(out, "seed", 0)
    return out


def _as_table(table: Any, name: str = "item_table") -> np.ndarray:
    arr = np.ascontiguousarray(table, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ConfigError(f"{name} must be a non-empty 2-D array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ConfigError(f"{name} contains NaN or infinite values")
    return arr


class AnnIndex:
    """A faiss index over an item table, with what it was built from.

    Build with :meth:`build`, load with :meth:`load`; query with :meth:`search`.

    Attributes
    ----------
    kind : {"flat", "hnsw", "ivf"}
    params : dict
        Complete build and search parameters (defaults filled in).
    distance : {"euclidean", "dot"}
        The model's distance; ``metric`` is ``"l2"`` or ``"ip"`` accordingly.
    n_items, d : int
    digest : str
        sha256 of the item table (:func:`table_digest`).
    build_seconds : float or None
        Wall seconds of :meth:`build` (None for a loaded index).
    build_memory_bytes : int or None
        Resident memory the build added (RSS after - before, Linux; None for a loaded index). It
        reads low when the allocator reuses memory freed earlier: :meth:`to_bytes` ``.size`` (the
        vectors plus the graph or the inverted lists) is the better measure of an index's size.
    """

    def __init__(self, index: Any, kind: str, params: dict[str, Any], distance: str, n_items: int, d: int,
                 digest: str, build_seconds: float | None = None, build_memory_bytes: int | None = None) -> None:
        self.index, self.kind, self.params = index, kind, params
        self.distance, self.metric = distance, _metric_of(distance)
        self.n_items, self.d, self.digest = n_items, d, digest
        self.build_seconds, self.build_memory_bytes = build_seconds, build_memory_bytes

    # ------------------------------------------------------------------ build
    @classmethod
    def build(cls, item_table: Any, kind: str = "hnsw", *, distance: str = "euclidean", **params: Any) -> "AnnIndex":
        """Build an index of ``kind`` over ``item_table`` (n_items, d).

        Parameters
        ----------
        item_table : array-like, shape (n_items, d)
            The model's item vectors (``model.item_embeddings``), copied as float32.
        kind : {"flat", "hnsw", "ivf"}
        distance : {"euclidean", "dot"}
            The model's ``distance``: L2 indexes for ``"euclidean"``, inner product for ``"dot"``.
        **params
            hnsw: ``m`` (32), ``ef_construction`` (40), ``ef_search`` (128). ivf: ``nlist``
            (round(4 sqrt(n)), at most n / 39), ``nprobe`` (nlist // 16), ``train_size`` (min(n, 64 nlist) rows
            sampled for k-means), ``seed`` (0).

        Returns
        -------
        AnnIndex
        """
        faiss = _faiss()
        table = _as_table(item_table)
        metric = _metric_of(distance)
        n, d = table.shape
        p = _check_params(kind, n, params)
        rss0, t0 = _rss_bytes(), time.perf_counter()
        index = _new_index(faiss, kind, d, p, faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT)
        if kind == "ivf":
            rng = np.random.default_rng(p["seed"])
            sample = table if p["train_size"] >= n else table[np.sort(rng.choice(n, p["train_size"], replace=False))]
            index.train(sample)
        index.add(table)
        seconds = time.perf_counter() - t0
        return cls(index, kind, p, distance, n, d, table_digest(table), seconds, max(0, _rss_bytes() - rss0))

    # ------------------------------------------------------------------ search
    def search(self, queries: Any, k: int, *, ef_search: int | None = None,
               nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest items of each query row.

        Parameters
        ----------
        queries : array-like, shape (n, d)
        k : int
        ef_search, nprobe : int, optional
            Override the saved search parameter for this call (hnsw / ivf); thread-safe.

        Returns
        -------
        distances : numpy.ndarray of float32, shape (n, k)
            Squared L2 distances, ascending (``metric == "l2"``), or inner products, descending
            (``"ip"``). Missing entries are ``inf`` (l2) or ``-inf`` (ip).
        ids : numpy.ndarray of int64, shape (n, k)
            Item rows; ``-1`` where fewer than ``k`` were found.
        """
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.d:
            raise ConfigError(f"queries must have shape (n, {self.d}), got {np.shape(queries)}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ConfigError(f"k must be a positive integer, got {k!r}")
        dist, ids = self.index.search(q, int(k), params=self._search_params(ef_search, nprobe))
        missing = ids < 0
        if missing.any():
            dist[missing] = np.inf if self.metric == "l2" else -np.inf
        return dist, ids.astype(np.int64, copy=False)

    def _search_params(self, ef_search: int | None, nprobe: int | None) -> Any:
        faiss = _faiss()
        if self.kind == "hnsw":
            ef = self.params["ef_search"] if ef_search is None else _int_param({"ef_search": ef_search}, "ef_search", 1)
            return faiss.SearchParametersHNSW(efSearch=ef)
        if self.kind == "ivf":
            nlist = self.params["nlist"]
            npr = self.params["nprobe"] if nprobe is None else _int_param({"nprobe": nprobe}, "nprobe", 1, nlist)
            return faiss.SearchParametersIVF(nprobe=npr)
        return None

    # ------------------------------------------------------------------ persistence
    def to_bytes(self) -> np.ndarray:
        """The faiss index serialised (uint8 array, faiss' own format)."""
        return _faiss().serialize_index(self.index)

    def save(self, path: str | os.PathLike) -> Path:
        """Write directory ``path`` as one atomic unit: ``index.faiss`` (``faiss.write_index`` to a
        temporary file, renamed) and ``index.json`` (the sidecar, holding the sha256 of the item
        table and of ``index.faiss``), built beside ``path`` and swapped in whole."""
        path = Path(path)
        if (what := not_a_folder(path)) is not None:  # a file, a FIFO, a device, a dangling link
            raise ConfigError(f"{path}: exists and {what}, not a directory")
        faiss = _faiss()
        with atomic_directory(path) as tmp:
            with atomic_output(tmp / _INDEX_FILE) as out:
                faiss.write_index(self.index, str(out))
            meta = {
                "format": _FORMAT, "format_version": _VERSION, "kind": self.kind, "params": self.params,
                "distance": self.distance, "metric": self.metric, "n_items": self.n_items, "d": self.d,
                "item_table_sha256": self.digest, "index_bytes": (tmp / _INDEX_FILE).stat().st_size,
                "index_sha256": _file_sha256(tmp / _INDEX_FILE),
                "build_seconds": self.build_seconds, "build_memory_bytes": self.build_memory_bytes,
            }
            atomic_write_json(tmp / _META_FILE, meta)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, item_table: Any = None, *, distance: str | None = None) -> "AnnIndex":
        """Load an index written by :meth:`save`.

        Parameters
        ----------
        path : path
            The index directory.
        item_table : array-like, optional
            The model's current item table: refused (:class:`ModelFileError`) unless it is the one
            the index was built from (same shape and sha256).
        distance : str, optional
            The model's distance: refused unless the index was built for it.

        Raises
        ------
        ModelFileError
            A stale index (another table or distance), an ``index.json`` or ``index.faiss`` that is
            not a regular file, or does not match, and an ``index.faiss`` whose layout is not that
            of the index ``index.json`` describes (:func:`~metricrec.serving.faiss_file.check_index_file`,
            checked before faiss reads it: nothing is allocated on the file's word).
        """
        path = Path(path)
        meta = _read_meta(path)
        _check_against(path, meta, item_table, distance)
        file = path / _INDEX_FILE
        if not os.path.lexists(file):
            raise ModelFileError(f"{path}: {_INDEX_FILE} is missing (rebuild with 'metricrec index')")
        if _file_sha256(file) != meta["index_sha256"]:  # a directory or a FIFO: refused before faiss opens it
            raise ModelFileError(f"{file}: does not match {_META_FILE} (corrupt or half-written; "
                                 "rebuild with 'metricrec index')")
        # faiss allocates every array at the length the file declares before reading it: the layout is
        # checked first, so that a small hostile file cannot make it allocate gigabytes (faiss_file)
        check_index_file(file, kind=meta["kind"], n_items=meta["n_items"], d=meta["d"],
                         metric=_metric_of(meta["distance"]), params=meta["params"])
        faiss = _faiss()
        try:
            index = faiss.read_index(str(file))
        except RuntimeError as exc:
            raise ModelFileError(f"{file}: faiss cannot read it ({str(exc).strip().splitlines()[-1]})") from None
        if index.ntotal != meta["n_items"] or index.d != meta["d"]:
            raise ModelFileError(f"{file}: holds {index.ntotal} x {index.d} vectors, {_META_FILE} says "
                                 f"{meta['n_items']} x {meta['d']}")
        return cls(index, meta["kind"], meta["params"], meta["distance"], meta["n_items"], meta["d"],
                   meta["item_table_sha256"])

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in self.params.items())
        tail = f", {params}" if params else ""
        return f"AnnIndex(kind={self.kind!r}, {self.n_items} x {self.d}, {self.metric}{tail})"


def _new_index(faiss: Any, kind: str, d: int, p: dict[str, Any], metric: int) -> Any:
    if kind == "flat":
        return faiss.IndexFlat(d, metric)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, p["m"], metric)
        index.hnsw.efConstruction = p["ef_construction"]
        index.hnsw.efSearch = p["ef_search"]
        return index
    index = faiss.IndexIVFFlat(faiss.IndexFlat(d, metric), d, p["nlist"], metric)  # the wrapper keeps the quantiser
    index.cp.seed = p["seed"]
    index.nprobe = p["nprobe"]
    return index


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open_regular(path, "an index file", ModelFileError) as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


_META_KEYS = {"kind": str, "params": dict, "distance": str, "n_items": int, "d": int, "item_table_sha256": str,
              "index_sha256": str}


def _read_meta(path: Path) -> dict[str, Any]:
    file = path / _META_FILE
    if not os.path.lexists(file):
        raise ModelFileError(f"{path}: not an ANN index directory ({_META_FILE} is missing)")
    try:
        with open_regular(file, "an index description", ModelFileError) as fh:  # never a FIFO
            raw = fh.read(_MAX_META_BYTES + 1)  # a few hundred bytes: never read without end
        if len(raw) > _MAX_META_BYTES:
            raise ModelFileError(f"{file}: more than {_MAX_META_BYTES:,} bytes: not an index description")
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ModelFileError(f"{file}: not valid JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise ModelFileError(f"{file}: not a metricrec ANN index")
    if not isinstance(meta.get("format_version"), int) or meta["format_version"] > _VERSION:
        raise ModelFileError(f"{file}: format_version {meta.get('format_version')!r} is not supported")
    for key, typ in _META_KEYS.items():
        if not isinstance(meta.get(key), typ) or isinstance(meta.get(key), bool):
            raise ModelFileError(f"{file}: field {key!r} is missing or not a {typ.__name__}")
    if meta["kind"] not in KINDS or meta["distance"] not in ("euclidean", "dot"):
        raise ModelFileError(f"{file}: unknown kind {meta['kind']!r} or distance {meta['distance']!r}")
    return meta


def _check_against(path: Path, meta: dict[str, Any], item_table: Any, distance: str | None) -> None:
    rebuild = "rebuild it with 'metricrec index'"
    if distance is not None and distance != meta["distance"]:
        raise ModelFileError(f"{path}: stale ANN index: built for distance {meta['distance']!r}, the model uses "
                             f"{distance!r}; {rebuild}")
    if item_table is None:
        return
    table = np.asarray(item_table)
    if table.ndim != 2 or table.shape != (meta["n_items"], meta["d"]):
        raise ModelFileError(f"{path}: stale ANN index: built for {meta['n_items']} x {meta['d']} items, the model "
                             f"has {' x '.join(map(str, table.shape))}; {rebuild}")
    if table_digest(table) != meta["item_table_sha256"]:
        raise ModelFileError(f"{path}: stale ANN index: the model's item vectors changed since it was built; {rebuild}")


def index_dir_for(model_path: str | os.PathLike) -> Path:
    """Where a model's index lives: ``DIR/index/`` for a model directory, ``FILE.index/`` beside a
    single-file ``FILE.npz`` model."""
    p = Path(model_path)
    if p.suffix == ".npz" and not p.is_dir():
        return p.with_suffix(".index")
    return p / INDEX_DIR


def load_index_for(model_path: str | os.PathLike, item_table: Any, distance: str | None = None) -> AnnIndex | None:
    """The index saved beside a model, checked against its item table; None when there is none.

    Raises :class:`ModelFileError` for a stale or corrupt index, ``ImportError`` (naming
    ``pip install metricrec[ann]``) when there is one but faiss is not installed.
    """
    d = index_dir_for(model_path)
    if not os.path.lexists(d / _META_FILE):  # a directory or a FIFO there is a damaged index: refused
        return None
    return AnnIndex.load(d, item_table=item_table, distance=distance)
