"""The HTTP service (FastAPI, extra ``serve``): routes over :mod:`metricrec.serving.service`.

=====================  ======================================================================
``GET /recommend``     ``?user=ID&n=10``: top-n items for a known user (liked items filtered;
                       ``&include=ID...``/``&exclude=ID...`` restrict or filter the items)
``GET /similar-items`` ``?item=ID&n=10``: the n items nearest to an item (itself left out)
``POST /recommend``    ``{"items": [ID, ...], "n": 10}``: fold a new user in, recommend
``POST /recommend/batch`` ``{"users": [ID, ...], "n": 10}``: several known users in one scoring call
``GET /health``        model path, sizes, load time, index kind
``POST /reload``       load the model at the same path again and swap it in
``GET /metrics``       Prometheus metrics (:mod:`metricrec.serving.metrics`; not in the OpenAPI document)
``GET /openapi.json``  the schemas of all of the above (``GET /docs``: the same as a page)
=====================  ======================================================================

Ids are JSON strings in every response (an integer id ``196`` is ``"196"``); a request may send
one as a string or as a JSON number, which stands for its decimal text
(:func:`~metricrec.serving.service.request_id`). Requests are validated by FastAPI against the
pydantic models of :mod:`metricrec.serving.schema` (query parameters and bodies), whose errors are
answered in the service's own codes (:func:`_validation_error`); the responses are built as JSON
directly, without a validation pass (the models document them on ``/openapi.json``).

Every refused request gets a 4xx JSON body ``{"error": CODE, "detail": MESSAGE}``; an
unexpected failure a 500 with the same shape and no traceback (logged by the server). Bodies
over ``Limits.max_body_bytes`` are refused (413) before they are read in full or parsed.

The common ``GET /recommend?user=ID&n=N`` is answered before FastAPI by
:class:`~metricrec.serving.fastpath.FastRecommend` (the same answer, at a fraction of the cost,
concurrent requests scored in one call); every other request, and every request it does not
recognise as well-formed, goes through FastAPI as described above. The middleware from the outside
in: access log, metrics, the fast path, the body limit, FastAPI.
"""

# no `from __future__ import annotations`: FastAPI reads the route signatures' (local) types
import json
import logging
import os
from typing import Any, Callable

from .. import __version__
from ..errors import MetricrecError, NotFittedError
from .service import (Limits, ModelHolder, RequestError, parse_n, recommend_new_user, recommend_user,
                      recommend_users, similar_items)

__all__ = ["create_app"]

log = logging.getLogger("metricrec.serving")
#: One JSON line per request at INFO (``metricrec serve`` prints them to stderr unless --no-access-log).
access_log = logging.getLogger("metricrec.access")


def _fastapi():
    try:
        import fastapi
        import starlette  # noqa: F401
    except ImportError as exc:
        raise ImportError("the HTTP service needs FastAPI and uvicorn: pip install metricrec[serve]") from exc
    return fastapi


class BodyTooLarge(Exception):
    """A request body over the limit (raised while it is being received)."""


def _error(status: int, error: str, detail: str):
    from starlette.responses import JSONResponse

    return JSONResponse({"error": error, "detail": detail}, status_code=status)


class BodyLimit:
    """ASGI middleware: 413 for a declared ``Content-Length`` over ``max_bytes`` before anything is
    read, and :class:`BodyTooLarge` as soon as a streamed (chunked) body passes it."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None:
            text = declared.decode("latin-1").strip()
            if not text.isdigit():
                return await _error(400, "invalid_header", "Content-Length must be a number")(scope, receive, send)
            if int(text) > self.max_bytes:
                detail = f"the body has {int(text)} bytes, the limit is {self.max_bytes}"
                return await _error(413, "body_too_large", detail)(scope, receive, send)
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(f"the body is over the limit of {self.max_bytes} bytes")
            return message

        await self.app(scope, limited, send)


class AccessLog:
    """ASGI middleware: one structured line per HTTP request on :data:`access_log` -- ``{"ts", "method",
    "path", "query", "status", "ms", "bytes", "client"}`` as JSON -- written after the response is sent.
    Costs nothing when the logger is not enabled for INFO."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or not access_log.isEnabledFor(logging.INFO):
            return await self.app(scope, receive, send)
        import time

        t0, status, size = time.perf_counter(), 0, 0

        async def sending(message: dict) -> None:
            nonlocal status, size
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                size += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            client = scope.get("client")
            access_log.info(json.dumps({
                "ts": round(time.time(), 3), "method": scope.get("method"), "path": scope.get("path"),
                "query": scope.get("query_string", b"").decode("latin-1")[:500], "status": status or 500,
                "ms": round((time.perf_counter() - t0) * 1000, 3), "bytes": size,
                "client": f"{client[0]}:{client[1]}" if client else None}))


