"""``metricrec serve --workers N``: a supervisor process and N worker processes sharing one socket,
one memory-mapped copy of the model and one model generation.

The **supervisor** (the ``metricrec serve`` process) imports no numerics: it binds the socket,
starts the workers (``python -m metricrec.serving.workers RUN_DIR FD``, each a fresh interpreter
with its thread counts set in its environment before anything is imported), prints the address
once every worker is ready, restarts a worker that dies, forwards SIGHUP (a reload) to one worker,
and on SIGTERM or SIGINT asks every worker to finish its requests in flight and exit, then exits 0.

Each **worker** runs uvicorn on the inherited socket (the kernel hands each new connection to one
of them). The workers share a run folder (a temporary folder the supervisor removes at exit):

=======================  ====================================================================
``settings.json``        the command's settings
``state.json``           the generation every worker must serve and its snapshot (the serving
                         cache's folder, :mod:`metricrec.serving.snapshot`)
``reload.lock``          one reload at a time (``flock``)
``workers/<pid>.json``   each worker's generation, written after every swap
``prometheus/``          ``PROMETHEUS_MULTIPROC_DIR``: the metrics of all workers
``cache/``               the serving cache, unless ``--cache-dir`` names another folder
=======================  ====================================================================

A **reload** (``POST /reload`` on any worker, or SIGHUP) is done by the worker that received it:
under the lock it snapshots the model folder and loads the snapshot -- any failure is the 409
``reload_failed`` and changes nothing -- then swaps it in, writes ``state.json`` with the next
generation and waits until every worker reports that generation before it answers. The other
workers poll ``state.json`` (every 50 ms) and swap to the new snapshot when it appears. Each swap
is one reference assignment: a request uses the model that was current when it started, so no
request is dropped or answered by a half-loaded model, and once the reload has answered, every
worker answers with the new model.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

__all__ = ["RunDir", "SharedModelHolder", "supervise", "usable_cores", "worker_main"]

#: Environment variables that set the thread pools of the numerical libraries (read at their import).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
_POLL_SECONDS = 0.05


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _write_json(path: Path, doc: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - another user's process of that pid
        return True
    return True


class RunDir:
    """The folder the supervisor and its workers share (see the module docstring)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.state_path = self.path / "state.json"
        self.workers_path = self.path / "workers"

    @classmethod
    def create(cls, settings: dict[str, Any]) -> "RunDir":
        run = cls(tempfile.mkdtemp(prefix="metricrec-serve-"))
        (run.path / "workers").mkdir()
        (run.path / "prometheus").mkdir()
        _write_json(run.path / "settings.json", settings)
        return run

    def settings(self) -> dict[str, Any]:
        return json.loads((self.path / "settings.json").read_text())

    @property
    def cache(self) -> Path:
        chosen = self.settings().get("cache_dir")
        return Path(chosen) if chosen else self.path / "cache"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        import fcntl

        fd = os.open(self.path / "reload.lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def read_state(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return None

    def write_state(self, state: dict[str, Any]) -> None:
        _write_json(self.state_path, state)

    def register(self, pid: int, generation: int, **extra: Any) -> None:
        """Write a worker's report (its own file: only that worker writes it), keeping what it said before."""
        path = self.workers_path / f"{pid}.json"
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            doc = {}
        doc.update(extra, pid=pid, generation=generation)
        _write_json(path, doc)

    def unregister(self, pid: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.workers_path / f"{pid}.json").unlink()

    def registered(self) -> dict[int, dict[str, Any]]:
        """Each live worker's last report."""
        out = {}
        for p in self.workers_path.glob("*.json"):
            try:
                doc = json.loads(p.read_text())
            except (OSError, ValueError):
                continue
            if _alive(int(doc["pid"])):
                out[int(doc["pid"])] = doc
        return out


# ---------------------------------------------------------------------- the worker
class SharedModelHolder:
    """A :class:`~metricrec.serving.service.ModelHolder` for one worker of several: the model of the
    run's current generation, loaded from its snapshot (tables memory-mapped); :meth:`reload` makes
    a new generation for every worker.

    Parameters
    ----------
    run : RunDir
    path : path
        The model folder (or file) served.
    exact, warm_up : bool
        As ``metricrec serve --exact`` / ``--no-warm-up``.
    """

    def __init__(self, run: RunDir, path: str | os.PathLike, *, exact: bool = False, warm_up: bool = True,
                 reload_timeout: float = 120.0) -> None:
        from .service import model_path

        self.run, self.path = run, str(model_path(path))
        self.exact, self.warm_up, self.reload_timeout = exact, warm_up, reload_timeout
        self._lock = threading.Lock()
        self._observers: list[Any] = []
        self.first = False  # this worker made generation 1
        self._pid, self._ppid = os.getpid(), os.getppid()
        run.register(self._pid, 0)  # counted by a reload from now on, before the state is read
        with run.locked():
            state = run.read_state()
            if state is None:
                failed = run.path / "failed"
                if failed.exists():  # another worker could not load it and said why: exit quietly, alike
                    raise SystemExit(int(failed.read_text() or 1))
                try:
                    digest, snap = self._prepare()
                except BaseException as exc:
                    from ..cli.boundary import describe_failure

                    failed.write_text(str(describe_failure(exc)[0]))
                    raise
                state = {"generation": 1, "snapshot": str(snap), "digest": digest}
                run.write_state(state)
                self.first = True
        self.current = self._load(state)
        run.register(self._pid, self.current.generation)
        self._watcher = threading.Thread(target=self._watch, name="metricrec-state-watch", daemon=True)
        self._watcher.start()

    # the ModelHolder interface
    def observe(self, callback: Any) -> None:
        self._observers.append(callback)

    def _notify(self, ok: bool, snap: Any) -> None:
        for callback in self._observers:
            with contextlib.suppress(Exception):
                callback(ok, snap)

    def _loader(self, p: str) -> Any:
        from .service import load_serving_model

        return load_serving_model(p, exact=self.exact, warm_up=False)

    def _prepare(self) -> tuple[str, Path]:
        from .snapshot import prepare_snapshot

        return prepare_snapshot(self.path, self.run.cache, exact=self.exact, loader=self._loader)

    def _load(self, state: dict[str, Any]) -> Any:
        from .service import Snapshot, _warm_up
        from .snapshot import load_snapshot

        t0 = time.perf_counter()
        model, tables = load_snapshot(state["snapshot"], loader=self._loader)
        if self.warm_up:
            _warm_up(model)
            if tables is not None:
                tables.top([0], 10, model, getattr(model, "ann_index", None) is not None)
        snap = Snapshot(model, self.path, time.time(), time.perf_counter() - t0, int(state["generation"]), tables)
        freeze_heap(collect=False)  # a reload runs beside the event loop: no full collection here
        return snap

    def reload(self) -> Any:
        """Snapshot and load the model folder again, swap it in here, publish it as the next
        generation and wait (up to ``reload_timeout``) until every worker serves it. A failure is a
        :class:`~metricrec.serving.service.RequestError` (409) and changes nothing."""
        from .service import RequestError, _one_line

        with self._lock:
            old = self.current
            with self.run.locked():
                state = self.run.read_state() or {"generation": old.generation}
                generation = max(int(state["generation"]), old.generation) + 1
                try:
                    digest, snap_dir = self._prepare()
                    snap = self._load({"generation": generation, "snapshot": str(snap_dir)})
                except Exception as exc:  # noqa: BLE001 - any failure: keep serving the old model
                    self._notify(False, None)
                    raise RequestError(409, "reload_failed", f"cannot load {self.path} ({_one_line(exc)}); still "
                                       f"serving the model loaded at {old.health()['loaded_at']}") from None
                self.current = snap
                self.run.write_state({"generation": generation, "snapshot": str(snap_dir), "digest": digest})
                self.run.register(self._pid, generation)
        self._notify(True, snap)
        self._wait_all(generation)
        return snap

    def _wait_all(self, generation: int) -> None:
        deadline = time.monotonic() + self.reload_timeout
        while time.monotonic() < deadline:
            if all(doc["generation"] >= generation for doc in self.run.registered().values()):
                return
            time.sleep(0.01)
        print(f"metricrec serve: warning: not every worker serves generation {generation} after "
              f"{self.reload_timeout:.0f} s", file=sys.stderr, flush=True)

    def _watch(self) -> None:
        """Follow ``state.json``: swap to a newer generation when another worker publishes one; stop
        (gracefully) when the supervisor is gone."""
        last = None
        while True:
            time.sleep(_POLL_SECONDS)
            if os.getppid() != self._ppid:  # the supervisor died: finish the requests in flight and exit
                os.kill(self._pid, signal.SIGTERM)
                return
            try:
                st = os.stat(self.run.state_path)
            except FileNotFoundError:
                continue
            key = (st.st_mtime_ns, st.st_size, st.st_ino)
            if key == last:
                continue
            last = key
            try:
                state = self.run.read_state()
            except (OSError, ValueError):
                last = None
                continue
            if state is None or int(state["generation"]) <= self.current.generation:
                continue
            with self._lock:
                if int(state["generation"]) <= self.current.generation:
                    continue
                try:
                    snap = self._load(state)
                except Exception as exc:  # noqa: BLE001 - a snapshot another worker loaded: this worker is broken
                    print(f"metricrec serve: worker {self._pid}: cannot load generation {state['generation']} "
                          f"({type(exc).__name__}: {exc}); restarting it", file=sys.stderr, flush=True)
                    os.kill(self._pid, signal.SIGTERM)
                    return
                self.current = snap
                self.run.register(self._pid, snap.generation)
            self._notify(True, snap)


def freeze_heap(collect: bool = True) -> None:
    """Move every object alive now (the libraries, the model, the app) out of the cyclic garbage
    collector's reach (:func:`gc.freeze`), after a full collection when ``collect``.

    A worker's heap is hundreds of thousands of long-lived objects (torch, numpy, FastAPI, the
    model), and Python's full collections walked all of them while the event loop waited: 40 to
    120 ms pauses that every request in flight took, a 64-client p99 of 75-85 ms against 8-12 ms
    with the collector off (``benchmarks/results/service.md``). Frozen, they are still freed by
    reference counting; a full collection then walks only what serving allocated since.
    """
    if collect:
        gc.collect()
    gc.freeze()


def _set_threads(threads: int) -> None:
    """The thread pools of this process, chosen once: ``threads`` for torch's intra-op pool and
    faiss' OpenMP, one inter-op thread (the environment variables were set before any import)."""
    import torch

    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # already set (an app made twice in one process)
        torch.set_num_interop_threads(1)
    try:
        import faiss
    except ImportError:
        return
    faiss.omp_set_num_threads(threads)


def install_sighup(holder: Any) -> None:
    """SIGHUP reloads the model in a background thread (the event loop never waits on a load)."""
    if not hasattr(signal, "SIGHUP"):  # pragma: no cover - Windows
        return

    def reload_in_background() -> None:
        from .service import RequestError

        try:
            snap = holder.reload()
            print(f"metricrec serve: SIGHUP: reloaded {snap.path} (generation {snap.generation}, "
                  f"{snap.load_seconds:.3f} s)", file=sys.stderr, flush=True)
        except RequestError as exc:
            print(f"metricrec serve: SIGHUP: {exc.detail}", file=sys.stderr, flush=True)

    signal.signal(signal.SIGHUP, lambda signum, frame: threading.Thread(target=reload_in_background,
                                                                        daemon=True).start())


def log_access_to_stderr() -> None:
    """The access log's JSON lines (:data:`metricrec.serving.app.access_log`) on stderr, one per request."""
    import logging

    from .app import access_log

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access_log.addHandler(handler)
    access_log.setLevel(logging.INFO)
    access_log.propagate = False


def worker_main(run_dir: str, fd: int) -> int:
    """One worker: load the run's model, serve the socket ``fd`` until SIGTERM or SIGINT, then
    finish the requests in flight (up to the graceful timeout) and return 0."""
    if hasattr(signal, "SIGHUP"):  # until the reload handler is installed, a SIGHUP must not end the worker
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    run = RunDir(run_dir)
    s = run.settings()
    _set_threads(int(s["threads"]))
    import uvicorn

    from .app import create_app
    from .protocol import coalescing_protocol
    from .service import Limits

    holder = SharedModelHolder(run, s["model"], exact=s["exact"], warm_up=s["warm_up"])
    app = create_app(holder=holder, limits=Limits(s["max_n"], s["max_items"], s["max_body_bytes"], s["max_users"]),
                     reload_endpoint=s["reload_endpoint"], batching=s["batching"])
    install_sighup(holder)
    if s["access_log"]:
        log_access_to_stderr()
    if holder.first and (holder.current.health().get("data_source") or {}).get("fallback_for"):
        from ..cli.sources import model_data_warning

        print(f"metricrec serve: {model_data_warning(holder.current.model)}", file=sys.stderr, flush=True)
    # uvicorn restores the handlers it found and raises the signal it shut down on once it has
    # finished: ignored here, so that a graceful shutdown ends with status 0
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    config = uvicorn.Config(app, log_level=s["log_level"], access_log=False, server_header=False,
                            timeout_graceful_shutdown=s["graceful_timeout"], backlog=s["backlog"],
                            http=coalescing_protocol() or "auto")  # a response in one send (.protocol)
    server = uvicorn.Server(config)
    state = server.server_state
    app.state.fast_path.connections = lambda: len(state.connections)
    sock = socket.socket(fileno=fd)
    run.register(os.getpid(), holder.current.generation, ready=True, health=holder.current.health())
    freeze_heap()  # before the first request: see freeze_heap
    server.run(sockets=[sock])
    return 0


# ---------------------------------------------------------------------- the supervisor
def _bind(host: str, port: int, backlog: int) -> socket.socket:
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def _banner(settings: dict[str, Any], health: dict[str, Any], workers: int) -> str:
    h = health
    return (f"metricrec serve: http://{settings['host']}:{settings['port']} model {h['model']} ({h['model_type']}, "
            f"{h['n_users']} users x {h['n_items']} items, index {h['index'] or 'none: exact'}, loaded in "
            f"{h['load_seconds']} s; {workers} worker{'s' if workers != 1 else ''}, pids "
            f"{settings.get('_pids', '')})")


def supervise(settings: dict[str, Any], workers: int) -> int:
    """Run ``workers`` worker processes until SIGTERM/SIGINT; the exit status (0 after a graceful
    shutdown; a worker's own status when the service could not start)."""
    sup = _Supervisor(settings, workers)
    old_handlers = {sig: signal.signal(sig, handler) for sig, handler in (
        (signal.SIGTERM, sup.on_stop), (signal.SIGINT, sup.on_stop), (signal.SIGHUP, sup.on_hup))}
    try:
        for _ in range(workers):  # the first to take the lock makes the snapshot, the others map it
            sup.spawn()
        while not sup.stop:
            time.sleep(_POLL_SECONDS)
            sup.announce_when_ready()
            sup.forward_reloads()
            sup.reap()
    finally:
        sup.close()
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
    return sup.status


class _Supervisor:
    """The state of :func:`supervise`: the listening socket, the run folder, the workers by pid, and
    what the signal handlers asked for (stop; a count of reloads)."""

    def __init__(self, settings: dict[str, Any], workers: int) -> None:
        self.settings, self.workers = settings, workers
        self.sock = _bind(settings["host"], settings["port"], settings["backlog"])
        self.run = RunDir.create(settings)
        env = dict(os.environ)
        for name in THREAD_VARIABLES:
            env[name] = str(settings["threads"])
        env.setdefault("PROMETHEUS_MULTIPROC_DIR", str(self.run.path / "prometheus"))
        env["PYTHONUNBUFFERED"] = "1"
        self.env = env
        self.procs: dict[int, subprocess.Popen] = {}
        self.stop, self.hup = False, 0
        self.status, self.ready, self.failures = 0, False, 0

    def on_stop(self, signum: int, frame: Any) -> None:
        self.stop = True

    def on_hup(self, signum: int, frame: Any) -> None:
        self.hup += 1

    def spawn(self) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "metricrec.serving.workers", str(self.run.path),
                                 str(self.sock.fileno())], pass_fds=(self.sock.fileno(),), env=self.env)
        self.procs[proc.pid] = proc
        return proc

    def announce_when_ready(self) -> None:
        """Print the banner once every worker has said it is ready."""
        if self.ready:
            return
        reports = self.run.registered()
        if len(self.procs) == self.workers and all(reports.get(pid, {}).get("ready") for pid in self.procs):
            self.ready = True
            first = reports[min(self.procs)]
            print(_banner({**self.settings, "_pids": " ".join(map(str, sorted(self.procs)))}, first["health"],
                          self.workers), flush=True)

    def forward_reloads(self) -> None:
        """A reload is done by one serving worker, for all of them."""
        while self.hup:
            self.hup -= 1
            reports = self.run.registered()
            live = [p for pid, p in self.procs.items() if p.poll() is None and reports.get(pid, {}).get("ready")]
            if live:
                live[0].send_signal(signal.SIGHUP)
            else:
                print("metricrec serve: SIGHUP: no worker is serving yet; nothing reloaded", file=sys.stderr,
                      flush=True)

    def reap(self) -> None:
        """Replace a worker that died while the service runs; stop when the service cannot start."""
        for pid, proc in list(self.procs.items()):
            code = proc.poll()
            if code is None:
                continue
            del self.procs[pid]
            self.run.unregister(pid)
            _mark_dead(pid, self.env["PROMETHEUS_MULTIPROC_DIR"])
            if self.stop:
                continue
            if not self.ready or self.failures >= 5:  # the service cannot start (its worker said why)
                self.status = code if code else 1
                self.stop = True
                break
            self.failures += 1
            new = self.spawn()
            print(f"metricrec serve: worker {pid} exited with status {code}; started worker {new.pid}",
                  file=sys.stderr, flush=True)
        if self.ready and self.failures and all(d.get("ready") for d in self.run.registered().values()):
            self.failures = 0

    def close(self) -> None:
        reports = self.run.registered()
        _stop_all(self.procs, self.settings["graceful_timeout"],
                  {pid for pid, doc in reports.items() if doc.get("ready")})
        self.sock.close()
        shutil.rmtree(self.run.path, ignore_errors=True)


def _stop_all(procs: dict[int, subprocess.Popen], graceful: float, serving: set[int]) -> None:
    """SIGTERM every worker that serves (each finishes its requests in flight) and SIGKILL those still
    starting (nothing to finish, nothing to say), then wait; kill what is left after the timeout."""
    for pid, proc in procs.items():
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM if pid in serving else signal.SIGKILL)
    deadline = time.monotonic() + graceful + 10
    for proc in procs.values():
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _mark_dead(pid: int, folder: str) -> None:
    """Drop a dead worker's live gauges from the shared metrics folder."""
    try:
        from prometheus_client import multiprocess
    except ImportError:
        return
    with contextlib.suppress(OSError):
        multiprocess.mark_process_dead(pid, folder)


if __name__ == "__main__":
    from ..cli.boundary import run_guarded

    sys.exit(run_guarded(lambda: worker_main(sys.argv[1], int(sys.argv[2]))))
