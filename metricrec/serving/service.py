"""What the HTTP service does, without HTTP: the loaded model (swappable), raw-id parsing, the
three queries and the health document. :mod:`metricrec.serving.app` wires these to routes.

Every client mistake raises :class:`RequestError` with the HTTP status to answer with.
"""

from __future__ import annotations

import datetime as _dt
import inspect
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import scipy.sparse as sp

from ..errors import MetricrecError, UnknownIdError

__all__ = ["Limits", "ModelHolder", "RequestError", "Snapshot", "load_model_only", "load_serving_model",
           "model_path", "recommend_new_user", "recommend_user", "recommend_users", "request_id", "similar_items"]


_FOLD_IN_LOCK = threading.Lock()


class RequestError(Exception):
    """A request the service refuses: ``status`` (4xx), a short ``error`` code and a ``detail``."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_n: int = 1000
    max_items: int = 1000
    max_body_bytes: int = 1_000_000
    max_users: int = 1000


def model_path(path: str | os.PathLike) -> Path:
    """The model directory of ``path``: ``path`` itself, or ``path/model`` for a folder written by
    ``metricrec train`` (which saves its model there)."""
    p = Path(path)
    if not (p / "config.json").is_file() and (p / "model" / "config.json").is_file():
        return p / "model"
    return p


def load_model_only(path: str | os.PathLike, *, index: bool = False) -> Any:
    """``load_model(path)``, asking it not to load the ANN index beside the model unless ``index``
    (so that a stale index never stops ``metricrec index`` from rebuilding it)."""
    from ..models import load_model

    if "index" in inspect.signature(load_model).parameters:
        return load_model(path, index=index)
    return load_model(path)


def load_serving_model(path: str | os.PathLike, *, exact: bool = False, warm_up: bool = True) -> Any:
    """``load_model(path)`` plus the ANN index saved beside it (unless ``exact``), warmed up.

    The index is attached only if the loaded model has none yet (``load_model`` may attach it
    itself); a stale index raises :class:`~metricrec.errors.ModelFileError`. ``warm_up`` runs one
    recommendation and one fold-in, so that one-off costs (compiled kernels, first allocations)
    are paid here and not by the first requests.
    """
    model = load_model_only(path, index=not exact)
    if exact and getattr(model, "ann_index", None) is not None:
        model.attach_index(None)
    elif not exact and getattr(model, "ann_index", None) is None and hasattr(model, "attach_index"):
        from .ann import index_dir_for, load_index_for

        if (index_dir_for(path) / "index.json").is_file():
            model.attach_index(load_index_for(path, model.item_embeddings, model.distance))
    if warm_up:
        _warm_up(model)
    return model


def _warm_up(model: Any) -> None:
    approximate = getattr(model, "ann_index", None) is not None
    first_user = model.user_map.ids[0] if getattr(model, "user_map", None) is not None else 0
    first_item = model.item_map.ids[0] if getattr(model, "item_map", None) is not None else 0
    model.recommend_raw([first_user], N=10, filter_already_liked_items=model.user_items is not None,
                        approximate=approximate)
    try:
        model.fold_in([[first_item]])
    except MetricrecError:  # a model without fold-in: POST /recommend will say so
        pass


@dataclass(frozen=True)
class Snapshot:
    """One loaded model and what the service reports about it. Never mutated: a reload builds a
    new one and swaps the reference, so a request keeps the snapshot it started with."""

    model: Any
    path: str
    loaded_at: float
    load_seconds: float
    generation: int
    #: The fast path's arrays (:class:`~metricrec.serving.fastpath.FastTables`), when the loader made
    #: them (memory-mapped from the serving cache); None: built from the model when first needed.
    tables: Any = None

    @property
    def approximate(self) -> bool:
        return getattr(self.model, "ann_index", None) is not None

    def health(self) -> dict[str, Any]:
        """The ``GET /health`` document."""
        m, index = self.model, getattr(self.model, "ann_index", None)
        return {
            "status": "ok", "model": self.path, "model_type": getattr(m, "model_name", type(m).__name__),
            "distance": m.distance, "n_users": int(m.user_embeddings.shape[0]),
            "n_items": int(m.item_embeddings.shape[0]), "factors": int(m.item_embeddings.shape[1]),
            "loaded_at": _dt.datetime.fromtimestamp(self.loaded_at, _dt.timezone.utc).isoformat(
                timespec="milliseconds"),
            "load_seconds": round(self.load_seconds, 3), "generation": self.generation,
            "index": getattr(index, "kind", None) if index is not None else None, "pid": os.getpid(),
            "data_source": getattr(m, "data_source", None),  # {"fallback_for": ...} for a synthetic fallback
        }


class ModelHolder:
    """The service's current :class:`Snapshot`, swapped whole by :meth:`reload`.

    Parameters
    ----------
    path : path
        The model directory (or file) to load, and to re-load from.
    loader : callable, optional
        ``loader(path) -> model``; default :func:`load_serving_model`.
    """

    def __init__(self, path: str | os.PathLike, loader: Callable[[str], Any] | None = None) -> None:
        self.path = str(model_path(path))
        self._loader = loader or load_serving_model
        self._lock = threading.Lock()
        self._generation = 0
        self._observers: list[Callable[[bool, Snapshot | None], None]] = []
        self.current: Snapshot = self._load()

    def observe(self, callback: Callable[[bool, "Snapshot | None"], None]) -> None:
        """Call ``callback(ok, snapshot)`` after every reload (``ok`` False and None on a failure)."""
        self._observers.append(callback)

    def _notify(self, ok: bool, snap: "Snapshot | None") -> None:
        for callback in self._observers:
            try:
                callback(ok, snap)
            except Exception:  # noqa: BLE001 - an observer (metrics) never fails a reload
                pass

    def _load(self) -> Snapshot:
        t0 = time.perf_counter()
        model = self._loader(self.path)
        seconds = time.perf_counter() - t0
        self._generation += 1
        return Snapshot(model, self.path, time.time(), seconds, self._generation)

    def reload(self) -> Snapshot:
        """Load the model at ``path`` again, fully, then swap it in (one reference assignment);
        requests already running finish on the old one. On failure the old one stays and
        :class:`RequestError` (409) says why."""
        with self._lock:
            old = self.current
            try:
                snap = self._load()
            except Exception as exc:  # any failure: keep serving the old model
                self._notify(False, None)
                raise RequestError(409, "reload_failed", f"cannot load {self.path} ({_one_line(exc)}); still serving "
                                   f"the model loaded at {old.health()['loaded_at']}") from None
            self.current = snap
        self._notify(True, snap)
        return snap


def _one_line(exc: BaseException) -> str:
    msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    return f"{type(exc).__name__}: {str(msg).splitlines()[0] if str(msg) else ''}"


# ---------------------------------------------------------------------- parsing
def parse_n(value: Any, limits: Limits, *, json_value: bool = False) -> int:
    """``n`` from a query string (text) or a JSON body (``json_value``: a JSON integer only); 422
    unless an integer in ``[1, max_n]``."""
    if isinstance(value, str) and not json_value:
        text = value.strip()
        n = int(text) if text.lstrip("+-").isdigit() and len(text) <= 12 else None
    elif isinstance(value, int) and not isinstance(value, bool):
        n = value
    else:
        n = None
    if n is None or not 1 <= n <= limits.max_n:
        raise RequestError(422, "invalid_n", f"n must be an integer in [1, {limits.max_n}], got {value!r}")
    return n


_EXACT_FLOAT = 2 ** 53  # whole floats up to this are exact integers; beyond, JSON 1e20 is not one id


def request_id(value: Any, what: str) -> str:
    """The text of a raw id from a request: a string as given, a JSON number as its decimal text.

    Follows the id rule of :func:`metricrec.data.ids.canonical_ids`: an integer stands for its
    decimal text (``196`` is ``"196"``, never ``"0196"``) and a whole-number float for that integer
    (``196.0``), so a number finds exactly the id its text finds. A float beyond 2**53 (not exact),
    a fraction, a bool, null or any other type is refused (422 ``invalid_<what>``), as is text that
    is empty or over 1000 characters.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    elif isinstance(value, float) and value.is_integer() and abs(value) <= _EXACT_FLOAT:
        value = str(int(value))
    elif not isinstance(value, str):
        raise RequestError(422, f"invalid_{what}",
                           f"{what} ids must be strings or integers (whole JSON numbers up to 2**53), got {value!r}")
    if not value or len(value) > 1000:
        raise RequestError(422, f"invalid_{what}", f"{what} id must be a non-empty string of at most 1000 characters")
    return value


