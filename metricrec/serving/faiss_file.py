"""The layout of an ``index.faiss`` file checked before faiss reads it: nothing allocated on its word.

``faiss.read_index`` trusts the sizes a file declares: a vector's length is read, the vector is
allocated (and zero-filled) at that length, and only then is the data read -- so a 100 KB file that
declares a 3 GB neighbour list costs 3 GB before faiss notices the file is short. The sha256 in
``index.json`` does not help (whoever writes one file can write both). :func:`check_index_file`
walks the file the way faiss' ``index_read.cpp`` does for the three kinds metricrec writes, reading
only the scalars and the length of every array and seeking over the arrays' data, and refuses with
one :class:`~metricrec.errors.ModelFileError` naming the file and the field unless

- the file is an ``IndexFlat`` (``IxF2``/``IxFI``), an ``IndexHNSWFlat`` (``IHNf``, with a flat
  storage) or an ``IndexIVFFlat`` (``IwFl``, with a flat quantiser and array inverted lists),
  the kind ``index.json`` names, for its metric (L2 or inner product);
- every index header holds the model's dimension ``d`` and its ``n_items`` vectors (the quantiser
  of an IVF index its ``nlist`` centroids);
- every array lies within the bytes left in the file and has the length the other fields imply
  (flat codes ``ntotal x d`` floats; HNSW levels ``ntotal``, offsets ``ntotal + 1``, neighbours as
  many as the last offset says, at most :data:`MAX_HNSW_LEVELS` levels; IVF list sizes summing to
  ``ntotal`` with ``d`` floats and one id each);
- the walk ends exactly at the end of the file.

So faiss then allocates at most about what the file itself holds. The check reads a few hundred bytes
(plus the IVF list sizes, ``8 x nlist`` bytes) whatever the size of the file.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .._file_kind import open_regular
from ..errors import ModelFileError
from ..limits import MAX_FACTORS, MAX_ROWS

__all__ = ["MAX_HNSW_LEVELS", "check_index_file"]

#: Most levels an HNSW graph may declare (faiss draws a level with probability m^-l: 2^31 nodes at
#: m = 2 reach level 31; faiss itself stops its level table at probability 1e-9).
MAX_HNSW_LEVELS = 64
_FLAT = {b"IxF2": "l2", b"IxFI": "ip"}
_TOP = {"flat": tuple(_FLAT), "hnsw": (b"IHNf",), "ivf": (b"IwFl",)}
_METRIC_TYPES = {0: "ip", 1: "l2"}  # faiss' METRIC_INNER_PRODUCT, METRIC_L2
_DIRECT_MAPS = {0: "no map", 1: "array", 2: "hashtable"}


class _Walk:
    """A cursor over the file: scalars read, arrays' lengths checked against the bytes left and skipped."""

    def __init__(self, fh: BinaryIO, size: int, path: Path) -> None:
        self.fh, self.size, self.path = fh, size, path

    @property
    def left(self) -> int:
        return self.size - self.fh.tell()

    def bad(self, why: str) -> ModelFileError:
        return ModelFileError(f"{self.path}: not a faiss index metricrec can use ({why}; rebuild it with "
                              "'metricrec index')")

    def take(self, n: int, what: str) -> bytes:
        raw = self.fh.read(n)
        if len(raw) != n:
            raise self.bad(f"ends inside {what} at byte {self.size:,}")
        return raw

    def scalar(self, fmt: str, what: str) -> Any:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt), what))[0]

    def array(self, item: int, what: str, expect: int | None = None, *, skip: bool = True) -> int:
        """The length of the array ``what`` (items of ``item`` bytes) after checking it against the
        bytes left (and ``expect``); its data skipped (``skip``) or left to be read by the caller."""
        count = self.scalar("Q", f"the length of {what}")
        if count * item > self.left:
            raise self.bad(f"{what}: {count:,} items ({count * item:,} bytes) declared, but only {self.left:,} "
                           f"bytes follow in a file of {self.size:,}")
        if expect is not None and count != expect:
            raise self.bad(f"{what}: {count:,} items, {expect:,} expected")
        if skip:
            self.fh.seek(count * item, os.SEEK_CUR)
        return count


def _header(w: _Walk, where: str, d: int, ntotal: int, metric: str) -> None:
    """faiss' ``read_index_header``: d, ntotal, two unused words, is_trained, metric type."""
    got_d = w.scalar("i", f"{where} d")
    got_n = w.scalar("q", f"{where} ntotal")
    w.take(16, f"{where} header")
    w.take(1, f"{where} is_trained")
    metric_type = w.scalar("i", f"{where} metric type")
    if not 1 <= got_d <= MAX_FACTORS or got_d != d:
        raise w.bad(f"{where} has dimension {got_d:,}, the model's vectors have {d:,}")
    if not 0 <= got_n <= MAX_ROWS or got_n != ntotal:
        raise w.bad(f"{where} holds {got_n:,} vectors, {ntotal:,} expected")
    if _METRIC_TYPES.get(metric_type) != metric:
        raise w.bad(f"{where} has metric type {metric_type}, expected {'L2' if metric == 'l2' else 'inner product'}")


def _flat(w: _Walk, where: str, d: int, ntotal: int, metric: str) -> None:
    """An ``IndexFlat``: its fourcc, header and ``ntotal x d`` float codes."""
    fourcc = w.take(4, f"{where} type")
    if fourcc not in _FLAT:
        raise w.bad(f"{where} is of faiss type {fourcc!r}, not a flat index")
    _header(w, where, d, ntotal, metric)
    w.array(4, f"{where} vectors", ntotal * d)


