"""The service's Prometheus metrics (prometheus-client, extra ``serve``) and the ASGI middleware that
counts every request.

=============================================  ==========================================================
``metricrec_http_requests_total``              counter: ``route``, ``method``, ``status``
``metricrec_http_request_duration_seconds``    histogram: ``route``; from the request to its last byte sent
``metricrec_http_errors_total``                counter: ``route``, ``kind`` ("client": 4xx, "server": 5xx
                                               or an exception before a response)
``metricrec_http_requests_in_flight``          gauge (the sum over the live workers)
``metricrec_recommend_batch_size``             histogram: users scored per call on the fast path
``metricrec_model_generation``                 gauge: the model generation served (max over workers)
``metricrec_model_reloads_total``              counter: ``outcome`` ("ok", "failed")
=============================================  ==========================================================

``route`` is the route's path for the service's own routes and ``"other"`` for anything else (an
unknown path never becomes a label value of its own). Under ``metricrec serve --workers N`` each
worker writes its values to ``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's multiprocess mode,
set up by the supervisor) and ``GET /metrics`` on any worker reads them all: the counts are the
service's, not one worker's. Without that variable (an app made by :func:`create_app` in a
process of its own) the values are this process's.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

__all__ = ["ROUTES", "ServiceMetrics", "MetricsMiddleware", "service_metrics"]

#: The label value of each known path (anything else is "other").
ROUTES = {p: p for p in ("/recommend", "/recommend/batch", "/similar-items", "/health", "/reload", "/metrics",
                         "/openapi.json", "/docs")}
_METHODS = ("GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS")
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ServiceMetrics:
    """The metric objects of one process (:func:`service_metrics` makes one per process)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        # multiprocess: the values live in the shared folder; a registry is built per scrape
        self.registry = None if self.multiprocess else CollectorRegistry(auto_describe=True)
        reg = {"registry": self.registry}
        self.requests = Counter("metricrec_http_requests_total", "HTTP requests answered.",
                                ("route", "method", "status"), **reg)
        self.latency = Histogram("metricrec_http_request_duration_seconds",
                                 "Time from the request to the last byte of its response.", ("route",),
                                 buckets=LATENCY_BUCKETS, **reg)
        self.errors = Counter("metricrec_http_errors_total", "Requests answered with an error status (client: 4xx, "
                              "server: 5xx or no response).", ("route", "kind"), **reg)
        self.in_flight = Gauge("metricrec_http_requests_in_flight", "Requests being answered.",
                               multiprocess_mode="livesum", **reg)
        self.batch = Histogram("metricrec_recommend_batch_size", "Users scored in one call on the GET /recommend "
                               "fast path (micro-batching).", buckets=BATCH_BUCKETS, **reg)
        self.generation = Gauge("metricrec_model_generation", "Generation of the model served (successful loads).",
                                multiprocess_mode="livemax", **reg)
        self.reloads = Counter("metricrec_model_reloads_total", "Reloads of the model, by outcome.", ("outcome",), **reg)
        self._children: dict[tuple, Any] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            kind = "server" if status >= 500 else "client" if status >= 400 else None
            children = (self.requests.labels(route, method, str(status)), self.latency.labels(route),
                        None if kind is None else self.errors.labels(route, kind))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)
        if children[2] is not None:
            children[2].inc()

    def render(self) -> tuple[bytes, str]:
        """(the exposition text, its content type)."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        if self.multiprocess:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


_METRICS: ServiceMetrics | None = None


def service_metrics() -> ServiceMetrics:
    """This process's :class:`ServiceMetrics` (made on first use)."""
    global _METRICS
    if _METRICS is None:
        _METRICS = ServiceMetrics()
    return _METRICS


class MetricsMiddleware:
    """ASGI middleware: every HTTP request counted and timed in :class:`ServiceMetrics`."""

    def __init__(self, app: Any, metrics: ServiceMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = 0
        metrics = self.metrics

        async def sending(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        metrics.in_flight.inc()
        try:
            await self.app(scope, receive, sending)
        finally:
            metrics.in_flight.dec()
            method = scope.get("method", "")
            metrics.observe(ROUTES.get(scope.get("path", ""), "other"), method if method in _METHODS else "other",
                            status or 500, time.perf_counter() - t0)
