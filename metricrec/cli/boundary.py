"""The `metricrec` command's error boundary: every failure ends as one line and a documented exit status.

The line says what failed and where (the message names the flag, file, key or line) and what to do
(the error class's ``hint``); ``--debug`` (alias ``--traceback``) prints the traceback before it.
The exit statuses are :data:`EXIT_STATUSES` (``metricrec --help`` and ``docs/reliability.md`` show
them): 2 for what the user can fix in the input, 3 for a model or checkpoint file, 4 for a training
that diverged, 5 for memory, 130/143 for SIGINT/SIGTERM, and 1 for anything unexpected -- a bug, with
the place it happened and a request to rerun with ``--debug``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import signal
import sys
import threading
import traceback
from typing import Any, Callable, Iterator

from ..errors import MetricrecError, TrainingInterrupted

__all__ = ["EXIT_STATUSES", "EPILOG", "OneLineParser", "add_debug_flags", "run_guarded", "describe_failure",
           "Terminated"]

#: exit status -> meaning (the table of ``metricrec --help`` and docs/reliability.md).
EXIT_STATUSES = {
    0: "success",
    1: "internal error (a bug): the line names where; rerun with --debug and report the traceback",
    2: "usage, settings or data error: the line names the flag, file, key or line to fix",
    3: "model or checkpoint file error: corrupt, truncated, foreign or inconsistent",
    4: "training diverged (non-finite or collapsed embeddings): no model was written",
    5: "out of memory",
    141: "the output pipe closed (e.g. `| head`): stopped quietly, no message",
    130: "interrupted (SIGINT, Ctrl-C); a training saves its best-so-far model and a checkpoint first",
    143: "terminated (SIGTERM); as 130",
}
EPILOG = "exit status:\n" + "\n".join(f"  {code:<4} {text}" for code, text in EXIT_STATUSES.items())

#: Built-in exceptions that mean the input (flags, files, environment) is wrong: exit 2.
_INPUT_ERRORS = (ValueError, KeyError, IndexError, OverflowError, ImportError, OSError)


class Terminated(BaseException):
    """SIGTERM outside a training (which stops gracefully on its own, see ``metricrec.training.checkpoint``)."""


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line (exit 2), pointing at ``--help``."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see '{self.prog} --help')\n")


def add_debug_flags(parser: argparse.ArgumentParser, *, top: bool = True) -> None:
    """``--debug`` (alias ``--traceback``) on ``parser`` and on every subcommand below it, so it may
    come before or after the subcommand (a subcommand's copy never resets the top-level value)."""
    parser.add_argument("--debug", "--traceback", dest="debug", action="store_true",
                        default=False if top else argparse.SUPPRESS,
                        help="print the Python traceback before the one-line error message")
    for action in parser._actions:  # noqa: SLF001 - argparse lists its subparsers nowhere else
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for sub in dict.fromkeys(action.choices.values()):
                add_debug_flags(sub, top=False)


def _one_line(text: str) -> str:
    return "; ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _where(exc: BaseException) -> str:
    """``file:line in function`` of the innermost metricrec frame of the traceback ('' if none)."""
    found = ""
    for frame in traceback.extract_tb(exc.__traceback__):
        path = frame.filename.replace(os.sep, "/")
        if "/metricrec/" in path:
            found = f"{path[path.rindex('/metricrec/') + 1:]}:{frame.lineno} in {frame.name}"
    return found


def _os_message(exc: OSError) -> str:
    what = exc.strerror or str(exc)
    names = " -> ".join(str(n) for n in (exc.filename, exc.filename2) if n)
    if exc.errno == errno.ENOSPC:
        return f"no space left on the device{' writing ' + names if names else ''}; free some space and rerun"
    if exc.strerror is None:
        return _one_line(str(exc))
    return f"{what}: {names}" if names else what


def describe_failure(exc: BaseException) -> tuple[int, str]:
    """(exit status, the one line without the ``metricrec:`` prefix) for an exception."""
    if isinstance(exc, TrainingInterrupted):
        return exc.exit_code, _one_line(str(exc))
    if isinstance(exc, KeyboardInterrupt):
        return 130, "interrupted"
    if isinstance(exc, Terminated):
        return 143, "terminated (SIGTERM)"
    if isinstance(exc, MetricrecError):
        msg = _one_line(str(exc))
        hint = type(exc).hint
        return exc.exit_code, f"error: {msg}" + (f" ({hint})" if hint and hint not in msg else "")
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        detail = _one_line(str(exc)) or "an allocation failed"
        return 5, f"error: out of memory ({detail}); use smaller inputs, fewer factors or a smaller --batch-size"
    if isinstance(exc, OSError):
        return 2, f"error: {_os_message(exc)}"
    if isinstance(exc, _INPUT_ERRORS):
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        return 2, f"error: {_one_line(str(msg)) or type(exc).__name__}"
    where = _where(exc)
    return 1, (f"internal error: {type(exc).__name__}: {_one_line(str(exc))}" + (f" (at {where})" if where else "")
               + "; rerun with --debug for the traceback and report it")


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` (so it ends as one line, exit 143) while the command runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated()

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush of a closed pipe says nothing."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def run_guarded(func: Callable[[], Any], *, debug: bool = False, stream: Any = None) -> int:
    """Run ``func()`` (a subcommand) and return its exit status: 0 (or what it returns), else the status
    of :func:`describe_failure` after printing its one line (and the traceback first with ``debug``)."""
    stream = stream if stream is not None else sys.stderr
    try:
        with _sigterm_raises():
            return int(func() or 0)
    except BrokenPipeError:  # the reader left (`metricrec ... | head`): stop quietly, as a shell tool does
        _silence_stdout()
        return 141
    except (Exception, KeyboardInterrupt, Terminated) as exc:  # noqa: BLE001 - the boundary
        if debug:
            traceback.print_exception(type(exc), exc, exc.__traceback__, file=stream)
        code, line = describe_failure(exc)
        print(f"metricrec: {line}", file=stream)
        return code


def quiet_warnings_to_stderr() -> None:
    """Show data warnings once, as one plain line each."""
    import warnings

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
        print(f"warning: {message}", file=sys.stderr)

    warnings.showwarning = show  # type: ignore[assignment]
