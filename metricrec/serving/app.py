"""The HTTP service (FastAPI, extra ``serve``): routes over :mod:`metricrec.serving.service`.

=====================  ======================================================================
``GET /recommend``     ``?user=ID&n=10``: top-n items for a known user (liked items filtered)
``GET /similar-items`` ``?item=ID&n=10``: the n items nearest to an item (itself left out)
``POST /recommend``    ``{"items": [ID, ...], "n": 10}``: fold a new user in, recommend
``GET /health``        model path, sizes, load time, index kind
``POST /reload``       load the model at the same path again and swap it in
``GET /openapi.json``  the schemas of all of the above (``GET /docs``: the same as a page)
=====================  ======================================================================

Ids are JSON strings in every response (an integer id ``196`` is ``"196"``); a request may send
one as a string or as a JSON number, which stands for its decimal text
(:func:`~metricrec.serving.service.request_id`). The response schemas are in
:mod:`metricrec.serving.schema`; the routes build their JSON without a validation pass.

Every refused request gets a 4xx JSON body ``{"error": CODE, "detail": MESSAGE}``; an
unexpected failure a 500 with the same shape and no traceback (logged by the server). Bodies
over ``Limits.max_body_bytes`` are refused (413) before they are read in full or parsed.
"""

# no `from __future__ import annotations`: FastAPI reads the route signatures' (local) types
import json
import logging
import os
from typing import Any, Callable

from .. import __version__
from ..errors import MetricrecError, NotFittedError
from .service import (Limits, ModelHolder, RequestError, recommend_new_user, recommend_user, parse_n,
                      similar_items)

__all__ = ["create_app"]

log = logging.getLogger("metricrec.serving")


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


def create_app(model_path: str | os.PathLike | None = None, *, holder: ModelHolder | None = None,
               limits: Limits = Limits(), loader: Callable[[str], Any] | None = None,
               reload_endpoint: bool = True) -> Any:
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
    app = fastapi.FastAPI(title="metricrec", version=__version__, docs_url="/docs", redoc_url=None,
                          openapi_url="/openapi.json")
    app.state.holder, app.state.limits = holder, limits
    _add_error_handlers(app)
    _add_routes(app, holder, limits, reload_endpoint)
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    return app


def _add_routes(app: Any, holder: ModelHolder, limits: Limits, reload_endpoint: bool) -> None:
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse  # returned as is: no jsonable_encoder or response_model pass

    from . import schema

    def required(request: Request, name: str) -> str:
        value = request.query_params.get(name)
        if value is None or value == "":
            raise RequestError(422, f"missing_{name}", f"query parameter {name!r} is required")
        return value

    errors = schema.ERROR_RESPONSES

    @app.get("/health", response_model=schema.Health, responses=errors["health"])
    def health() -> JSONResponse:
        return JSONResponse(holder.current.health())

    @app.get("/recommend", response_model=schema.RecommendResponse, responses=errors["get"],
             openapi_extra=schema.query_parameters("user", "user"))
    def recommend(request: Request) -> JSONResponse:  # sync: runs in the thread pool
        snap = holder.current  # this request's model, whatever a reload does meanwhile
        n = parse_n(request.query_params.get("n", "10"), limits)
        return JSONResponse(recommend_user(snap, required(request, "user"), n))

    @app.get("/similar-items", response_model=schema.SimilarItemsResponse, responses=errors["get"],
             openapi_extra=schema.query_parameters("item", "query item"))
    def similar(request: Request) -> JSONResponse:
        snap = holder.current
        n = parse_n(request.query_params.get("n", "10"), limits)
        return JSONResponse(similar_items(snap, required(request, "item"), n))

    @app.post("/recommend", response_model=schema.NewUserResponse, responses=errors["post"],
              openapi_extra=schema.new_user_body())
    async def recommend_new(request: Request) -> JSONResponse:
        ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if ctype != "application/json" and not ctype.endswith("+json"):
            raise RequestError(415, "unsupported_media_type", f"the body must be application/json, got {ctype!r}")
        body = _parse_json(await request.body())
        snap = holder.current
        return JSONResponse(await run_in_threadpool(recommend_new_user, snap, body, limits))

    if reload_endpoint:
        @app.post("/reload", response_model=schema.Health, responses=errors["reload"])
        async def reload() -> JSONResponse:
            return JSONResponse((await run_in_threadpool(holder.reload)).health())


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
        codes = {404: "not_found", 405: "method_not_allowed"}
        detail = f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405) else str(exc.detail)
        return _error(exc.status_code, codes.get(exc.status_code, f"http_{exc.status_code}"), detail)

    @app.exception_handler(RequestValidationError)
    async def on_validation(request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()))
        return _error(422, "invalid_request", f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(MetricrecError)
    async def on_metricrec(request, exc: MetricrecError):
        if isinstance(exc, NotFittedError):
            return await on_internal(request, exc)
        return _error(422, "invalid_request", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)

    @app.exception_handler(Exception)
    async def on_internal(request, exc: Exception):
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error(500, "internal_error", "internal error (details are in the server log)")
