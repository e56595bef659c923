"""Delimited text files -> columns, through ``pyarrow.csv`` (the one ingestion path of metricrec).

Every text reader (interaction files, MovieLens and citeulike files, item features, split files) goes
through :func:`read_columns`, so all of them share these rules:

- **Bytes.** ``.gz``, ``.bz2`` and ``.zst``/``.zstd`` files are decompressed (chosen by suffix). A UTF-8
  byte-order mark is skipped; ``\\r\\n`` line ends are fine; trailing empty lines are ignored.
- **Parsing** is pyarrow's multi-threaded CSV parser: fields may be quoted (``"a,b"``, ``""`` for a
  quote inside) unless ``quoting=False``. pyarrow only splits on one ASCII character; a longer
  separator such as MovieLens-1M's ``::`` is handled by one vectorised byte replacement of the
  separator with a control character that does not occur in the file, before parsing.
- **Files**: only regular files are read (also through a link); a directory, a FIFO (named pipe), a
  device or a socket is one ``DataError`` saying what it is, checked with ``os.stat`` before anything is
  opened (a FIFO never blocks the reader), and a missing file is ``FileNotFoundError``.
- **Header**: a requested column given by name means a header line (``header=None`` or ``True``). With
  every column given by position, ``header=True`` skips the first line and ``header=False`` reads it as
  data; ``header=None`` (the default) reads it as data unless it looks like a header -- a field names a
  column (``user``, ``item_id``, ``rating``, ...) or an id column holds text there and integers on every
  other line -- which is a one-line ``DataError`` asking for ``header=True`` or ``header=False``
  (:mod:`metricrec.data.header_check`). A requested name missing from the header is a one-line
  ``ValueError`` naming the file and the header's columns.
- **Errors** are one-line ``ValueError``\\ s naming the file and the 1-based line: a line with the
  wrong number of fields, a non-numeric or NaN number, an empty id, bytes that do not decode.
  pyarrow's own exceptions never escape.
- **Values** are read as strings; :mod:`metricrec.data.columns` turns them into ids (by
  :func:`metricrec.data.ids.canonical_ids`) and numbers, reporting every bad value with its line.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
from .._file_kind import irregular, open_regular
from ..errors import DataError
from .header_check import check_names, check_types


__all__ = ["COMPRESSIONS", "Column", "REGULAR", "TextTable", "compression_of", "plain_suffix", "read_bytes",
           "read_columns", "require_regular_file"]

Column = int | str | None

#: file suffix -> pyarrow codec name
COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd", ".zstd": "zstd"}
#: What a data file must be, in the messages of :func:`require_regular_file` ("is a FIFO (named pipe), not
#: a regular file").
REGULAR = "a regular file"
_STANDINS = ("\x1f", "\x1e", "\x1d", "\x1c", "\x01", "\x02", "\x03", "\x04")


def compression_of(path: str | os.PathLike) -> str | None:
    """pyarrow codec of a file from its last suffix (``None`` when not compressed)."""
    return COMPRESSIONS.get(Path(path).suffix.lower())


def plain_suffix(path: str | os.PathLike) -> str:
    """The suffix that says the format, under any compression suffix (``x.csv.gz`` -> ``.csv``)."""
    p = Path(path)
    if p.suffix.lower() in COMPRESSIONS:
        p = p.with_suffix("")
    return p.suffix.lower()


def require_regular_file(path: str | os.PathLike, what: str = "file") -> str:
    """``path`` as a str, checked by ``os.stat`` alone (nothing is opened) to be a regular file
    (:func:`metricrec._file_kind.irregular`).

    Raises
    ------
    FileNotFoundError
        Nothing at ``path`` (``"{what} not found: PATH"``).
    DataError
        A directory, a FIFO, a device, a socket, a dangling link: ``"PATH: is a directory, not a regular
        file"``, ``"PATH: is a FIFO (named pipe), not a regular file"``, ...
    """
    path = str(path)
    try:
        problem = irregular(path, REGULAR)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    if problem is not None:
        raise DataError(f"{path}: {problem}")
    return path


def read_bytes(path: str | os.PathLike) -> bytes:
    """The (decompressed) bytes of a regular file, opened only once ``os.stat`` says it is one (and
    checked again on the open descriptor: :func:`metricrec._file_kind.open_regular`), so a FIFO is never
    waited on and a device never read without end.

    Raises
    ------
    FileNotFoundError
        No such file.
    DataError
        Not a regular file (see :func:`require_regular_file`), or the compressed data is corrupt
        (naming the file and codec).
    """
    path = require_regular_file(path)
    codec = compression_of(path)
    with open_regular(path, REGULAR, DataError) as fh:
        if codec is None:
            return fh.read()
        try:
            with pa.input_stream(fh, compression=codec) as stream:
                return stream.read()
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{path}: cannot decompress {codec} data ({exc})") from None


@dataclass(frozen=True)
class TextTable:
    """String columns of a delimited file, one entry per data line.

    Attributes
    ----------
    path : str
    columns : dict of str to pyarrow.ChunkedArray or None
        The requested columns by role; ``None`` for an optional column the file does not have.
    n_rows : int
    first_line : int
        1-based line of the first data row (2 after a header).
    other_rows : list of (int, list of str)
        Only with ``ragged``: the lines whose field count differs from the first data line's, as
        (line, fields); they are not in ``columns``.
    index : dict of str to int or None
        The column (field index) of each role, for reading ``other_rows``.
    """

    path: str
    columns: dict[str, pa.ChunkedArray | None]
    n_rows: int
    first_line: int
    other_rows: list[tuple[int, list[str]]] = field(default_factory=list)
    index: dict[str, int | None] = field(default_factory=dict)

    def lines(self) -> np.ndarray:
        """1-based line of every row of ``columns``, shape (n_rows,)."""
        if not self.other_rows:
            return np.arange(self.first_line, self.first_line + self.n_rows, dtype=np.int64)
        every = np.arange(self.first_line, self.first_line + self.n_rows + len(self.other_rows), dtype=np.int64)
        return np.setdiff1d(every, [k for k, _ in self.other_rows], assume_unique=True)

    def line(self, k: int) -> int:
        """1-based line of row ``k``."""
        return int(self.lines()[k]) if self.other_rows else self.first_line + int(k)


class _BadRows:
    """pyarrow ``invalid_row_handler``: skips rows with a wrong field count and remembers them."""

    def __init__(self, allowed: set[int]) -> None:
        self.allowed, self.count, self.first, self.other = allowed, 0, None, []

    def __call__(self, row: Any) -> str:
        if row.actual_columns in self.allowed:
            self.other.append((row.number, row.text))
        else:
            self.count += 1
            if self.first is None:
                self.first = (row.number, row.actual_columns, row.text)
        return "skip"


def _one_byte_separator(data: bytes, sep: str, encoding: str, path: str) -> tuple[bytes, str]:
    """(data, a one-character ASCII delimiter): a longer separator is replaced by a stand-in."""
    if not sep:
        raise ValueError("sep must be a non-empty string")
    if len(sep) == 1 and ord(sep) < 128:
        return data, sep
    for standin in _STANDINS:
        if standin.encode() not in data:
            return data.replace(sep.encode(encoding), standin.encode()), standin
    raise DataError(f"{path}: cannot handle the separator {sep!r} (every stand-in control character occurs)")


def _line_end(data: bytes, start: int) -> int:
    """End of the line starting at byte ``start``: a line ends at "\\n", "\\r\\n" or a lone "\\r", as
    pyarrow reads it."""
    ends = [k for k in (data.find(b"\n", start), data.find(b"\r", start)) if k >= 0]
    return min(ends) if ends else len(data)


def _split_line(data: bytes, start: int, delim: str, encoding: str, quoting: bool, path: str) -> tuple[list[str], int]:
    """(fields of the line starting at byte ``start``, start of the next line), parsed like pyarrow."""
    stop = _line_end(data, start)
    line = data.count(b"\n", 0, start) + 1
    text = _decode(data[start:stop], encoding, path, line).lstrip("\ufeff")
    mode = csv.QUOTE_MINIMAL if quoting else csv.QUOTE_NONE
    try:
        fields = next(csv.reader([text], delimiter=delim, quoting=mode), [""])
    except csv.Error as exc:
        raise DataError(f"{path}, line {line}: cannot parse as delimited text ({exc})") from None
    nxt = stop + 2 if data[stop:stop + 2] == b"\r\n" else stop + 1
    return fields, nxt


def _decode(raw: bytes, encoding: str, path: str, first_line: int = 1) -> str:
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        line = first_line + raw.count(b"\n", 0, exc.start)
        raise DataError(f"{path}, line {line}: cannot decode bytes as {encoding} ({exc.reason}); "
                         "pass encoding=...") from None


def _resolve(columns: Mapping[str, Column], header: list[str] | None, n_fields: int, optional: set[str],
             path: str, rename: Callable[[str], str] | None) -> dict[str, int | None]:
    """Column index of each role (``None`` for an absent optional column)."""
    out: dict[str, int | None] = {}
    names = [h.strip() for h in header or []]
    names = [rename(h) for h in names] if rename else names
    for role, col in columns.items():
        if col is None:
            out[role] = None
        elif isinstance(col, str):
            if col not in names and role not in optional:
                raise DataError(f"{path}: the header has no column {col!r} (asked for as {role}); "
                                 f"its columns are {names}")
            out[role] = names.index(col) if col in names else None
        else:
            idx = int(col)
            if not -n_fields <= idx < n_fields and role not in optional:
                raise DataError(f"{path}: {role}={idx} is out of range, the first line has {n_fields} fields")
            # an optional column beyond the first line may still be on longer (ragged) lines
            out[role] = idx % n_fields if -n_fields <= idx < n_fields else (idx if idx >= 0 else None)
    return out


def _parse(buf: pa.Buffer, delim: str, quoting: bool, encoding: str, skip: int, width: int,
           wanted: list[int], handler: _BadRows, threads: bool) -> pa.Table:
    names = [f"f{k}" for k in range(width)]
    read = pcsv.ReadOptions(column_names=names, skip_rows=skip, use_threads=threads, encoding=encoding,
                            block_size=1 << 22)
    parse = pcsv.ParseOptions(delimiter=delim, quote_char='"' if quoting else False, double_quote=True,
                              ignore_empty_lines=False, invalid_row_handler=handler)
    include = [names[k] for k in dict.fromkeys(wanted)]
    convert = pcsv.ConvertOptions(include_columns=include, column_types={n: pa.string() for n in include},
                                  strings_can_be_null=False, quoted_strings_can_be_null=False)
    return pcsv.read_csv(pa.BufferReader(buf), read_options=read, parse_options=parse, convert_options=convert)


def _parse_checked(data: bytes, end: int, path: str, sep: str, delim: str, quoting: bool, encoding: str,
                   skip: int, width: int, wanted: list[int], ragged: set[int]) -> tuple[pa.Table, _BadRows]:
    """:func:`_parse` with pyarrow's errors turned into one-line ``ValueError``\\ s naming the file/line."""
    buf = pa.py_buffer(memoryview(data)[:end])
    try:
        handler = _BadRows(ragged)
        table = _parse(buf, delim, quoting, encoding, skip, width, wanted, handler, threads=not ragged)
        if handler.count and handler.first[0] is None:  # multi-threaded parsing does not number rows
            handler = _BadRows(ragged)
            table = _parse(buf, delim, quoting, encoding, skip, width, wanted, handler, threads=False)
    except (pa.ArrowException, UnicodeError) as exc:
        if "UTF" in str(exc) or isinstance(exc, UnicodeError):
            _decode(data[:end], encoding, path)
        raise DataError(f"{path}: cannot parse as delimited text ({exc})") from None
    if handler.count:
        line, got, text = handler.first
        what = "a blank line" if not text.strip() else f"{got} fields"
        raise DataError(f"{path}, line {line}: expected {_counts(handler.allowed | {width})} fields separated by "
                         f"{sep!r}, got {what} ({handler.count} bad line(s) in total)")
    return table, handler


