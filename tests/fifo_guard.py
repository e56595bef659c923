"""Tests that hand a FIFO (named pipe) to a reader must never hang the suite.

:func:`make_fifo` creates one; :func:`within` runs a call in a daemon thread and fails the test when it
has not returned after ``seconds`` -- then it opens the FIFO for writing (non-blocking) and closes it,
so a reader blocked in ``open`` gets end-of-file and the thread ends instead of lingering.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Callable

import pytest

DEADLINE_S = 30.0


def make_fifo(folder: Path, name: str = "pipe.csv") -> Path:
    """A FIFO at ``folder / name`` (skips the test where the system has none)."""
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this system")
    path = folder / name
    os.mkfifo(path)
    return path


def _unblock(fifo: Path) -> None:
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:  # no reader is blocked on it: nothing to do
        pass


def within(call: Callable[[], Any], fifo: Path | None = None, seconds: float = DEADLINE_S) -> Any:
    """``call()``'s result, re-raising its exception; fails the test when it runs past ``seconds``."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test below
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        if fifo is not None:
            _unblock(fifo)
        pytest.fail(f"still running after {seconds:g} s: blocked on a FIFO?")
    if "error" in box:
        raise box["error"]
    return box.get("value")