def _hnsw(w: _Walk, d: int, ntotal: int, metric: str) -> None:
    """An ``IndexHNSWFlat``: header, graph (``read_HNSW``), then its flat storage."""
    _header(w, "the HNSW index", d, ntotal, metric)
    levels = w.array(8, "the HNSW level probabilities")
    if levels > MAX_HNSW_LEVELS:
        raise w.bad(f"the HNSW graph declares {levels:,} levels, more than {MAX_HNSW_LEVELS}")
    w.array(4, "the HNSW neighbours per level", levels + 1)
    w.array(4, "the HNSW node levels", ntotal)
    w.array(8, "the HNSW offsets", ntotal + 1, skip=False)
    w.fh.seek(8 * ntotal, os.SEEK_CUR)
    last = w.scalar("Q", "the last HNSW offset")
    w.array(4, "the HNSW neighbour lists", last)
    entry, max_level = w.scalar("i", "the HNSW entry point"), w.scalar("i", "the HNSW top level")
    w.take(12, "the HNSW search parameters")
    if not -1 <= entry < max(ntotal, 1) or not -1 <= max_level < max(levels, 1):
        raise w.bad(f"the HNSW entry point {entry} or top level {max_level} is outside the graph")
    _flat(w, "the HNSW storage", d, ntotal, metric)


def _ivf(w: _Walk, d: int, ntotal: int, metric: str, nlist: Any) -> None:
    """An ``IndexIVFFlat``: header, nlist, nprobe, flat quantiser, direct map, array inverted lists."""
    _header(w, "the IVF index", d, ntotal, metric)
    got = w.scalar("Q", "the IVF nlist")
    w.scalar("Q", "the IVF nprobe")
    if not 1 <= got <= max(ntotal, 1) or (isinstance(nlist, int) and got != nlist):
        raise w.bad(f"the IVF index declares {got:,} lists, index.json {nlist!r} (for {ntotal:,} vectors)")
    _flat(w, "the IVF quantiser", d, got, metric)
    kind = w.scalar("B", "the IVF direct map type")
    if kind not in _DIRECT_MAPS:
        raise w.bad(f"the IVF direct map has unknown type {kind}")
    w.array(8, "the IVF direct map", ntotal if kind == 1 else 0)
    if kind == 2:
        if w.array(16, "the IVF direct map table") > ntotal:
            raise w.bad("the IVF direct map table holds more entries than vectors")
    lists = w.take(4, "the IVF inverted lists type")
    if lists != b"ilar":
        raise w.bad(f"the IVF inverted lists are of faiss type {lists!r}, not array lists")
    if w.scalar("Q", "the IVF list count") != got or w.scalar("Q", "the IVF code size") != 4 * d:
        raise w.bad(f"the IVF inverted lists are not {got:,} lists of {d}-float codes")
    layout = w.take(4, "the IVF list sizes type")
    if layout == b"full":
        w.array(8, "the IVF list sizes", got, skip=False)
        sizes = np.frombuffer(w.take(8 * got, "the IVF list sizes"), dtype="<u8")  # 8 bytes each, as in the file
    elif layout == b"sprs":  # (list, size) pairs of the non-empty lists
        count = w.array(8, "the IVF list sizes", skip=False)
        pairs = np.frombuffer(w.take(8 * count, "the IVF list sizes"), dtype="<u8")
        if count % 2 or (pairs[0::2] >= got).any():
            raise w.bad("the IVF sparse list sizes name lists that do not exist")
        sizes = pairs[1::2]
    else:
        raise w.bad(f"the IVF list sizes are of unknown layout {layout!r}")
    if (sizes > ntotal).any():  # each first, so that the sum below cannot wrap around
        raise w.bad(f"an IVF list holds {int(sizes.max()):,} vectors, more than the {ntotal:,} of the index")
    if int(sizes.sum()) != ntotal:
        raise w.bad(f"the IVF lists hold {int(sizes.sum()):,} vectors, {ntotal:,} expected")
    if ntotal * (4 * d + 8) != w.left:
        raise w.bad(f"the IVF lists need {ntotal * (4 * d + 8):,} bytes, {w.left:,} follow")
    w.fh.seek(0, os.SEEK_END)


def check_index_file(path: str | os.PathLike, *, kind: str, n_items: int, d: int, metric: str,
                     params: dict[str, Any] | None = None) -> None:
    """Refuse an ``index.faiss`` whose layout is not that of the index ``index.json`` describes.

    Parameters
    ----------
    path : path
        The ``index.faiss`` file (a directory, a FIFO or a device is refused before it is opened).
    kind : {"flat", "hnsw", "ivf"}
        The kind ``index.json`` names.
    n_items, d : int
        The model's item count and dimension (checked against ``index.json`` already).
    metric : {"l2", "ip"}
    params : dict, optional
        The index's parameters from ``index.json`` (an IVF index's ``nlist`` is checked against the file).

    Raises
    ------
    ModelFileError
        Naming the file and the first field that does not fit (see the module docstring); nothing
        larger than a few scalars (and an IVF index's list sizes) is read.
    """
    path = Path(path)
    if kind not in _TOP:
        raise ModelFileError(f"{path}: unknown index kind {kind!r}")
    with open_regular(path, "an index file", ModelFileError) as fh:
        w = _Walk(fh, os.fstat(fh.fileno()).st_size, path)
        fourcc = w.take(4, "the index type")
        if fourcc not in _TOP[kind]:
            raise w.bad(f"its faiss type is {fourcc!r}, index.json says a {kind} index")
        if kind == "flat":
            fh.seek(0)
            _flat(w, "the flat index", d, n_items, metric)
        elif kind == "hnsw":
            _hnsw(w, d, n_items, metric)
        else:
            _ivf(w, d, n_items, metric, (params or {}).get("nlist"))
        if w.left:
            raise w.bad(f"{w.left:,} bytes follow the index")
