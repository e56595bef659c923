"""Id text: the Arrow-level pieces of the id rule of :mod:`metricrec.data.ids`.

Checking that a column of id texts is canonical integer text and converting Arrow arrays to numpy
without pyarrow's pandas conversion path (which imports pandas, a second or so, on first use).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["CANONICAL_TEXT", "arrow_strings", "arrow_to_numpy", "numeric_ids", "object_to_str", "parse_canonical",
           "str_array"]

_CANONICAL = r"^(0|-?[1-9][0-9]*)$"  # exactly the texts str(int) produces: not "-0"
_INT64_DIGITS = 19  # 9223372036854775807 has 19 digits: longer or equal texts need an exact check
CANONICAL_TEXT = re.compile(_CANONICAL)


def arrow_to_numpy(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """numpy view/copy of an Arrow array or chunked array; the result may be read-only.

    Null-free numeric and boolean arrays are viewed straight from their data buffer: pyarrow's
    ``to_numpy`` imports pandas when it is installed (a second or so on first use), and
    ``ChunkedArray.to_numpy`` has no ``zero_copy_only`` before pyarrow 13. Strings become a numpy
    str array (through Python strings); other types use ``to_numpy``.
    """
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks else pa.array([], type=arr.type)
    if pa.types.is_boolean(arr.type) and not arr.null_count:
        return arrow_to_numpy(arr.cast(pa.uint8())).view(bool)
    kind = "i" if pa.types.is_signed_integer(arr.type) else "u" if pa.types.is_unsigned_integer(arr.type) \
        else "f" if pa.types.is_floating(arr.type) else None
    if (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)) and not arr.null_count:
        return np.array(arr.to_pylist(), dtype=str)
    if kind is None or arr.null_count:
        return arr.to_numpy(zero_copy_only=False)
    dtype = np.dtype(f"{kind}{arr.type.bit_width // 8}")
    if len(arr) == 0:
        return np.zeros(0, dtype=dtype)
    return np.frombuffer(arr.buffers()[1], dtype=dtype)[arr.offset:arr.offset + len(arr)]


def str_array(values: np.ndarray) -> pa.Array:
    """Arrow string array of a numpy str array (of shape (n,))."""
    return pa.array(values.tolist(), type=pa.string())


def arrow_strings(values: Any) -> pa.Array | pa.ChunkedArray:
    """Arrow string array of ``values`` (str-like numpy arrays, lists of str, Arrow arrays)."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        arr = values
    else:
        arr = str_array(np.asarray(values, dtype=str))
    if not pa.types.is_string(arr.type) and not pa.types.is_large_string(arr.type):
        arr = pc.cast(arr, pa.string())
    if arr.null_count:
        raise ValueError(f"{arr.null_count} ids are missing (null)")
    return arr


def _all_canonical(arr: pa.Array | pa.ChunkedArray) -> np.ndarray | None:
    """int64 values when every text is canonical, else None (then :func:`parse_canonical` looks closer).

    Arrow's string -> int64 cast rejects signs other than a leading ``-``, spaces, non-digits and
    overflow; the only non-canonical texts it accepts start with ``0`` or ``-0`` (``"007"``,
    ``"-0"``, ``"0x10"``), which two prefix tests find -- much cheaper than a regex over every id.
    """
    try:
        ints = pc.cast(arr, pa.int64())
    except pa.ArrowInvalid:
        return None
    if pc.any(pc.starts_with(arr, "-0")).as_py():
        return None
    zero = pc.filter(arr, pc.starts_with(arr, "0"))  # "0" itself, or a leading zero (few either way)
    if len(zero) and pc.max(pc.utf8_length(zero)).as_py() > 1:
        return None
    return arrow_to_numpy(ints)


def parse_canonical(arr: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(mask of canonical integer texts that fit in int64, their int64 values; 0 elsewhere)."""
    fast = _all_canonical(arr)
    if fast is not None:
        return np.ones(len(arr), dtype=bool), fast
    ok = arrow_to_numpy(pc.match_substring_regex(arr, _CANONICAL)).astype(bool)
    long = np.flatnonzero(ok & (arrow_to_numpy(pc.utf8_length(arr)) >= _INT64_DIGITS))
    if long.size:  # near the int64 bounds: check exactly (rare, so a Python loop is fine)
        texts = pc.take(arr, pa.array(long.tolist(), type=pa.int64())).to_pylist()
        ok[long] = [-(2**63) <= int(t) < 2**63 for t in texts]
    if ok.all():
        return ok, arrow_to_numpy(pc.cast(arr, pa.int64()))
    flat = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    safe = pc.if_else(pa.array(ok.tolist(), type=pa.bool_()), flat, pa.scalar("0", type=flat.type))
    return ok, arrow_to_numpy(pc.cast(safe, pa.int64()))


def object_to_str(arr: np.ndarray) -> np.ndarray:
    """Object array of str / int values -> str array (ints as decimal text)."""
    out = []
    for v in arr.tolist():
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)):
            out.append(str(int(v)))
        elif isinstance(v, float) and v.is_integer():
            out.append(str(int(v)))
        else:
            raise TypeError(f"ids must be str or int, got {type(v).__name__} {v!r}")
    return np.array(out, dtype=str)


def numeric_ids(arr: np.ndarray) -> np.ndarray:
    """Integer or float numpy ids -> int64 (or str for unsigned ids beyond int64)."""
    if arr.dtype.kind == "b":
        raise TypeError("ids must be str or int, got bool")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise ValueError("ids contain NaN or infinite values")
        if np.any(arr != np.round(arr)) or np.any(np.abs(arr) >= 2.0**63):
            raise ValueError("ids contain non-integer (or too large) float values")
        return arr.astype(np.int64)
    if arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
        return arr.astype(str)
    return arr.astype(np.int64)
