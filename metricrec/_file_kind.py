"""Files opened for reading only when they are regular files.

A directory, a FIFO (named pipe), a device, a socket or a dangling symbolic link where a model,
checkpoint, index or run document should be is one error saying what it is. The kind is found by
``os.stat`` before anything is opened -- opening a FIFO for reading would block until a writer
comes, so a FIFO never hangs the reader -- and the file is then opened non-blocking and checked once
more on the open descriptor (a file swapped for a FIFO in between is refused, not waited on).
"""

from __future__ import annotations

import os
import stat
from typing import Any, BinaryIO

__all__ = ["irregular", "not_a_folder", "open_regular"]

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def irregular(path: str | os.PathLike, what: str, *, dir_fd: int | None = None) -> str | None:
    """What keeps ``path`` from being read as ``what`` (e.g. ``"a weights file"``), by ``os.stat`` alone.

    Returns
    -------
    str or None
        None for a regular file (or a link to one); else e.g. ``"is a directory, not a weights file"``,
        ``"is a FIFO (named pipe), not a weights file"`` or ``"is a symbolic link to '/x', which does not
        exist"``.

    Raises
    ------
    FileNotFoundError
        Nothing at ``path`` (not even a link): the caller says what is missing.
    """
    try:
        mode = os.stat(path, dir_fd=dir_fd).st_mode
    except FileNotFoundError:
        target = os.readlink(path, dir_fd=dir_fd)  # FileNotFoundError again when there is no link either
        return f"is a symbolic link to {target!r}, which does not exist"
    return None if stat.S_ISREG(mode) else f"is {_kind(mode)}, not {what}"


def not_a_folder(path: str | os.PathLike) -> str | None:
    """What keeps ``path`` from being used as a folder: None for a folder (or a link to one) and for
    nothing at all (the caller says what is missing); else ``"is a file"``, ``"is a FIFO (named pipe)"``,
    ``"is a character device"``, ... or ``"is a symbolic link to 'T', which does not exist"``."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        try:
            return f"is a symbolic link to {os.readlink(path)!r}, which does not exist"
        except OSError:
            return None
    except NotADirectoryError:  # a parent that is no folder
        return None
    if stat.S_ISDIR(mode):
        return None
    return "is a file" if stat.S_ISREG(mode) else f"is {_kind(mode)}"


def open_regular(path: str | os.PathLike, what: str, error: type, *, dir_fd: int | None = None,
                 where: Any = None) -> BinaryIO:
    """``path`` open for binary reading, refused with ``error("WHERE: is a directory, not WHAT")`` (see
    :func:`irregular`) unless it is a regular file; ``where`` (default ``path``) names it in the message.

    Raises
    ------
    FileNotFoundError
        Nothing at ``path``.
    """
    where = path if where is None else where
    problem = irregular(path, what, dir_fd=dir_fd)
    if problem is not None:
        raise error(f"{where}: {problem}")
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags, dir_fd=dir_fd)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):  # replaced between the stat and the open
            raise error(f"{where}: is {_kind(mode)}, not {what}")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
