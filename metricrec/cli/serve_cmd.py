"""`metricrec serve`: an HTTP service over a saved model (FastAPI + uvicorn, extra ``serve``), in one or
more worker processes (:mod:`metricrec.serving.workers`)."""

from __future__ import annotations

import argparse
import errno
import sys
from pathlib import Path

from ..errors import ConfigError
from .commands import COMMANDS

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help=COMMANDS["serve"].help)
    p.add_argument("--model", required=True,
                   help="a folder written by 'metricrec train' (its model/) or model.save(); its index/ is used")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes sharing the socket and one memory-mapped copy of the model "
                        "(default: the usable cores)")
    p.add_argument("--threads", type=int, default=1,
                   help="threads per worker for the numerical libraries (torch, BLAS, faiss, numba; default 1: "
                        "the workers are the parallelism)")
    p.add_argument("--exact", action="store_true", help="exact retrieval even when the model has an ANN index")
    p.add_argument("--max-n", type=int, default=1000, help="largest n a request may ask for (default 1000)")
    p.add_argument("--max-items", type=int, default=1000,
                   help="most item ids in one list of a request: liked items, include, exclude (default 1000)")
    p.add_argument("--max-users", type=int, default=1000, help="most users in a POST /recommend/batch (default 1000)")
    p.add_argument("--max-body-bytes", type=int, default=1_000_000, help="largest request body (default 1000000)")
    p.add_argument("--no-warm-up", action="store_true",
                   help="skip the one recommendation and fold-in run at load (then paid by the first requests)")
    p.add_argument("--no-reload-endpoint", action="store_true",
                   help="no POST /reload (SIGHUP still reloads)")
    p.add_argument("--no-batching", action="store_true",
                   help="score each GET /recommend on its own instead of the concurrent ones in one call")
    p.add_argument("--cache-dir", default=None,
                   help="the serving cache (the model's tables as .npy files the workers map; default: a "
                        "temporary folder removed at exit); a kept folder is reused when the model is unchanged")
    p.add_argument("--graceful-timeout", type=float, default=30.0,
                   help="seconds a SIGTERM waits for the requests in flight before they are cancelled (default 30)")
    p.add_argument("--backlog", type=int, default=2048, help="the socket's queue of connections not yet accepted")
    p.add_argument("--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug"))
    p.add_argument("--no-access-log", action="store_true",
                   help="no access log (default: one JSON line per request on stderr: method, path, query, status, "
                        "ms, bytes, client)")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    """Check the flags, then run the supervisor (:func:`metricrec.serving.workers.supervise`): no
    numerical library is imported in this process, the workers load the model."""
    import importlib.util

    if any(importlib.util.find_spec(name) is None for name in ("fastapi", "uvicorn")):  # found, not imported here
        raise ImportError("metricrec serve needs FastAPI and uvicorn: pip install metricrec[serve]")
    from ..serving.workers import supervise, usable_cores

    for name in ("port", "max_n", "max_items", "max_body_bytes", "max_users", "threads", "backlog"):
        value = getattr(args, name)
        if value < 1 or (name == "port" and value > 65535):
            raise ConfigError(f"--{name.replace('_', '-')} is out of range: {value}")
    workers = usable_cores() if args.workers is None else args.workers
    if not 1 <= workers <= 512:
        raise ConfigError(f"--workers is out of range: {workers}")
    if not args.graceful_timeout >= 0:
        raise ConfigError(f"--graceful-timeout is out of range: {args.graceful_timeout}")
    model = Path(args.model)
    if not model.exists():
        raise ConfigError(f"--model: no model at {args.model}")
    if args.host not in _LOOPBACK:
        print(f"metricrec serve: warning: binding {args.host}: the service (and POST /reload, unless "
              "--no-reload-endpoint) is reachable from other machines", file=sys.stderr)
    settings = {"model": args.model, "host": args.host, "port": args.port, "exact": args.exact,
                "max_n": args.max_n, "max_items": args.max_items, "max_users": args.max_users,
                "max_body_bytes": args.max_body_bytes, "warm_up": not args.no_warm_up,
                "reload_endpoint": not args.no_reload_endpoint, "batching": not args.no_batching,
                "cache_dir": str(Path(args.cache_dir).resolve()) if args.cache_dir else None,
                "graceful_timeout": args.graceful_timeout, "backlog": args.backlog, "threads": args.threads,
                "log_level": args.log_level, "access_log": not args.no_access_log}
    try:
        return supervise(settings, workers)
    except OSError as exc:
        if exc.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            raise ConfigError(f"cannot listen on {args.host}:{args.port} ({exc.strerror})") from None
        raise
