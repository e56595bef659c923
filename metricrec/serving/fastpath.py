"""The hot path of the service: ``GET /recommend?user=ID&n=N`` answered without FastAPI's per-request
machinery, scored in micro-batches, its JSON built from bytes prepared once per model.

:class:`FastTables` holds what a recommendation reads, as plain numpy arrays: the two tables, the
items' squared norms, the liked items (CSR ``indptr``/``indices``), the user ids sorted for a binary
search and each item's id as JSON text. :meth:`FastTables.from_model` builds them in memory; the
workers of ``metricrec serve --workers N`` map them from the serving cache instead
(:mod:`metricrec.serving.snapshot`), one copy in RAM for every worker.

:class:`FastRecommend` is ASGI middleware in front of the FastAPI app. It answers a request only
when it is the common, well-formed case -- ``GET /recommend`` whose query holds ``user`` (1 to 1,000
characters, a known id) and optionally ``n`` (plain decimal digits in ``[1, max_n]``), each once, and
nothing else -- and hands every other request, valid or not, to FastAPI unchanged, so validation,
filters, errors and the OpenAPI document stay FastAPI's. The answer is the one
:func:`metricrec.serving.service.recommend_user` gives: the same lookup rule, the model's own
ranking (:func:`metricrec.models.retrieval.top_n` and its one-query form, mirrored operation by
operation, or :func:`~metricrec.models.approximate.approximate_top_n` with an index), scores
rounded to 6 decimals, ids as JSON strings, the same bytes.

Micro-batching (:class:`Batcher`): the requests that reach the path within one turn of the event
loop are scored together, one matrix product for all of them instead of one matrix-vector product
each; nothing waits for a batch to fill (a lone request is scored on the next turn), and where the
server says that fewer connections are open than a batch worth a matrix product needs
(:data:`MIN_MATRIX_BATCH`), a request is scored at once. ``benchmarks/service.py`` measures both.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from typing import Any, Callable, Sequence
from urllib.parse import parse_qsl

import numpy as np

__all__ = ["Batcher", "FastRecommend", "FastTables", "fast_path_supported", "render_recommendation"]

#: Largest score block of one micro-batch (bytes of float32 scores): batches are cut to stay under it.
BATCH_BLOCK_BYTES = 32 << 20
#: Fewest users scored with one matrix product: below, one query each (measured on the ML-1M-sized
#: model: per user, 100 us alone, 133 us in a product of 2, 78 of 4, 52 of 8, 38 of 16).
MIN_MATRIX_BATCH = 4
_JSON_HEADERS = [(b"content-type", b"application/json")]
log = logging.getLogger("metricrec.serving")
_INTERNAL_ERROR = b'{"error":"internal_error","detail":"internal error (details are in the server log)"}'



def fast_path_supported(model: Any) -> bool:
    """Whether ``model`` ranks a known user as the plain embedding retrieval does (a query vector that
    is the user's row, scored against the item table on the CPU), which :class:`FastTables` mirrors.
    Models that override any step of it are served by FastAPI's path alone."""
    from ..models.raw_ids import RawIdMixin
    from ..models.retrieval_api import RetrievalMixin

    cls = type(model)
    try:
        user, item = model._fitted()  # noqa: SLF001 - the tables, without a copy
    except Exception:  # noqa: BLE001 - anything that is not a fitted embedding model
        return False
    return (getattr(model, "distance", None) in ("euclidean", "dot") and not getattr(model, "custom_user_scores", False)
            and getattr(cls, "recommend_raw", None) is RawIdMixin.recommend_raw
            and getattr(cls, "_user_queries", None) is RetrievalMixin._user_queries
            and getattr(cls, "_retrieve", None) is RetrievalMixin._retrieve
            and getattr(user, "device", None) is not None and user.device.type == "cpu"
            and item.device.type == "cpu" and getattr(model, "user_items", None) is not None)


def _id_json(ids: np.ndarray) -> np.ndarray:
    """Each raw id as the JSON string a response carries (``astype(str)`` as the service does), as a
    fixed-width bytes array (a JSON string never ends in NUL, so nothing is lost to numpy's padding)."""
    texts = np.asarray(ids).astype(str).tolist()
    return np.array([json.dumps(t, ensure_ascii=False).encode("utf-8") for t in texts], dtype=np.bytes_)


class FastTables:
    """The arrays a recommendation reads (read-only numpy arrays; memory-mapped in the workers).

    Parameters
    ----------
    user, item : numpy.ndarray of float32, shape (n_users, d), (n_items, d)
    item_sq : numpy.ndarray of float32, shape (n_items,)
        ``|v|^2`` of each item, computed as the model computes it.
    indptr, indices : numpy.ndarray
        The liked items (the model's ``user_items`` CSR).
    user_sorted, user_order : numpy.ndarray or None
        The raw user ids sorted, and the row of each; None for a model without a user id map (its
        ids are the rows).
    user_kind : {"int", "str", None}
    item_json : numpy.ndarray of bytes
        Each item's raw id as JSON text.
    distance : {"euclidean", "dot"}
    """

    def __init__(self, user: np.ndarray, item: np.ndarray, item_sq: np.ndarray, indptr: np.ndarray,
                 indices: np.ndarray, user_sorted: np.ndarray | None, user_order: np.ndarray | None,
                 user_kind: str | None, item_json: np.ndarray, distance: str) -> None:
        self.user, self.item, self.item_sq = user, item, item_sq
        self.indptr, self.indices = indptr, indices
        self.user_sorted, self.user_order, self.user_kind = user_sorted, user_order, user_kind
        self.item_json, self.distance = item_json, distance
        self.n_users, self.n_items = int(user.shape[0]), int(item.shape[0])
        self.max_batch = max(1, BATCH_BLOCK_BYTES // (4 * max(self.n_items, 1)))
        self._ones = np.ones(1024, dtype=np.float32)
        self._templates: dict[int, Any] = {}

    # ------------------------------------------------------------------ building
    @classmethod
    def arrays_of(cls, model: Any) -> dict[str, np.ndarray]:
        """The named arrays of :class:`FastTables` for ``model`` (what the serving cache stores)."""
        user, item = model.user_embeddings, model.item_embeddings
        liked = model.user_items
        sq = model._item_sq_norms() if hasattr(model, "_item_sq_norms") else np.einsum("ij,ij->i", item, item)
        out = {"user": user, "item": item, "item_sq": np.asarray(sq, dtype=np.float32),  # the model's own
               "indptr": liked.indptr, "indices": liked.indices}
        user_map, item_map = getattr(model, "user_map", None), getattr(model, "item_map", None)
        if user_map is not None:
            ids = np.asarray(user_map.ids)
            order = np.argsort(ids, kind="stable")
            out["user_sorted"], out["user_order"] = ids[order], order.astype(np.int64)
        raw_items = item_map.raw(np.arange(item.shape[0])) if item_map is not None else np.arange(item.shape[0])
        out["item_json"] = _id_json(raw_items)
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], *, user_kind: str | None, distance: str) -> "FastTables":
        views = {}
        for name, arr in arrays.items():
            view = arr.view(np.ndarray)  # a plain array (numpy.memmap's indexing runs Python code)
            view.flags.writeable = False  # shared: never written by a request
            views[name] = view
        return cls(views["user"], views["item"], views["item_sq"], views["indptr"], views["indices"],
                   views.get("user_sorted"), views.get("user_order"), user_kind if "user_sorted" in views else None,
                   views["item_json"], distance)

    @classmethod
    def from_model(cls, model: Any) -> "FastTables | None":
        """The tables of ``model`` in memory (views of its own arrays); None when the model is not
        one the fast path serves (:func:`fast_path_supported`)."""
        if not fast_path_supported(model):
            return None
        kind = getattr(getattr(model, "user_map", None), "kind", None)
        return cls.from_arrays(cls.arrays_of(model), user_kind=kind, distance=model.distance)

    # ------------------------------------------------------------------ lookup
    def user_row(self, text: str) -> int:
        """The row of a user's raw id text, or -1 when this lookup does not find it (then the full
        path decides: an unknown id, or a spelling only the id map's own rule resolves)."""
        if self.user_sorted is None or self.user_kind == "int":
            if not 0 < len(text) <= 19:
                return -1
            try:
                value = int(text)
            except ValueError:
                return -1
            if str(value) != text:  # canonical decimal text only ("007", "+7", "7_0" go the full way)
                return -1
            if self.user_sorted is None:
                return value if 0 <= value < self.n_users else -1
            if not -(1 << 63) <= value < (1 << 63):
                return -1
        elif self.user_kind == "str":
            if "\x00" in text:
                return -1
            value = text
        else:
            return -1
        pos = int(np.searchsorted(self.user_sorted, value))
        if pos >= self.user_sorted.shape[0] or self.user_sorted[pos] != value:
            return -1
        return int(self.user_order[pos])

    # ------------------------------------------------------------------ ranking
    def top(self, rows: Sequence[int], n: int, model: Any = None,
            approximate: bool = False) -> list[tuple[np.ndarray, np.ndarray]]:
        """(item rows, float32 scores) of each user row, best first, liked items left out: what
        ``model.recommend_raw`` returns, computed by the same functions on the same arrays
        (:func:`metricrec.models.retrieval.top_n` for one user, its matrix form for several
        (:meth:`_top_many`), :func:`~metricrec.models.approximate.approximate_top_n` with an index)."""
        from ..models.retrieval import top_n

        n = min(int(n), self.n_items)  # recommend_raw: never more than the catalogue
        rows = np.asarray(rows, dtype=np.int64)
        q = self.user[rows]  # the model's _user_queries: the rows, copied
        excl = self._liked_rows(rows) if approximate or rows.size == 1 else None
        if approximate:
            from ..models.approximate import approximate_top_n

            ids, scores = approximate_top_n(model, q, n, excl, None, None)
        elif rows.size == 1:  # the model's own one-query path
            ids, scores = top_n(q, self.item, n, distance=self.distance, cand_sq=self.item_sq, exclude=excl)
        elif rows.size < MIN_MATRIX_BATCH:  # a matrix product of 2 or 3 rows costs more than as many queries
            found = []
            for i in range(rows.size):
                found += self.top(rows[i:i + 1], n, model, approximate)
            return found
        else:
            ids, scores = self._top_many(q, rows, n)
        out = []
        for r_ids, r_scores in zip(ids, scores):
            keep = r_ids >= 0
            out.append((r_ids[keep], r_scores[keep]))
        return out

    def _top_many(self, q: np.ndarray, rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """:func:`~metricrec.models.retrieval.top_n`'s matrix form, operation by operation, but for
        the score block, computed as ``(items @ queries.T).T``: the same products, a BLAS call twice
        as fast for a few queries against many items as ``queries @ items.T`` (what makes a batch of
        :data:`MIN_MATRIX_BATCH` users or more cheaper than as many single queries). The candidates are the k best by that
        block and their scores the exact distances, ordered as ``top_n`` orders them; the items
        are the model's except where two candidates tie to the last bit of the block."""
        cand = self.item
        s = np.ascontiguousarray((cand @ q.T).T)
        if self.distance == "euclidean":
            s *= 2.0
            s -= self.item_sq
        starts, ends = self.indptr[rows], self.indptr[rows + 1]
        counts = (ends - starts).astype(np.int64)
        if counts.sum():
            cols = np.concatenate([self.indices[a:b] for a, b in zip(starts.tolist(), ends.tolist())])
            s[np.repeat(np.arange(rows.size), counts), cols] = -np.inf
        n_cand = cand.shape[0]
        k = min(n, n_cand)
        if k < n_cand:  # the k best, in ascending index order (ties then go to the lower index)
            part = np.sort(np.argpartition(s, n_cand - k, axis=1)[:, n_cand - k:], axis=1)
        else:
            part = np.broadcast_to(np.arange(k), (rows.size, k))
        vals = np.take_along_axis(s, part, 1)
        if self.distance == "euclidean":  # exact distances of the candidates
            diff = q[:, None, :] - cand[part]
            exact = -np.sqrt(np.einsum("ijk,ijk->ij", diff, diff)) + np.float32(0.0)
            vals = np.where(np.isfinite(vals), exact, -np.inf).astype(np.float32)
        order = np.argsort(-vals, axis=1, kind="stable")
        ids = np.take_along_axis(part, order, 1).astype(np.int64)
        vals = np.take_along_axis(vals, order, 1).astype(np.float32, copy=False)
        ids[~np.isfinite(vals)] = -1
        return ids, vals

    def _liked_rows(self, rows: np.ndarray) -> Any:
        """The liked items of ``rows`` as a CSR matrix (what ``model.user_items[rows]`` holds),
        without scipy's construction checks on every request: a matrix of that many rows is built
        once (checked) and its arrays are replaced by views of the shared ones (the event loop's
        thread alone uses it, for one call at a time)."""
        import scipy.sparse as sp

        if rows.size == 1:
            r = int(rows[0])
            a, b = int(self.indptr[r]), int(self.indptr[r + 1])
            indptr = np.array([0, b - a], dtype=self.indptr.dtype)
            indices = self.indices[a:b]
        else:
            starts, ends = self.indptr[rows], self.indptr[rows + 1]
            indptr = np.zeros(rows.size + 1, dtype=self.indptr.dtype)
            np.cumsum(ends - starts, out=indptr[1:])
            indices = np.concatenate([self.indices[a:b] for a, b in zip(starts.tolist(), ends.tolist())]) \
                if indptr[-1] else self.indices[:0]
        nnz = int(indptr[-1])
        if self._ones.shape[0] < nnz:
            self._ones = np.ones(max(nnz, 2 * self._ones.shape[0]), dtype=np.float32)
        m = self._templates.get(rows.size)
        if m is None:
            m = sp.csr_matrix((np.ones(0, np.float32), np.zeros(0, self.indices.dtype),
                               np.zeros(rows.size + 1, self.indptr.dtype)), shape=(rows.size, self.n_items))
            if len(self._templates) < 256:
                self._templates[rows.size] = m
        m.data, m.indices, m.indptr = self._ones[:nnz], indices, indptr
        return m


def render_recommendation(user_json: bytes, tables: FastTables, ids: np.ndarray, scores: np.ndarray) -> bytes:
    """The ``GET /recommend`` document as bytes: :func:`metricrec.serving.service._result` serialised
    as Starlette's ``JSONResponse`` does (compact separators, scores rounded to 6 decimals, a
    non-finite score as null), from prepared id texts: no per-item JSON encoding."""
    items = b",".join(tables.item_json[ids].tolist())
    values = np.round(scores.astype(np.float64), 6).tolist()
    text = repr(values)[1:-1].replace(" ", "")  # json.dumps writes each float as its repr, as a list's repr does
    if "n" in text:  # inf or nan (a damaged model; the scores FastTables.top keeps are finite): null
        text = ",".join(float.__repr__(v) if math.isfinite(v) else "null" for v in values)
    return b'{"user":' + user_json + b',"items":[' + items + b'],"scores":[' + text.encode("ascii") + b"]}"


class Batcher:
    """Collects the fast path's scoring requests and scores those of one event-loop turn together.

    ``submit`` returns a future; the first submission of a turn schedules one flush for the next
    turn (``loop.call_soon``), which scores everything submitted until then in as few calls as the
    distinct (model, n) pairs allow. ``enabled=False`` scores each request on its own (the
    measurement's baseline)."""

    def __init__(self, enabled: bool = True, on_batch: Callable[[int], None] | None = None) -> None:
        self.enabled = enabled
        self._pending: list[tuple[Any, FastTables, int, int, asyncio.Future]] = []
        self._on_batch = on_batch

    def submit(self, snap: Any, tables: FastTables, row: int, n: int) -> "asyncio.Future":
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._pending.append((snap, tables, row, n, fut))
        if len(self._pending) == 1:
            loop.call_soon(self._flush)
        return fut

    def score_now(self, snap: Any, tables: FastTables, row: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        if self._on_batch is not None:
            self._on_batch(1)
        return tables.top([row], n, snap.model, snap.approximate)[0]

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        groups: dict[tuple[int, int], list] = {}
        for entry in pending:
            groups.setdefault((id(entry[0]), entry[3]), []).append(entry)
        for group in groups.values():
            snap, tables, n = group[0][0], group[0][1], group[0][3]
            for lo in range(0, len(group), tables.max_batch):
                part = group[lo: lo + tables.max_batch]
                try:
                    if self._on_batch is not None:
                        self._on_batch(len(part))
                    found = tables.top([e[2] for e in part], n, snap.model, snap.approximate)
                except Exception as exc:  # noqa: BLE001 - each request answers the failure itself
                    for e in part:
                        if not e[4].done():
                            e[4].set_exception(exc)
                    continue
                for e, result in zip(part, found):
                    if not e[4].done():
                        e[4].set_result(result)


class FastRecommend:
    """ASGI middleware: the well-formed ``GET /recommend?user=ID[&n=N]`` answered here (see the
    module docstring), everything else passed to ``app``.

    Parameters
    ----------
    app : ASGI app
    holder : ModelHolder
        Its ``current`` snapshot is read once per request; a snapshot may carry its tables
        (``snap.tables``), else they are built from its model once and kept with it.
    max_n : int
    batching : bool
        Micro-batch concurrent requests (:class:`Batcher`).
    on_batch : callable, optional
        Called with the size of every scoring call (metrics).
    """

    def __init__(self, app: Any, holder: Any, max_n: int, batching: bool = True,
                 on_batch: Callable[[int], None] | None = None) -> None:
        self.app, self.holder, self.max_n = app, holder, max_n
        self.batcher = Batcher(batching, on_batch)
        #: ``connections() -> int``: this process's open connections, when the server says (``metricrec
        #: serve`` sets it from uvicorn's state). With fewer than MIN_MATRIX_BATCH no batch could reach
        #: the matrix product, so a request is scored at once instead of on the next turn of the loop.
        self.connections: Callable[[], int] | None = None
        self._snap: Any = None
        self._tables: FastTables | None = None

    def tables_for(self, snap: Any) -> FastTables | None:
        if snap is not self._snap:
            tables = getattr(snap, "tables", None)
            if tables is None:
                tables = FastTables.from_model(snap.model)
            self._snap, self._tables = snap, tables
        return self._tables

    def _parse(self, query: bytes) -> tuple[str, int] | None:
        """(user text, n) of a query string that is exactly ``user=...`` and optionally ``n=...``."""
        if not query:
            return None
        text = query.decode("latin-1")
        if "%" in text or "+" in text:  # escapes: as Starlette reads them
            pairs = parse_qsl(text, keep_blank_values=True)
        else:  # parse_qsl's result without its unquoting (nothing to unquote)
            pairs = [part.partition("=")[::2] for part in text.split("&") if part]
        user, n = None, 10
        seen_n = False
        for key, value in pairs:
            if key == "user" and user is None:
                user = value
            elif key == "n" and not seen_n:
                seen_n = True
                if not (value.isascii() and value.isdigit() and value[0] != "0" and len(value) <= 9):
                    return None
                n = int(value)
            else:
                return None
        if user is None or not 1 <= len(user) <= 1000 or not 1 <= n <= self.max_n:
            return None
        return user, n

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and scope["path"] == "/recommend":
            parsed = self._parse(scope.get("query_string", b""))
            if parsed is not None:
                snap = self.holder.current
                tables = self.tables_for(snap)
                if tables is not None:
                    row = tables.user_row(parsed[0])
                    if row >= 0:
                        status = 200
                        try:
                            if self.batcher.enabled and (self.connections is None
                                                         or self.connections() >= MIN_MATRIX_BATCH):
                                ids, scores = await self.batcher.submit(snap, tables, row, parsed[1])
                            else:
                                ids, scores = self.batcher.score_now(snap, tables, row, parsed[1])
                            body = render_recommendation(json.dumps(parsed[0], ensure_ascii=False).encode("utf-8"),
                                                         tables, ids, scores)
                        except Exception as exc:  # noqa: BLE001 - as the full path answers an unexpected failure
                            log.error("internal error on GET /recommend", exc_info=exc)
                            status, body = 500, _INTERNAL_ERROR
                        await send({"type": "http.response.start", "status": status,
                                    "headers": [(b"content-length", str(len(body)).encode("ascii")), *_JSON_HEADERS]})
                        await send({"type": "http.response.body", "body": body})
                        return
        await self.app(scope, receive, send)