def create_app(model_path: str | os.PathLike | None = None, *, holder: ModelHolder | None = None,
               limits: Limits = Limits(), loader: Callable[[str], Any] | None = None,
               reload_endpoint: bool = True, batching: bool = True, metrics: bool = True) -> Any:
    """The FastAPI application serving one model.

    Parameters
    ----------
    model_path : path, optional
        The model to load (once, now); or pass ``holder``.
    holder : ModelHolder, optional
        An already loaded model holder (shared with e.g. a SIGHUP handler).
    limits : Limits
        Largest ``n``, number of liked items and body size.
    loader : callable, optional
        ``loader(path) -> model`` (default: the model and its ANN index).
    reload_endpoint : bool
        Offer ``POST /reload``.
    batching : bool
        Score concurrent ``GET /recommend`` requests together (:class:`~metricrec.serving.fastpath.Batcher`).
    metrics : bool
        Count requests and offer ``GET /metrics`` (needs prometheus-client; skipped without it).

    Returns
    -------
    fastapi.FastAPI
        With ``app.state.holder`` (the :class:`ModelHolder`) and ``app.state.limits``.
    """
    fastapi = _fastapi()
    if holder is None:
        if model_path is None:
            raise TypeError("create_app needs model_path or holder")
        holder = ModelHolder(model_path, loader)
    # strict_content_type off: a body without a Content-Type is read as JSON, as before FastAPI 0.1xx made
    # that an error (a body sent with another type is still a 415)
    app = _service_app_class(fastapi)(title="metricrec", version=__version__, docs_url="/docs", redoc_url=None,
                                      openapi_url="/openapi.json", strict_content_type=False)
    app.state.holder, app.state.limits = holder, limits
    registry = _service_metrics(holder) if metrics else None
    _add_error_handlers(app)
    _add_routes(app, holder, limits, reload_endpoint)
    if registry is not None:
        _add_metrics_route(app, registry)
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    # in front of FastAPI (outermost first): the access log, the metrics, the fast path
    from .fastpath import FastRecommend

    front: Any = FastRecommend(app.fastapi_call, holder=holder, max_n=limits.max_n, batching=batching,
                               on_batch=None if registry is None else registry.batch.observe)
    app.state.fast_path = front
    if registry is not None:
        from .metrics import MetricsMiddleware

        front = MetricsMiddleware(front, metrics=registry)
    app.front = AccessLog(front)  # outermost: it times and logs the refused bodies too
    return app


_APP_CLASS: Any = None


def _service_app_class(fastapi: Any) -> type:
    """``fastapi.FastAPI`` whose requests pass :attr:`front` (access log, metrics, fast path) before
    FastAPI's own stack: the fast path's answers pay for none of it."""
    global _APP_CLASS
    if _APP_CLASS is None:
        class ServiceApp(fastapi.FastAPI):
            front: Any = None

            async def fastapi_call(self, scope: dict, receive: Callable, send: Callable) -> None:
                await fastapi.FastAPI.__call__(self, scope, receive, send)

            async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
                if self.front is None or scope["type"] != "http":
                    return await fastapi.FastAPI.__call__(self, scope, receive, send)
                await self.front(scope, receive, send)

        _APP_CLASS = ServiceApp
    return _APP_CLASS