def read_columns(
    path: str | os.PathLike,
    columns: Mapping[str, Column],
    *,
    sep: str = ",",
    header: bool | None = None,
    encoding: str = "utf-8",
    quoting: bool = True,
    optional: set[str] | frozenset[str] = frozenset(),
    ragged: set[int] | frozenset[int] = frozenset(),
    allow_empty: bool = False,
    what: str = "data lines",
    rename: Callable[[str], str] | None = None,
    fields: int | None = None,
) -> TextTable:
    """Read some columns of a delimited file as strings (see the module docstring for the rules).

    Parameters
    ----------
    path : path-like
        Plain or compressed (``.gz``, ``.bz2``, ``.zst``) text.
    columns : mapping of role to int or str or None
        Column index (0-based, negative allowed) or header name of each wanted column.
    sep : str, default ","
        Field separator (any length; ``"::"`` for MovieLens-1M).
    header : bool or None
        Whether the first line is a header. ``None``: a header iff a column is given by name; with
        every column by position, a first line that looks like a header is a ``DataError``
        (:mod:`metricrec.data.header_check`; ``True`` skips it, ``False`` reads it as data).
    encoding : str, default "utf-8"
        An ASCII-compatible encoding (``"iso-8859-1"`` for MovieLens).
    quoting : bool, default True
        Fields may be quoted with ``"``; ``False`` reads quotes as ordinary characters.
    optional : set of str
        Roles that may be missing (their column is then ``None``) instead of an error.
    ragged : set of int
        Other field counts accepted besides the first data line's; such lines are returned in
        ``other_rows`` (used for ``item,feature[,value]`` files). Parsing is then single-threaded.
    allow_empty : bool, default False
        Return empty columns for a file without data lines instead of raising.
    what : str
        What the lines are, for the empty-file error (``"interaction lines"``).
    rename : callable, optional
        Applied to each (stripped) header name before matching (``.inter`` drops ``:type``).
    fields : int, optional
        The exact number of fields every line must have (default: that of the first line).

    Returns
    -------
    TextTable
    """
    path = str(path)
    names_given = any(isinstance(c, str) for c in columns.values())
    check = header is None and not names_given  # the header check (positional columns, header not said)
    if header is None:
        header = names_given
    elif names_given and not header:
        raise DataError(f"{path}: columns given by name need a header line, but header=False")
    data, delim = _one_byte_separator(read_bytes(path), sep, encoding, path)
    start = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    end = len(data)
    while end > start and data[end - 1] in b"\r\n":  # trailing empty lines
        end -= 1
    head, body = (_split_line(data, start, delim, encoding, quoting, path) if header else (None, start))
    if body >= end:
        return _empty(path, columns, bool(header) and end > start, allow_empty, what)
    first, _ = _split_line(data, body, delim, encoding, quoting, path)
    for k, fields_k in enumerate((head, first) if header else (first,)):
        if fields_k is not None and len(fields_k) <= 1 and not "".join(fields_k).strip():
            raise DataError(f"{path}, line {1 + k}: blank line where the {'header' if header and k == 0 else 'first row'} "
                            "should be (remove the empty lines at the top)")
    allowed = set(ragged) if ragged else ({fields} if fields is not None else {len(first)})
    if len(first) not in allowed:
        raise DataError(f"{path}, line {1 + int(bool(header))}: expected {_counts(allowed)} fields separated by "
                         f"{sep!r}, got {len(first)} fields")
    n_fields = len(head) if head is not None else len(first)
    index = _resolve(columns, head, n_fields, set(optional), path, rename)
    line = _first_line(data, start, delim, sep, encoding, path) if check else ""
    if check:
        check_names(path, line, first, index)
    width = len(first) if ragged else n_fields
    present = {r: k for r, k in index.items() if k is not None and k < width}
    table, handler = _parse_checked(data, end, path, sep, delim, quoting, encoding, int(bool(header)), width,
                                    list(present.values()), set(ragged) - {width})
    cols = {r: (table.column(f"f{present[r]}") if r in present else None) for r in columns}
    if check:
        check_types(path, line, cols)
    other = [(n, _split_line(t.encode(), 0, delim, "utf-8", quoting, path)[0]) for n, t in handler.other]
    return TextTable(path, cols, table.num_rows, 1 + int(bool(header)), other, index)


def _first_line(data: bytes, start: int, delim: str, sep: str, encoding: str, path: str) -> str:
    """The first line as text (with the caller's separator), for the header check's message."""
    text = _decode(data[start:_line_end(data, start)], encoding, path)
    return text.replace(delim, sep) if delim != sep else text


def _counts(allowed: set[int]) -> str:
    return " or ".join(map(str, sorted(allowed)))


def _empty(path: str, columns: Mapping[str, Column], had_header: bool, allow: bool, what: str) -> TextTable:
    if not allow:
        if had_header:
            raise DataError(f"{path}: file has a header line but no {what}")
        raise DataError(f"{path}: file is empty (no {what})")
    empty = pa.chunked_array([pa.array([], type=pa.string())])
    return TextTable(path, {r: empty for r in columns}, 0, 1 + int(had_header))
