"""`metricrec serve`: an HTTP service over a saved model (FastAPI + uvicorn, extra ``serve``)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any

from ..errors import ConfigError
from .commands import COMMANDS

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help=COMMANDS["serve"].help)
    p.add_argument("--model", required=True,
                   help="a folder written by 'metricrec train' (its model/) or model.save(); its index/ is used")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
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
    p.add_argument("--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug"))
    p.add_argument("--no-access-log", action="store_true",
                   help="no access log (default: one JSON line per request on stderr: method, path, query, status, "
                        "ms, bytes, client)")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError as exc:
        raise ImportError("metricrec serve needs FastAPI and uvicorn: pip install metricrec[serve]") from exc
    from ..serving.app import create_app
    from ..serving.service import Limits, ModelHolder, load_serving_model

    for name in ("port", "max_n", "max_items", "max_body_bytes", "max_users"):
        value = getattr(args, name)
        if value < 1 or (name == "port" and value > 65535):
            raise ConfigError(f"--{name.replace('_', '-')} is out of range: {value}")
    if args.host not in _LOOPBACK:
        print(f"metricrec serve: warning: binding {args.host}: the service (and POST /reload, unless "
              "--no-reload-endpoint) is reachable from other machines", file=sys.stderr)
    holder = ModelHolder(args.model, lambda path: load_serving_model(path, exact=args.exact,
                                                                     warm_up=not args.no_warm_up))
    app = create_app(holder=holder, limits=Limits(args.max_n, args.max_items, args.max_body_bytes, args.max_users),
                     reload_endpoint=not args.no_reload_endpoint)
    _install_sighup(holder)
    if not args.no_access_log:
        _log_access_to_stderr()
    h = holder.current.health()
    print(f"metricrec serve: http://{args.host}:{args.port} model {h['model']} ({h['model_type']}, "
          f"{h['n_users']} users x {h['n_items']} items, index {h['index'] or 'none: exact'}, "
          f"loaded in {h['load_seconds']} s)", flush=True)
    if (h.get("data_source") or {}).get("fallback_for"):
        from .sources import model_data_warning
        print(f"metricrec serve: {model_data_warning(holder.current.model)}", file=sys.stderr, flush=True)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False,
                            server_header=False, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run()
    return 0


def _log_access_to_stderr() -> None:
    """The access log's JSON lines (:data:`metricrec.serving.app.access_log`) on stderr, one per request."""
    import logging

    from ..serving.app import access_log

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access_log.addHandler(handler)
    access_log.setLevel(logging.INFO)
    access_log.propagate = False


def _install_sighup(holder: Any) -> None:
    """SIGHUP reloads the model in a background thread (the event loop never waits on a load)."""
    if not hasattr(signal, "SIGHUP"):  # pragma: no cover - Windows
        return

    def reload_in_background() -> None:
        from ..serving.service import RequestError

        try:
            snap = holder.reload()
            print(f"metricrec serve: SIGHUP: reloaded {snap.path} (generation {snap.generation}, "
                  f"{snap.load_seconds:.3f} s)", file=sys.stderr, flush=True)
        except RequestError as exc:
            print(f"metricrec serve: SIGHUP: {exc.detail}", file=sys.stderr, flush=True)

    signal.signal(signal.SIGHUP, lambda signum, frame: threading.Thread(target=reload_in_background,
                                                                        daemon=True).start())
