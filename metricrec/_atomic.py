"""Atomic writes: the package's one writer of files and folders (re-exported by :mod:`metricrec.serialization`).

A file is written to a hidden sibling ``.NAME.tmp.TOKEN``, fsynced and renamed over ``NAME``
(:func:`atomic_write_bytes`, :func:`atomic_write_text`, :func:`atomic_write_json`,
:func:`atomic_output`). A folder is built in a hidden sibling folder, every file and folder in it
fsynced, then swapped in as one unit (:func:`atomic_directory`; model directories use it):

- no folder at ``NAME`` yet: ``rename(tmp, NAME)``;
- on Linux, ``renameat2(tmp, NAME, RENAME_EXCHANGE)``: one system call exchanges the two names, so
  ``NAME`` is always the old or the new complete folder; the old one (now at the temp name) is deleted;
- elsewhere, or where the file system refuses the flag, two renames: ``NAME -> .NAME.old.TOKEN``,
  then ``tmp -> NAME``. The old folder is moved aside only once the new one is complete and fsynced,
  so while ``NAME`` is missing, ``.NAME.tmp.TOKEN`` (same TOKEN) is complete. Readers use
  :func:`recovery_source` (the new copy, else the old one; the newest TOKEN wins) without changing
  anything, and :func:`recover` -- run by every :func:`atomic_directory` of that path -- renames it
  into place.

``last_swap`` names the path the latest swap in this process took: ``"rename"``, ``"exchange"`` or
``"two-rename"``. Files are created with mode ``0o666`` and folders ``0o777``, both less the umask.
Hidden siblings left by a killed writer (its process is gone) are deleted by the next write of the
same path. Concurrent writers of one path: each write is atomic and the last one wins (the
two-rename fallback assumes one writer at a time).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_output", "atomic_directory",
           "recover", "recovery_source", "write_new_file"]

RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_SYSCALL_RENAMEAT2 = {"x86_64": 316, "aarch64": 276}
_TOKEN = re.compile(r"\d{20}\.\d+\.[0-9a-f]{6}")
_ACTIVE: set[str] = set()  # tokens of this process' writes in progress
last_swap: str | None = None


class _Unsupported(Exception):
    """``renameat2(RENAME_EXCHANGE)`` is not available here."""


# ---------------------------------------------------------------------- hidden siblings
def _token() -> str:
    return f"{time.time_ns():020d}.{os.getpid()}.{secrets.token_hex(3)}"


def _stem(target: Path) -> str:
    name = target.name
    if len(name.encode()) > 180:  # keep sibling names under NAME_MAX
        name = f"{name[:60]}~{hashlib.sha256(name.encode()).hexdigest()[:12]}"
    return f".{name}."


def _sibling(target: Path, kind: str, token: str) -> Path:
    return target.with_name(f"{_stem(target)}{kind}.{token}")


def _siblings(target: Path) -> list[tuple[str, str, Path]]:
    """``(kind, token, path)`` of ``target``'s hidden siblings, oldest token first."""
    stem = _stem(target)
    try:
        names = os.listdir(target.parent)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        kind, _, token = name[len(stem):].partition(".")
        if name.startswith(stem) and kind in ("tmp", "old", "del") and _TOKEN.fullmatch(token):
            found.append((kind, token, target.parent / name))
    return sorted(found, key=lambda t: t[1])


def _stale(token: str) -> bool:
    """True when the write that made ``token`` is over (its process is gone, or it is ours and done)."""
    pid = int(token.split(".")[1])
    if pid == os.getpid():
        return token not in _ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OSError):
        return False
    return False


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _discard(target: Path, path: Path, token: str) -> None:
    """Best effort: rename ``path`` to a ``.del`` sibling (never mistaken for a copy to recover), delete it."""
    dead = _sibling(target, "del", token)
    try:
        os.rename(path, dead)
    except OSError:
        dead = path
    with contextlib.suppress(OSError):
        _remove(dead)


def _clean_stale(target: Path) -> None:
    for _, token, path in _siblings(target):
        if _stale(token):
            _discard(target, path, token)


def recovery_source(path: str | os.PathLike, *, stale_only: bool = False) -> Path | None:
    """While ``path`` is missing after an interrupted two-rename swap: the complete copy to use (the
    new folder if it is still there, else the old one); None otherwise. Changes nothing."""
    target = _target(path)
    if os.path.lexists(target):
        return None
    olds = [(token, p) for kind, token, p in _siblings(target) if kind == "old" and (_stale(token) or not stale_only)]
    if not olds:
        return None
    token, old = olds[-1]
    new = _sibling(target, "tmp", token)
    return new if new.is_dir() else old


def recover(path: str | os.PathLike) -> Path | None:
    """Finish an interrupted two-rename swap: when ``path`` is missing, rename the complete copy a
    killed save left (its new folder, else the old one) into place.

    Returns
    -------
    Path or None
        ``path`` when something was restored, else None.
    """
    target = _target(path)
    source = recovery_source(target, stale_only=True)
    if source is None:
        return None
    os.rename(source, target)
    _fsync_dir(target.parent)
    return target


# ---------------------------------------------------------------------- low-level steps
def _target(path: str | os.PathLike) -> Path:
    p = Path(os.path.abspath(os.fspath(path)))
    return Path(os.path.realpath(p)) if p.is_symlink() else p


