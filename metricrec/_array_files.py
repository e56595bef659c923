"""Named arrays read from ``.npz`` and ``.safetensors`` files, every size checked before anything is allocated.

A model or checkpoint file says how big its arrays are (an ``.npy`` header inside each zip member, the
JSON header of a safetensors file). ``numpy.load`` allocates what a header asks for and only then
finds out whether the data is there: a 2.5 KB file can ask for terabytes. Here the headers are read
first, without the data:

- ``.npz``: every member must be an ``.npy`` array (``numpy.lib.format.read_magic`` and
  ``read_array_header_1_0/2_0`` on the member's stream); its dtype must be a plain number or bool
  (never an object array: no pickle), its shape x item size must equal the member's uncompressed
  size, a stored member must not be larger than the archive holds and a compressed one must not
  expand more than :data:`MAX_EXPANSION` times;
- ``.safetensors``: the header length must fit the file, each tensor's ``data_offsets`` must lie
  inside the data section and span exactly shape x item size bytes.

Then the caller's ``check(specs)`` sees every array's (shape, dtype) -- what the model's own
``config.json`` says they must be -- and may refuse before a single array is read. Only then are the
arrays read, each allocating exactly the size already checked. Every failure is a
:class:`~metricrec.errors.ModelFileError` (or the ``error`` class the caller gives) naming the file
and the array.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zipfile
import zlib
from typing import Any, Callable, Mapping

import numpy as np

from .errors import ModelFileError

__all__ = ["ArraySpec", "MAX_EXPANSION", "read_npz", "read_safetensors", "npz_member_bytes"]

#: (shape, dtype) of an array in a file, as its header declares it.
ArraySpec = tuple[tuple[int, ...], np.dtype]
#: ``check(specs)``: raise to refuse the file before its arrays are read.
Check = Callable[[Mapping[str, ArraySpec]], None]

#: A compressed member may expand at most this many times (plain float tables hardly compress;
#: ``np.savez`` -- what metricrec writes -- stores members uncompressed).
MAX_EXPANSION = 64
#: Members this small may expand more (tiny arrays of zeros compress very well).
_SMALL = 1 << 20
_MAX_NPY_HEADER = 1 << 16
_MAX_ST_HEADER = 100 << 20
_KINDS = "biuf"
_ST_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
              "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?"}


def _nbytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    return math.prod(shape) * dtype.itemsize  # Python ints: no overflow


def _checked_dtype(dtype: Any, name: str, where: Any, error: type) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype.hasobject or dtype.kind not in _KINDS or dtype.itemsize == 0 or dtype.fields is not None:
        raise error(f"{where}: cannot read weights: array {name!r} has dtype {dtype}, not a plain number type")
    return dtype


def _checked_shape(shape: Any, name: str, where: Any, error: type) -> tuple[int, ...]:
    if not isinstance(shape, (tuple, list)) or len(shape) > 8 or any(
            isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in shape):
        raise error(f"{where}: cannot read weights: array {name!r} has an invalid shape {shape!r}")
    return tuple(shape)


# ---------------------------------------------------------------------- npz
def _npy_header(stream: Any, name: str, where: Any, error: type) -> tuple[tuple[int, ...], np.dtype, bool, int]:
    """(shape, dtype, fortran_order, header length) of the ``.npy`` member open on ``stream``."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(stream, max_header_size=_MAX_NPY_HEADER)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(stream, max_header_size=_MAX_NPY_HEADER)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except Exception as exc:  # noqa: BLE001 - numpy's header parser raises many types on garbage
        raise error(f"{where}: cannot read weights: array {name!r} has no valid .npy header ({type(exc).__name__}: {exc})") from None
    return _checked_shape(shape, name, where, error), _checked_dtype(dtype, name, where, error), bool(fortran), \
        stream.tell()


def _member_specs(zf: zipfile.ZipFile, size: int, where: Any, error: type) -> dict[str, tuple[zipfile.ZipInfo, ArraySpec]]:
    """Every member's array spec, checked against the member and archive sizes (nothing read but headers)."""
    infos = zf.infolist()
    if sum(i.compress_size for i in infos) > size:
        raise error(f"{where}: cannot read weights: the archive's members claim more bytes than the file holds (truncated?)")
    specs: dict[str, tuple[zipfile.ZipInfo, ArraySpec]] = {}
    for info in infos:
        name = info.filename[:-4] if info.filename.endswith(".npy") else None
        if name is None or name in specs:
            raise error(f"{where}: cannot read weights: unexpected or repeated member {info.filename!r} (not an .npz of arrays)")
        if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
            raise error(f"{where}: cannot read weights: member {info.filename!r} is inconsistent (stored, yet sizes differ)")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise error(f"{where}: cannot read weights: member {info.filename!r} uses an unsupported compression")
        if info.file_size > max(_SMALL, MAX_EXPANSION * info.compress_size):
            raise error(f"{where}: cannot read weights: member {info.filename!r} would expand {info.compress_size:,} bytes to "
                        f"{info.file_size:,} (more than {MAX_EXPANSION}x): refused")
        try:
            with zf.open(info) as stream:
                shape, dtype, _, header = _npy_header(stream, name, where, error)
        except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError, struct.error,
                zlib.error) as exc:  # a damaged member header; RuntimeError: an encrypted member
            raise error(f"{where}: cannot read weights: member {info.filename!r} ({type(exc).__name__}: {exc})") from None
        if header + _nbytes(shape, dtype) != info.file_size:
            raise error(f"{where}: cannot read weights: array {name!r} declares shape {shape} of {dtype} ({_nbytes(shape, dtype):,} bytes) "
                        f"but its member holds {max(info.file_size - header, 0):,} bytes")
        specs[name] = (info, (shape, dtype))
    return specs


