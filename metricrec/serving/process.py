"""`metricrec serve` in a child process, waited for on ``/health`` (integration tests, benchmarks)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["ServerProcess", "free_port"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``python -m metricrec serve --model DIR --port P [extra]`` on loopback, started and waited for.

    Parameters
    ----------
    model_dir : path
    *extra : str
        More ``metricrec serve`` arguments.
    timeout : float
        Seconds to wait for ``GET /health`` to answer 200 and for the server to print its address
        (which it does once every worker is ready); RuntimeError with the server's output
        otherwise, the process stopped.
    log_dir : path, optional
        Where the server's output file goes (default: beside the model).
    env : dict, optional
        Extra environment variables of the child.

    Attributes
    ----------
    url : str
        ``http://127.0.0.1:PORT``.
    log_path : pathlib.Path
        The server's stdout and stderr.
    proc : subprocess.Popen
    """

    def __init__(self, model_dir: str | os.PathLike, *extra: str, timeout: float = 60.0,
                 log_dir: str | os.PathLike | None = None, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        log_dir = Path(log_dir) if log_dir is not None else Path(model_dir).resolve().parent
        self.log_path = log_dir / f"serve-{self.port}.log"
        child_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0  # this run's output from here
        with open(self.log_path, "ab") as log:  # O_APPEND: the child's writes never overwrite
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "metricrec", "serve", "--model", str(model_dir), "--port", str(self.port),
                 *extra], env=child_env, stdout=log, stderr=subprocess.STDOUT)
        try:
            self._wait(timeout)
        except BaseException:
            self.stop()
            raise

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wait(self, timeout: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/health", timeout=1.0).status_code == 200 and \
                        b"metricrec serve: http://" in self.log_path.read_bytes()[self._log_start:]:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the server did not answer /health within {timeout} s:\n{self.output()}")

    def output(self) -> str:
        """Everything the server printed so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def worker_pids(self) -> list[int]:
        """The pids of the server's worker processes (its children), from ``/proc`` (Linux)."""
        pids = []
        for task in Path(f"/proc/{self.proc.pid}/task").glob("*/children"):
            pids += [int(p) for p in task.read_text().split()]
        return sorted(pids)

    def stop(self, timeout: float = 30.0) -> str:
        """Terminate (then kill) the process; return what it printed."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.output()