def write_new_file(path: Path, data: Any, *, sync: bool = False) -> None:
    """Create ``path`` (mode 0o666 less the umask; must not exist) and write all of ``data``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        view = memoryview(data).cast("B")
        while view:
            view = view[os.write(fd, view):]
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_path(path: str | os.PathLike, *, directory: bool = False) -> None:
    if directory and os.name == "nt":  # pragma: no cover - Windows cannot open folders
        return
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str | os.PathLike) -> None:
    _fsync_path(path, directory=True)


def _fsync_tree(root: Path) -> None:
    for here, _, files in os.walk(root, topdown=False):
        for name in files:
            if not os.path.islink(os.path.join(here, name)):
                _fsync_path(os.path.join(here, name))
        _fsync_dir(here)


def _libc_renameat2() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    func = getattr(libc, "renameat2", None)
    if func is not None:
        func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        func.restype = ctypes.c_int
        return func
    number = _SYSCALL_RENAMEAT2.get(os.uname().machine)  # glibc < 2.28: the raw system call
    if number is None:
        return None
    return lambda *a: libc.syscall(ctypes.c_long(number), *(ctypes.c_int(a[0]), a[1], ctypes.c_int(a[2]), a[3],
                                                            ctypes.c_uint(a[4])))


def _renameat2(src: Path, dst: Path, flags: int) -> None:
    """``renameat2(src, dst, flags)``; raise :class:`_Unsupported` where the call or flag is unavailable."""
    func = _libc_renameat2()
    if func is None:
        raise _Unsupported
    if func(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) != 0:
        err = ctypes.get_errno()
        if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise _Unsupported
        raise OSError(err, os.strerror(err), str(src), None, str(dst))


def _swap_in(tmp: Path, target: Path, token: str) -> Path | None:
    """Put the complete folder ``tmp`` at ``target``; return where the old folder now is (or None)."""
    global last_swap
    if not os.path.lexists(target):
        try:
            os.rename(tmp, target)
            last_swap = "rename"
            return None
        except OSError as exc:  # created meanwhile by someone else: swap with it below
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
    try:
        _renameat2(tmp, target, RENAME_EXCHANGE)
        last_swap = "exchange"
        return tmp
    except _Unsupported:
        pass
    old = _sibling(target, "old", token)
    os.rename(target, old)
    os.rename(tmp, target)
    last_swap = "two-rename"
    return old


def _abort(tmp: Path, target: Path, token: str) -> None:
    """After a failed write or swap: put the old folder back if it was moved aside, drop the temp one."""
    old = _sibling(target, "old", token)
    with contextlib.suppress(OSError):
        if not os.path.lexists(target) and os.path.lexists(old):
            os.rename(old, target)
    with contextlib.suppress(OSError):
        _remove(tmp)


def _carry_over(src: Path, dst: Path, keep: Callable[[str], bool]) -> None:
    """Hard-link (else copy) the entries of folder ``src`` that ``keep`` names into ``dst``."""
    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    for name in sorted(os.listdir(src)):
        if not keep(name):
            continue
        a, b = src / name, dst / name
        if a.is_symlink():
            os.symlink(os.readlink(a), b)
        elif a.is_dir():
            shutil.copytree(a, b, symlinks=True, copy_function=link)
        else:
            link(str(a), str(b))


# ---------------------------------------------------------------------- public writers
@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path beside ``path`` (created empty) for any writer; on success it is
    fsynced and renamed over ``path``, on an exception deleted."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(_target(target))
    token = _token()
    tmp = _sibling(_target(target), "tmp", token)
    _ACTIVE.add(token)
    try:
        write_new_file(tmp, b"", sync=False)
        yield tmp
        _fsync_path(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            _remove(tmp)
        raise
    finally:
        _ACTIVE.discard(token)
    _fsync_dir(tmp.parent)


def atomic_write_bytes(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` (bytes-like) to ``path``: a hidden temp file, fsync, rename, fsync of the folder.

    A crash leaves the old file or the new one, never a mix. Returns ``path``.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(_target(target))
    token = _token()
    tmp = _sibling(_target(target), "tmp", token)
    _ACTIVE.add(token)
    try:
        write_new_file(tmp, data, sync=True)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            _remove(tmp)
        raise
    finally:
        _ACTIVE.discard(token)
    _fsync_dir(tmp.parent)
    return target


def atomic_write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8") -> Path:
    """Atomically write ``text`` (no newline translation)."""
    return atomic_write_bytes(path, text.encode(encoding))


def _finite_json(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by None (JSON has no such numbers)."""
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {k: _finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_json(v) for v in obj]
    return obj


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as indented, valid JSON: a NaN or infinite float becomes ``null``."""
    return atomic_write_text(path, json.dumps(_finite_json(obj), indent=2, sort_keys=False, allow_nan=False) + "\n")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, *, keep: Callable[[str], bool] | None = None) -> Iterator[Path]:
    """Build a folder in a hidden temporary sibling and swap it in as one unit.

    Parameters
    ----------
    path : path
        The folder to create or replace (its parent is created if missing).
    keep : callable, optional
        ``keep(name)`` true for entries of the existing folder to carry into the new one
        (hard links, else copies) before the body runs. Default: start empty.

    Yields
    ------
    Path
        The temporary folder to write into. On success every file and folder in it is fsynced and it
        replaces ``path`` (see the module docstring for how); on an exception it is deleted and
        ``path`` is left as it was.
    """
    target = _target(path)
    if os.path.lexists(target) and not target.is_dir():
        raise ValueError(f"{path}: exists and is not a directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    recover(target)
    _clean_stale(target)
    token = _token()
    tmp = _sibling(target, "tmp", token)
    _ACTIVE.add(token)
    try:
        os.mkdir(tmp, 0o777)
        if keep is not None and target.is_dir():
            _carry_over(target, tmp, keep)
        yield tmp
        _fsync_tree(tmp)
        old = _swap_in(tmp, target, token)
    except BaseException:
        _abort(tmp, target, token)
        raise
    finally:
        _ACTIVE.discard(token)
    _fsync_dir(target.parent)
    if old is not None:
        _discard(target, old, token)