def _service_metrics(holder: ModelHolder) -> Any:
    """This process's metrics (None without prometheus-client), following the holder's reloads."""
    try:
        from .metrics import service_metrics

        registry = service_metrics()
    except ImportError:
        log.warning("prometheus-client is not installed: no GET /metrics (pip install metricrec[serve])")
        return None
    registry.generation.set(holder.current.generation)

    def on_reload(ok: bool, snap: Any) -> None:
        registry.reloads.labels("ok" if ok else "failed").inc()
        if snap is not None:
            registry.generation.set(snap.generation)

    if hasattr(holder, "observe"):
        holder.observe(on_reload)
    return registry


def _add_metrics_route(app: Any, registry: Any) -> None:
    from starlette.responses import Response

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        """Prometheus text format: request counts, latency histograms, errors (all workers)."""
        body, content_type = registry.render()
        return Response(body, media_type=content_type)


def _add_routes(app: Any, holder: ModelHolder, limits: Limits, reload_endpoint: bool) -> None:
    from typing import Annotated, Optional

    from fastapi import Query
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse  # returned as is: no jsonable_encoder or response_model pass

    from . import schema

    errors = schema.ERROR_RESPONSES
    # the query parameters, validated by FastAPI (errors: _validation_error)
    n_query = Annotated[int, Query(ge=1, le=limits.max_n, description=f"How many items (1 to {limits.max_n}).")]
    user_query = Annotated[str, Query(min_length=1, max_length=schema.MAX_ID_LENGTH, description="The user's raw id.")]
    item_query = Annotated[str, Query(min_length=1, max_length=schema.MAX_ID_LENGTH,
                                      description="The query item's raw id.")]
    include_query = Annotated[Optional[list[str]], Query(max_length=limits.max_items, description=(
        "Only these items may be recommended (repeat the parameter: include=A&include=B)."))]
    exclude_query = Annotated[Optional[list[str]], Query(max_length=limits.max_items, description=(
        "These items are never recommended (repeat the parameter), besides the user's liked items."))]

    @app.get("/health", response_model=schema.Health, responses=errors["health"])
    def health() -> JSONResponse:
        return JSONResponse(holder.current.health())

    @app.get("/recommend", response_model=schema.RecommendResponse, responses=errors["get"])
    def recommend(user: user_query, n: n_query = 10, include: include_query = None,
                  exclude: exclude_query = None) -> JSONResponse:  # sync: runs in the thread pool
        """The top n items of a known user, its liked items left out."""
        snap = holder.current  # this request's model, whatever a reload does meanwhile
        return JSONResponse(recommend_user(snap, user, n, include=include, exclude=exclude, limits=limits))

    @app.get("/similar-items", response_model=schema.SimilarItemsResponse, responses=errors["get"])
    def similar(item: item_query, n: n_query = 10) -> JSONResponse:
        """The n items nearest to an item, the item itself left out."""
        return JSONResponse(similar_items(holder.current, item, n))

    @app.post("/recommend", response_model=schema.NewUserResponse, responses=errors["post"])
    def recommend_new(body: schema.NewUserRequest) -> JSONResponse:
        """Fold a new user in from the items it likes and recommend n items it has not liked."""
        return JSONResponse(recommend_new_user(holder.current, body.model_dump(exclude_none=True), limits))

    @app.post("/recommend/batch", response_model=schema.BatchResponse, responses=errors["post"])
    def recommend_batch(body: schema.BatchRequest) -> JSONResponse:
        """The top n items of each of several known users, scored in one call."""
        n = parse_n(body.n, limits, json_value=True)
        return JSONResponse(recommend_users(holder.current, body.users, n, include=body.include,
                                            exclude=body.exclude, limits=limits))

    if reload_endpoint:
        @app.post("/reload", response_model=schema.Health, responses=errors["reload"])
        async def reload() -> JSONResponse:
            """Load the model at the same path again and swap it in (requests in flight finish on the old one)."""
            return JSONResponse((await run_in_threadpool(holder.reload)).health())


#: Error codes of the body fields whose elements are ids: a bad element of ``items`` is ``invalid_item``.
_ELEMENT_CODES = {"items": "item", "users": "user", "include": "item", "exclude": "item"}


