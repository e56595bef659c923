"""The header check: a header line is never read as a row of data without being asked to.

When every requested column of a delimited file is given by position and ``header`` is not said
(``None``), :func:`metricrec.data.delimited.read_columns` looks at the first line once, and refuses it
when it looks like a header:

- **names**: one of its fields, stripped of spaces and quotes and lowercased (spaces and ``-`` read
  as ``_``, a RecBole type suffix ``:token``/``:float`` dropped), is a column name of
  :data:`HEADER_NAMES` (``user``, ``item_id``, ``rating``, ``timestamp``, ...) or the name of a role
  being read (the names the caller uses for its columns). Free-text columns (:data:`FREE_TEXT_ROLES`:
  item feature names) are not looked at;
- **types**: an id column (:data:`ID_ROLES`) holds text on the first line while it holds an integer
  (digits of any length: ``12345678901234567890123`` counts) on every other line.

Ids that are text all through the file (``u1,i1``, ...) are not a header. The refusal is one
:class:`~metricrec.errors.DataError` naming the file, line 1, the line and the two ways on
(:data:`CHOICES`): ``header=True`` (``--header``) skips the line as a header, ``header=False``
(``--no-header``) reads it as data; neither checks anything. The check costs the first line and, only
when the first line's id is text and the second line's an integer, one vectorised pass over that column.
"""

from __future__ import annotations

import re
from typing import Mapping

import pyarrow as pa
import pyarrow.compute as pc

from ..errors import DataError

__all__ = ["CHOICES", "FREE_TEXT_ROLES", "HEADER_NAMES", "ID_ROLES", "check_names", "check_types", "normalized"]

#: Column names that make a first line a header (compared with :func:`normalized` fields).
HEADER_NAMES = frozenset({
    "user", "users", "item", "items", "id", "user_id", "item_id", "userid", "itemid", "uid", "iid",
    "user_idx", "item_idx", "movie_id", "movieid", "product_id", "productid", "book_id", "bookid",
    "article_id", "doc_id", "song_id", "track_id", "artist_id", "customer_id", "business_id",
    "rating", "ratings", "timestamp", "time", "datetime", "date", "score", "weight", "count", "value",
    "label", "feature", "tag", "tag_id",
})
#: Roles whose columns hold ids: text over integers there is a header (checked in this order).
ID_ROLES = ("user", "item", "id")
#: Roles whose columns hold free text (any word is data there).
FREE_TEXT_ROLES = frozenset({"feature"})
#: What the refusal tells the user to do (the flags and the API argument).
CHOICES = "pass --header / header=True to skip it as a header, or --no-header / header=False to read it as data"

_INTEGER = r"^\s*[+-]?[0-9]+\s*$"
_INTEGER_TEXT = re.compile(_INTEGER)
_TYPE_SUFFIX = re.compile(r":(token|token_seq|float|float_seq)$")
_SHOWN = 80  # characters of the line quoted in the error


def normalized(field: str) -> str:
    """A field as compared with the column names: ``' "User ID" '`` -> ``'user_id'``."""
    name = field.strip().strip("\"'").strip().lower()
    return re.sub(r"[\s\-]+", "_", _TYPE_SUFFIX.sub("", name))


def _refuse(path: str, line: str, why: str) -> DataError:
    shown = line if len(line) <= _SHOWN else line[:_SHOWN - 3] + "..."
    return DataError(f"{path}, line 1: looks like a header ({shown!r}: {why}); {CHOICES}")


def check_names(path: str, line: str, fields: list[str], index: Mapping[str, int | None]) -> None:
    """Refuse a first line one of whose fields names a column (see the module docstring).

    Parameters
    ----------
    path : str
    line : str
        The first line as text (quoted in the error).
    fields : list of str
        Its fields.
    index : mapping of role to int or None
        Column of each role being read (their names count as column names too).
    """
    skip = {k for role, k in index.items() if role in FREE_TEXT_ROLES and k is not None}
    names = HEADER_NAMES | {normalized(role) for role in index}
    for k, text in enumerate(fields):
        if k not in skip and normalized(text) in names:
            raise _refuse(path, line, f"{text.strip()!r} names a column")


def check_types(path: str, line: str, columns: Mapping[str, pa.ChunkedArray | None]) -> None:
    """Refuse a first line whose id is text over a column of integers (see the module docstring).

    Parameters
    ----------
    path, line : str
        As in :func:`check_names`.
    columns : mapping of role to pyarrow string array or None
        The columns read, the first line's value first.
    """
    for role in ID_ROLES:
        col = columns.get(role)
        if col is None or len(col) < 2:
            continue
        first = col[0].as_py()
        if not first.strip() or _INTEGER_TEXT.match(first) or not _INTEGER_TEXT.match(col[1].as_py()):
            continue  # an empty id (its own error), an integer, or text ids below it: no header
        if pc.all(pc.match_substring_regex(col.slice(1), _INTEGER)).as_py():
            raise _refuse(path, line, f"the {role} id {first.strip()!r} is text, every other line's an integer")