def _model_id(text: str, idmap: Any) -> Any:
    """The query for the model's id map: canonical integer text as an int for a model whose ids are
    integers (or row numbers), which spares the map its text parsing; other text as it is (the map
    applies the id rule, so both find the same id)."""
    if len(text) < 19 and (idmap is None or getattr(idmap, "kind", None) == "int"):
        try:
            number = int(text)
        except ValueError:
            return text
        if str(number) == text:
            return number
    return text


def _unknown(exc: BaseException) -> RequestError:
    msg = exc.args[0] if exc.args else str(exc)
    return RequestError(404, "unknown_id", str(msg).splitlines()[0] if str(msg) else "unknown id")


def _result(key: str, query: str | list[str], items: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    """The response document: ids as strings (``astype(str)``: vectorised, an int id as its decimal
    text), scores rounded to 6 decimals (non-finite ones as null)."""
    rounded = np.round(np.asarray(scores, dtype=np.float64), 6)
    finite = np.isfinite(rounded)
    values = rounded.tolist() if finite.all() else np.where(finite, rounded, None).tolist()
    return {key: query, "items": np.asarray(items).astype(str).tolist(), "scores": values}


# ---------------------------------------------------------------------- queries
def _item_filters(snap: Snapshot, include: Any, exclude: Any, limits: Limits) -> tuple[Any, Any]:
    """(candidate items, items to leave out) of a request as the model's raw ids, or None where the
    request gives none: ``include`` restricts the candidates to those items, ``exclude`` removes
    items. Each is a list of ids (strings or JSON integers, :func:`request_id`) of at most
    ``limits.max_items``; an id the model does not know is a 404 (``unknown_id``)."""
    out = []
    item_map = getattr(snap.model, "item_map", None)
    for name, ids in (("include", include), ("exclude", exclude)):
        if ids is None:
            out.append(None)
            continue
        if not isinstance(ids, (list, tuple)):
            raise RequestError(422, f"invalid_{name}", f"{name} must be a list of item ids")
        if len(ids) > limits.max_items:
            raise RequestError(422, "too_many_items", f"{name}: at most {limits.max_items} items, got {len(ids)}")
        raws = [_model_id(t, item_map) for t in dict.fromkeys(request_id(x, "item") for x in ids)]
        try:
            snap.model.item_index(raws)  # unknown ids: 404 here, naming them
        except (UnknownIdError, KeyError) as exc:
            raise _unknown(exc) from None
        out.append(raws)
    return out[0], out[1]


def recommend_user(snap: Snapshot, user: Any, n: int, *, include: Any = None, exclude: Any = None,
                   limits: Limits = Limits()) -> dict[str, Any]:
    """Top-``n`` items for a known user (already-liked items filtered; ``include``/``exclude``: item
    filters, see :func:`_item_filters`)."""
    return recommend_users(snap, [user], n, include=include, exclude=exclude, limits=limits)["results"][0]


def recommend_users(snap: Snapshot, users: Any, n: int, *, include: Any = None, exclude: Any = None,
                    limits: Limits = Limits()) -> dict[str, Any]:
    """``POST /recommend/batch``: top-``n`` items for each of several known users in one scoring call
    (each user's liked items filtered, the same item filters for all); ``{"results": [...]}`` in the
    order of ``users``, one :func:`recommend_user` document each. An unknown user makes the whole
    request a 404 naming it (no partial answer that a client could take for complete)."""
    if not isinstance(users, (list, tuple)) or not users:
        raise RequestError(422, "invalid_users", "users must be a non-empty list of user ids")
    if len(users) > limits.max_users:
        raise RequestError(422, "too_many_users", f"at most {limits.max_users} users, got {len(users)}")
    texts = [request_id(u, "user") for u in users]
    user_map = getattr(snap.model, "user_map", None)
    candidates, dropped = _item_filters(snap, include, exclude, limits)
    try:
        found = snap.model.recommend_raw([_model_id(t, user_map) for t in texts], N=n, filter_items=dropped,
                                         items=candidates, approximate=snap.approximate)
    except (UnknownIdError, KeyError) as exc:
        raise _unknown(exc) from None
    return {"results": [_result("user", t, items, scores) for t, (items, scores) in zip(texts, found)]}


def similar_items(snap: Snapshot, item: Any, n: int) -> dict[str, Any]:
    """The ``n`` items nearest to a known item (the item itself left out)."""
    text = request_id(item, "item")
    model = snap.model
    query = _model_id(text, getattr(model, "item_map", None))
    try:
        row = int(model.item_index([query])[0])
        items, scores = model.similar_items_raw([query], N=n + 1, approximate=snap.approximate)[0]
    except (UnknownIdError, KeyError) as exc:
        raise _unknown(exc) from None
    items = np.asarray(items)
    own = model.item_map.raw(row) if getattr(model, "item_map", None) is not None else row
    keep = np.flatnonzero(items != own)[:n]  # the item itself: first for a metric model, anywhere for a dot one
    return _result("item", text, items[keep], np.asarray(scores)[keep])


def recommend_new_user(snap: Snapshot, body: Any, limits: Limits) -> dict[str, Any]:
    """Fold a new user in from its liked items (``{"items": [...], "n": 10}``, optionally
    ``"include"``/``"exclude"`` item filters) and recommend ``n`` items it has not liked."""
    if not isinstance(body, dict):
        raise RequestError(422, "invalid_body", f"the body must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - {"items", "n", "include", "exclude"})
    if unknown:
        raise RequestError(422, "invalid_body", f"unknown field(s) {', '.join(map(repr, unknown))} "
                                                "(known: items, n, include, exclude)")
    liked = body.get("items")
    if not isinstance(liked, list) or not liked:
        raise RequestError(422, "invalid_items", "items must be a non-empty list of item ids")
    if len(liked) > limits.max_items:
        raise RequestError(422, "too_many_items", f"at most {limits.max_items} items, got {len(liked)}")
    n = parse_n(body.get("n", 10), limits, json_value=True)
    model = snap.model
    item_map = getattr(model, "item_map", None)
    texts = list(dict.fromkeys(request_id(x, "item") for x in liked))  # "1" and 1 are one item
    raws = [_model_id(t, item_map) for t in texts]
    candidates, dropped = _item_filters(snap, body.get("include"), body.get("exclude"), limits)
    try:
        rows = np.unique(np.asarray(model.item_index(raws), dtype=np.int64))
        with _FOLD_IN_LOCK:  # one at a time: it is parallel itself, and numba's workqueue layer is not re-entrant
            vec = np.asarray(model.fold_in([raws]), dtype=np.float32)
    except (UnknownIdError, KeyError) as exc:
        raise _unknown(exc) from None
    n_items = model.item_embeddings.shape[0]
    exclude = sp.csr_matrix((np.ones(rows.size, dtype=np.float32), rows, [0, rows.size]), shape=(1, n_items))
    cols = [None if f is None else np.asarray(model.item_index(f), dtype=np.int64) for f in (candidates, dropped)]
    ids, scores = model.recommend_vectors(vec, N=n, exclude=exclude, items=cols[0], filter_items=cols[1],
                                          approximate=snap.approximate)
    ids, scores = np.asarray(ids)[0], np.asarray(scores)[0]
    ok = ids >= 0
    items = model.item_map.raw(ids[ok]) if getattr(model, "item_map", None) is not None else ids[ok]
    return _result("liked", texts, items, scores[ok])
