"""Fetching a data set archive: a bounded streamed download, pinned sha256, safe extraction, atomic placement.

Nothing is left behind, and nothing unbounded is accepted:

- The archive streams into a hidden part file ``<data_dir>/.<archive>.<token>.part`` (the token holds the
  time, the process id and a random suffix). It is removed on every exit the process lives through: an
  error, Ctrl-C (``KeyboardInterrupt``) and SIGTERM -- where nothing else handles SIGTERM a handler is
  installed for the download, which removes the part file and then ends the process by SIGTERM as it
  would have ended; under ``metricrec`` the command's own handler does the same and exits 143. A part
  file whose process is gone (a SIGKILLed download) is removed by the next data set load from that
  data directory, and so is the half-extracted folder of one killed while extracting.
- The whole download has a deadline (``deadline``, default 600 s: connecting and every read; a server
  sending one byte a second is given up at the deadline), and each read a socket timeout (``timeout``).
- The size is capped (``max_bytes``): at the official archive's size when the pinned checksum is used (a
  longer stream cannot be that archive), so an endless stream stops there and is deleted. A
  ``Content-Length`` beyond the cap is refused before the first byte.
- The archive is extracted into a temporary sibling of the data set folder that is swapped in as one
  unit (:func:`metricrec.serialization.atomic_directory`); members with absolute paths, ``..`` or
  symbolic links are refused before anything is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import shutil
import signal
import socket
import stat
import threading
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from ... import _atomic
from ...errors import MetricrecError
from ...serialization import atomic_directory

__all__ = ["Archive", "DownloadError", "archive_url", "ensure_files", "fetch_archive",
           "remove_stale_downloads", "safe_extract", "DEFAULT_DEADLINE", "DEFAULT_TIMEOUT"]

MIRROR_ENV = "METRICREC_MIRROR"
#: Seconds a whole download may take (connecting included).
DEFAULT_DEADLINE = 600.0
#: Seconds one read may wait for data.
DEFAULT_TIMEOUT = 60.0
#: With a checksum other than the pinned one (a mirror's own archive): cap at this many times the official size.
OTHER_ARCHIVE_FACTOR = 4
_CHUNK = 1 << 16
_PART = re.compile(r"^\.(?P<name>.+)\.(?P<token>\d{20}\.\d+\.[0-9a-f]{6})\.part$")
_LEGACY = re.compile(r"^\.(download-.*\.part|extract-.*)$")  # what earlier versions left behind
_LEGACY_AGE_S = 3600.0


class DownloadError(MetricrecError, OSError):
    """A data set could not be downloaded, verified or extracted (the message names the URL and folder)."""


@dataclass(frozen=True)
class Archive:
    """An official data set archive.

    Attributes
    ----------
    filename : str
        Archive name appended to the base URL, e.g. ``"ml-100k.zip"``.
    base_url : str
        Official location (overridable with ``base_url=`` or the ``METRICREC_MIRROR`` variable).
    sha256 : str
        Pinned checksum of the official archive.
    folder : str
        Top-level folder inside the archive; it becomes ``<data_dir>/<folder>``.
    size : int
        Size of the official archive in bytes (the download's cap).
    """

    filename: str
    base_url: str
    sha256: str
    folder: str
    size: int


def archive_url(archive: Archive, base_url: str | None = None) -> str:
    """URL of the archive: ``base_url``, else ``$METRICREC_MIRROR``, else the official location."""
    base = base_url or os.environ.get(MIRROR_ENV) or archive.base_url
    return base.rstrip("/") + "/" + archive.filename


def _manual_hint(url: str, data_dir: Path, folder: str, files: Sequence[str]) -> str:
    return (
        f"Download {url} yourself and unzip it into {data_dir}, so that {data_dir / folder} holds "
        f"{', '.join(files)} (or set {MIRROR_ENV} to a mirror, or pass another data_dir)"
    )


def size_cap(archive: Archive, sha256: str | None = None, size: int | None = None) -> int:
    """Most bytes a download of ``archive`` may bring: ``size`` if given, the official size with the
    pinned checksum, else :data:`OTHER_ARCHIVE_FACTOR` times it."""
    if size is not None:
        return int(size)
    if sha256 is None or sha256.lower() == archive.sha256:
        return archive.size
    return OTHER_ARCHIVE_FACTOR * archive.size


def remove_stale_downloads(data_dir: Path, folder: str | None = None) -> list[Path]:
    """Remove what killed downloads left in ``data_dir``: part files whose process is gone, earlier
    versions' temp files older than an hour, and (with ``folder``) a killed extraction's temp folder.

    Returns
    -------
    list of Path
        The part and legacy files and folders removed.
    """
    try:
        names = os.listdir(data_dir)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return []
    removed = []
    for name in names:
        path = Path(data_dir) / name
        m = _PART.match(name)
        stale = m is not None and _atomic._stale(m["token"])  # noqa: SLF001 - the package's one liveness rule
        with contextlib.suppress(OSError):
            if not stale and _LEGACY.match(name):
                stale = time.time() - path.lstat().st_mtime > _LEGACY_AGE_S
            if stale:
                _atomic._remove(path)  # noqa: SLF001
                removed.append(path)
    if folder is not None:
        with contextlib.suppress(OSError):
            _atomic._clean_stale(_atomic._target(Path(data_dir) / folder))  # noqa: SLF001
    return removed


def ensure_files(
    name: str,
    data_dir: Path,
    folder: str,
    files: Sequence[str],
    archive: Archive | None,
    *,
    download: bool = True,
    base_url: str | None = None,
    sha256: str | None = None,
    size: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    deadline: float = DEFAULT_DEADLINE,
) -> Path:
    """Return ``data_dir/folder`` once it holds all ``files``, downloading the archive if allowed.

    Stale part files and extraction folders of killed downloads in ``data_dir`` are removed first.

    Raises
    ------
    FileNotFoundError
        Files are missing and cannot be downloaded (no archive, or ``download=False``); the message
        names the directory and the files to put there.
    DownloadError
        The download failed (offline, HTTP error, deadline, size cap), the checksum did not match, or
        the archive is unsafe.
    """
    target = data_dir / folder
    remove_stale_downloads(data_dir, folder)
    missing = [f for f in files if not (target / f).is_file()]
    if not missing:
        return target
    if archive is None:
        raise FileNotFoundError(
            f"data set {name!r}: missing {', '.join(missing)} in {target}. It cannot be downloaded "
            f"automatically; put the files {', '.join(files)} in {target}"
        )
    url = archive_url(archive, base_url)
    hint = _manual_hint(url, data_dir, folder, files)
    if not download:
        raise FileNotFoundError(f"data set {name!r}: missing {', '.join(missing)} in {target} and download=False. "
                                + hint)
    data_dir.mkdir(parents=True, exist_ok=True)
    with _sigterm_cleans_up(), fetch_archive(url, data_dir, sha256 or archive.sha256, timeout=timeout,
                                             deadline=deadline, max_bytes=size_cap(archive, sha256, size),
                                             hint=hint, name=archive.filename) as part:
        safe_extract(part, data_dir, folder)
    missing = [f for f in files if not (target / f).is_file()]
    if missing:
        raise DownloadError(f"data set {name!r}: the archive {url} did not provide {', '.join(missing)} in {target}")
    return target


# ---------------------------------------------------------------------- the download
class _Terminated(BaseException):
    """SIGTERM during a download in a process that had no SIGTERM handler."""


@contextlib.contextmanager
def _sigterm_cleans_up() -> Iterator[None]:
    """While the body runs, SIGTERM raises (so part files are removed on the way out), then ends the
    process by SIGTERM as the default action would. A no-op where SIGTERM is already handled (e.g. by
    the ``metricrec`` command) or outside the main thread."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise _Terminated()

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    except _Terminated:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)  # the cleanup is done: end as SIGTERM would have
        raise
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@dataclass
class _Transfer:
    url: str
    hint: str
    timeout: float
    deadline: float
    max_bytes: int
    start: float
    received: int = 0

    def left(self) -> float:
        """Seconds before the deadline; past it, the deadline's DownloadError."""
        left = self.deadline - (time.monotonic() - self.start)
        if left <= 0:
            raise DownloadError(
                f"could not download {self.url}: not complete after the {self.deadline:g} s deadline "
                f"({self.received:,} bytes received; the server is too slow or stalled). {self.hint}")
        return left

    def fail(self, what: str) -> DownloadError:
        return DownloadError(f"could not download {self.url} ({what}); are you offline? {self.hint}")


