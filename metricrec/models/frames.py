"""pandas DataFrames as training data: ``model.fit(df)`` with one row per interaction.

The columns are found by name (:data:`USER_COLUMNS`, :data:`ITEM_COLUMNS`, :data:`RATING_COLUMNS`)
and read through :func:`metricrec.data.readers.from_dataframe`, so ids follow the library's one id
rule and the model keeps the raw ids (``recommend_raw`` takes and returns them). pandas, the
optional extra ``pandas``, is never imported here: a DataFrame is recognised by its class, and
whoever holds one has pandas.
"""

from __future__ import annotations

from typing import Any

from ..data.interactions import Interactions
from ..errors import DataError

__all__ = ["ITEM_COLUMNS", "RATING_COLUMNS", "USER_COLUMNS", "frame_interactions", "is_dataframe"]

#: Names of the user id column ``fit(DataFrame)`` accepts (exactly one of them must be present).
USER_COLUMNS = ("user", "user_id", "userId")
#: Names of the item id column.
ITEM_COLUMNS = ("item", "item_id", "itemId")
#: Names of the optional weight column: rows whose weight is 0 are no positives (as a zero entry of
#: a matrix); weights must be finite and >= 0.
RATING_COLUMNS = ("rating", "weight")


def is_dataframe(obj: Any) -> bool:
    """Whether ``obj`` is a pandas DataFrame (by its class, without importing pandas)."""
    return any(cls.__name__ == "DataFrame" and cls.__module__.split(".")[0] == "pandas" for cls in type(obj).__mro__)


def frame_interactions(df: Any, name: str, like: Interactions | None = None) -> Interactions:
    """The :class:`Interactions` of a DataFrame given to ``fit``.

    Parameters
    ----------
    df : pandas.DataFrame
        One row per interaction: a user column (one of :data:`USER_COLUMNS`), an item column (one of
        :data:`ITEM_COLUMNS`) and optionally a weight column (one of :data:`RATING_COLUMNS`); other
        columns are ignored. To train on high ratings only, filter the frame first
        (``df[df.rating >= 4]``).
    name : str
        The argument (``"user_items"``, ``"valid"``); quoted in errors.
    like : Interactions, optional
        Use its users and items, in its order (a validation frame against the training frame); an id
        it does not know is an :class:`~metricrec.errors.UnknownIdError`.

    Returns
    -------
    Interactions
        Users and items in sorted id order (without ``like``); binary unless there is a weight column.

    Raises
    ------
    DataError
        No user or item column, or two candidates for one role (both ``user`` and ``user_id``),
        naming the columns the frame has.
    ValueError
        Missing values, non-numeric or negative weights (from :func:`~metricrec.data.readers.from_dataframe`).
    """
    from ..data.readers import from_dataframe  # pandas is the caller's: nothing to import up front

    columns = list(df.columns)
    user = _column(columns, USER_COLUMNS, "user", name, required=True)
    item = _column(columns, ITEM_COLUMNS, "item", name, required=True)
    rating = _column(columns, RATING_COLUMNS, "rating", name, required=False)
    return from_dataframe(df, user, item, rating, binary=rating is None, source=f"{name} (DataFrame)",
                          user_ids=None if like is None else like.user_ids,
                          item_ids=None if like is None else like.item_ids)


def _column(columns: list[Any], names: tuple[str, ...], role: str, arg: str, *, required: bool) -> str | None:
    found = [c for c in names if c in columns]
    if len(found) > 1:
        raise DataError(f"{arg}: the DataFrame has {len(found)} {role} columns ({', '.join(map(repr, found))}); "
                        f"keep one (or rename the one to use to {names[0]!r})")
    if not found and required:
        raise DataError(f"{arg}: the DataFrame has no {role} column (one of {', '.join(map(repr, names))}); "
                        f"its columns are {columns}")
    return found[0] if found else None