def npz_member_bytes(fh: Any, name: str, where: Any, *, limit: int, error: type = ModelFileError) -> bytes | None:
    """The raw data of the 1-D uint8 array ``name`` of an open ``.npz`` (None when absent), refused
    over ``limit`` bytes; nothing else of the archive is read."""
    with _open_zip(fh, where, error) as zf:
        specs = _member_specs(zf, _size(fh), where, error)
        if name not in specs:
            return None
        info, (shape, dtype) = specs[name]
        if len(shape) != 1 or dtype != np.uint8 or shape[0] > limit:
            raise error(f"{where}: cannot read weights: array {name!r} is not a byte string of at most {limit:,} bytes")
        return _read_member(zf, info, name, where, error).tobytes()


def _size(fh: Any) -> int:
    try:
        return os.fstat(fh.fileno()).st_size
    except (AttributeError, OSError, ValueError):  # an in-memory stream
        pos = fh.tell()
        end = fh.seek(0, os.SEEK_END)
        fh.seek(pos)
        return end


def _open_zip(fh: Any, where: Any, error: type) -> zipfile.ZipFile:
    try:
        fh.seek(0)
        return zipfile.ZipFile(fh)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, struct.error) as exc:
        raise error(f"{where}: cannot read weights: not an .npz archive ({type(exc).__name__}: {exc})") from None


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, where: Any, error: type) -> np.ndarray:
    try:
        with zf.open(info) as stream:
            return np.lib.format.read_array(stream, allow_pickle=False, max_header_size=_MAX_NPY_HEADER)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - zipfile, zlib and numpy raise many types on damaged data
        raise error(f"{where}: cannot read weights: array {name!r} ({type(exc).__name__}: {exc})") from None


def read_npz(fh: Any, where: Any, check: Check | None = None, *, skip: tuple[str, ...] = (),
             error: type = ModelFileError) -> dict[str, np.ndarray]:
    """The arrays of an open ``.npz`` file, every header checked (see the module docstring) and
    ``check(specs)`` called before any array is read; members named in ``skip`` are not read."""
    with _open_zip(fh, where, error) as zf:
        specs = _member_specs(zf, _size(fh), where, error)
        if check is not None:
            check({k: spec for k, (_, spec) in specs.items() if k not in skip})
        return {k: _read_member(zf, info, k, where, error) for k, (info, _) in specs.items() if k not in skip}


# ---------------------------------------------------------------------- safetensors
def _st_header(fh: Any, size: int, where: Any, error: type) -> tuple[dict[str, Any], int]:
    raw = fh.read(8)
    if len(raw) < 8:
        raise error(f"{where}: cannot read weights: not a safetensors file (shorter than its 8-byte header length)")
    n = struct.unpack("<Q", raw)[0]
    if n < 2 or n > min(size - 8, _MAX_ST_HEADER):
        raise error(f"{where}: cannot read weights: safetensors header length {n:,} does not fit a file of {size:,} bytes")
    try:
        doc = json.loads(fh.read(n).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise error(f"{where}: cannot read weights: the safetensors header is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise error(f"{where}: cannot read weights: the safetensors header is not a JSON object")
    return doc, 8 + n


def _st_specs(doc: dict[str, Any], data_size: int, where: Any, error: type) -> dict[str, tuple[int, ArraySpec]]:
    specs: dict[str, tuple[int, ArraySpec]] = {}
    for name, entry in doc.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict) or entry.get("dtype") not in _ST_DTYPES:
            raise error(f"{where}: cannot read weights: tensor {name!r} has no supported dtype "
                        f"({entry.get('dtype') if isinstance(entry, dict) else entry!r})")
        dtype = np.dtype(_ST_DTYPES[entry["dtype"]])
        shape = _checked_shape(entry.get("shape"), name, where, error)
        offsets = entry.get("data_offsets")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(
                isinstance(o, int) and not isinstance(o, bool) for o in offsets)
                and 0 <= offsets[0] <= offsets[1] <= data_size):
            raise error(f"{where}: cannot read weights: tensor {name!r} has data offsets {offsets!r} outside the {data_size:,}-byte data")
        if offsets[1] - offsets[0] != _nbytes(shape, dtype):
            raise error(f"{where}: cannot read weights: tensor {name!r} declares shape {shape} of {dtype} but spans "
                        f"{offsets[1] - offsets[0]:,} bytes")
        specs[name] = (offsets[0], (shape, dtype))
    return specs


def read_safetensors(fh: Any, where: Any, check: Check | None = None, *,
                     error: type = ModelFileError) -> dict[str, np.ndarray]:
    """The tensors of an open ``.safetensors`` file as numpy arrays, the header checked and
    ``check(specs)`` called before any tensor is read."""
    size = _size(fh)
    fh.seek(0)
    doc, start = _st_header(fh, size, where, error)
    specs = _st_specs(doc, size - start, where, error)
    if check is not None:
        check({k: spec for k, (_, spec) in specs.items()})
    out = {}
    for name, (offset, (shape, dtype)) in specs.items():
        arr = np.empty(shape, dtype=dtype)
        fh.seek(start + offset)
        view = memoryview(arr.reshape(-1).view(np.uint8)) if arr.size else memoryview(b"")
        if arr.size and fh.readinto(view) != arr.nbytes:
            raise error(f"{where}: cannot read weights: tensor {name!r} is truncated")
        out[name] = arr
    return out