def _validation_error(request: Any, errors: list[dict[str, Any]], limits: Limits) -> tuple[int, str, str]:
    """(status, code, detail) of a request FastAPI's validation refused: the first error, in the
    service's codes (``missing_user``, ``invalid_n``, ``malformed_json``, ...)."""
    first = errors[0] if errors else {}
    loc = tuple(first.get("loc", ()))
    kind, msg, given = first.get("type", ""), first.get("msg", "invalid request"), first.get("input")
    if loc[:1] == ("body",):
        ctype = request.headers.get("content-type")
        if ctype:
            main = ctype.split(";")[0].strip().lower()
            if main != "application/json" and not main.endswith("+json"):
                return 415, "unsupported_media_type", f"the body must be application/json, got {main!r}"
        if kind == "json_invalid":
            reason = (first.get("ctx") or {}).get("error", "JSON decode error")
            return 400, "malformed_json", f"the body is not valid JSON ({reason})"
        if len(loc) == 1:
            if kind == "missing":
                return 400, "malformed_json", "the body is empty; expected a JSON object"
            return 422, "invalid_body", f"the body must be a JSON object, got {type(given).__name__}"
        field = str(loc[1])
        if kind == "extra_forbidden":
            return 422, "invalid_body", f"unknown field {field!r} ({msg.lower()})"
        if field == "n":
            return 422, "invalid_n", f"n must be an integer in [1, {limits.max_n}], got {given!r}"
        if len(loc) > 2 and field in _ELEMENT_CODES:
            what = _ELEMENT_CODES[field]
            return 422, f"invalid_{what}", (f"{field}[{loc[2]}]: {what} ids must be strings or integers (whole "
                                            f"JSON numbers up to 2**53), got {given!r}")
        return 422, f"invalid_{field}", f"{field}: {msg}"
    if loc[:1] == ("query",) and len(loc) > 1:
        name = str(loc[1])
        if name == "n":
            return 422, "invalid_n", f"n must be an integer in [1, {limits.max_n}], got {given!r}"
        if kind == "missing" or (kind == "string_too_short" and given == ""):
            return 422, f"missing_{name}", f"query parameter {name!r} is required"
        if name in ("include", "exclude") and kind == "too_long":
            return 422, "too_many_items", f"{name}: at most {limits.max_items} items"
        return 422, f"invalid_{name}", f"{name}: {msg}"
    where = ".".join(str(x) for x in loc)
    return 422, "invalid_request", f"{where}: {msg}"


def _parse_json(raw: bytes) -> Any:
    if not raw.strip():
        raise RequestError(400, "malformed_json", "the body is empty; expected a JSON object")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise RequestError(400, "malformed_json", f"the body is not valid JSON ({reason})") from None


def _add_error_handlers(app: Any) -> None:
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    @app.exception_handler(RequestError)
    async def on_request_error(request, exc: RequestError):
        return _error(exc.status, exc.error, exc.detail)

    @app.exception_handler(BodyTooLarge)
    async def on_too_large(request, exc: BodyTooLarge):
        return _error(413, "body_too_large", str(exc))

    @app.exception_handler(HTTPException)
    async def on_http(request, exc: HTTPException):
        if isinstance(exc.__cause__, BodyTooLarge):  # raised while FastAPI read a streamed body
            return _error(413, "body_too_large", str(exc.__cause__))
        if exc.status_code == 400 and request.method == "POST":  # FastAPI could not parse the body (e.g. nested too deep)
            return _error(400, "malformed_json", f"the body is not valid JSON ({exc.detail})")
        codes = {404: "not_found", 405: "method_not_allowed"}
        detail = f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405) else str(exc.detail)
        return _error(exc.status_code, codes.get(exc.status_code, f"http_{exc.status_code}"), detail)

    @app.exception_handler(RequestValidationError)
    async def on_validation(request, exc: RequestValidationError):
        return _error(*_validation_error(request, list(exc.errors()), app.state.limits))

    @app.exception_handler(MetricrecError)
    async def on_metricrec(request, exc: MetricrecError):
        if isinstance(exc, NotFittedError):
            return await on_internal(request, exc)
        return _error(422, "invalid_request", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)

    @app.exception_handler(Exception)
    async def on_internal(request, exc: Exception):
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error(500, "internal_error", "internal error (details are in the server log)")