def _open(t: _Transfer) -> http.client.HTTPResponse:
    try:
        return urllib.request.urlopen(t.url, timeout=min(t.timeout, t.left()))
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"could not download {t.url}: HTTP {exc.code} {exc.reason}. {t.hint}") from None
    except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, http.client.HTTPException) as exc:
        t.left()  # past the deadline: say so
        raise t.fail(str(getattr(exc, "reason", exc))) from None


def _read(resp: http.client.HTTPResponse, t: _Transfer) -> bytes:
    """The next bytes that arrived (at most one chunk; b"" at the end), within the deadline."""
    wait = min(t.timeout, t.left())
    sock = getattr(getattr(getattr(resp, "fp", None), "raw", None), "_sock", None)
    if sock is not None:
        sock.settimeout(wait)
    try:
        return resp.read1(_CHUNK)
    except (socket.timeout, TimeoutError):
        t.left()
        raise t.fail(f"no data for {wait:g} s after {t.received:,} bytes") from None
    except (ConnectionError, http.client.HTTPException, OSError) as exc:
        raise t.fail(f"the connection broke after {t.received:,} bytes: {exc}") from None


def _stream(t: _Transfer, fd: int) -> str:
    """Copy the response into ``fd`` within the deadline and the size cap; return its sha256."""
    digest = hashlib.sha256()
    with _open(t) as resp:
        announced = resp.headers.get("Content-Length")
        if announced is not None and announced.isdigit() and int(announced) > t.max_bytes:
            raise DownloadError(f"refusing {t.url}: the server announces {int(announced):,} bytes, more than the "
                                f"{t.max_bytes:,} expected. {t.hint}")
        while chunk := _read(resp, t):
            t.received += len(chunk)
            if t.received > t.max_bytes:
                raise DownloadError(f"stopped downloading {t.url}: more than the {t.max_bytes:,} bytes expected "
                                    f"(an endless or foreign stream; nothing was kept). {t.hint}")
            digest.update(chunk)
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
        if announced is not None and announced.isdigit() and t.received < int(announced):
            raise t.fail(f"the connection closed after {t.received:,} of {int(announced):,} bytes")
    return digest.hexdigest()


@contextlib.contextmanager
def fetch_archive(url: str, dest_dir: Path, sha256: str, *, timeout: float = DEFAULT_TIMEOUT,
                  deadline: float = DEFAULT_DEADLINE, max_bytes: int, hint: str = "",
                  name: str | None = None) -> Iterator[Path]:
    """Download ``url`` into a part file in ``dest_dir``, verify its sha256 and yield its path; the part
    file is removed when the body ends, however it ends (see the module docstring).

    Raises
    ------
    DownloadError
        HTTP or network failure, the deadline, more than ``max_bytes``, or a checksum mismatch.
    """
    token = _atomic._token()  # noqa: SLF001
    part = Path(dest_dir) / f".{name or Path(url).name or 'download'}.{token}.part"
    _atomic._ACTIVE.add(token)  # noqa: SLF001 - a live part file: never stale for this process
    try:
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        try:
            got = _stream(_Transfer(url, hint, timeout, deadline, max_bytes, time.monotonic()), fd)
        finally:
            os.close(fd)
        if got != sha256.lower():
            raise DownloadError(
                f"checksum mismatch for {url}: expected sha256 {sha256.lower()}, got {got}. The download was "
                f"deleted; the file may be corrupt or the mirror serves another file. {hint}")
        yield part
    finally:
        with contextlib.suppress(OSError):
            os.unlink(part)
        _atomic._ACTIVE.discard(token)  # noqa: SLF001


# ---------------------------------------------------------------------- extraction
def _member_path(info: zipfile.ZipInfo, archive: Path) -> str:
    """Normalised relative path of a zip member; unsafe members raise DownloadError."""
    name = info.filename.replace("\\", "/")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise DownloadError(f"{archive}: refusing member with an absolute path: {info.filename!r}")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise DownloadError(f"{archive}: refusing member with a '..' path component: {info.filename!r}")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise DownloadError(f"{archive}: refusing symbolic link member: {info.filename!r}")
    return "/".join(parts)


def safe_extract(zip_path: Path, data_dir: Path, folder: str) -> Path:
    """Extract ``folder/`` of a zip into ``data_dir/folder`` safely and atomically.

    Every member is checked before anything is written (no absolute paths, no ``..`` components,
    no symlinks). The folder is built in a temporary sibling (the files of an existing folder are
    carried over and kept; members add the files it lacks) and swapped in as one unit, so a kill
    leaves the old folder or the new one. Only members under ``folder/`` are kept.
    """
    try:
        zf = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as exc:
        raise DownloadError(f"{zip_path}: not a valid zip archive ({exc})") from None
    with zf:
        members = [(info, _member_path(info, zip_path)) for info in zf.infolist()]
        wanted = [(info, rel[len(folder) + 1:]) for info, rel in members if rel.startswith(folder + "/")]
        if not wanted and not any(rel == folder for _, rel in members):
            raise DownloadError(f"{zip_path}: the archive has no folder {folder!r}")
        with atomic_directory(Path(data_dir) / folder, keep=lambda entry: True) as tmp:
            root = tmp.resolve()
            for info, rel in wanted:
                dest = tmp / rel
                if not dest.resolve().is_relative_to(root):  # belt and braces after _member_path
                    raise DownloadError(f"{zip_path}: member {info.filename!r} escapes the target folder")
                if info.is_dir():
                    dest.mkdir(parents=True, exist_ok=True)
                elif not dest.exists():  # a file the folder already had is kept
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(dest, "wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
    return Path(data_dir) / folder
