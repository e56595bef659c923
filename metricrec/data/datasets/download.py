"""Fetching a data set archive: streamed download, pinned sha256, safe extraction, atomic placement.

Nothing is left behind on failure: the download goes to a temp file and the extraction to a temp
folder, both inside the data directory, and only a complete, verified data set folder is moved into
place (with ``os.replace``).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import stat
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

__all__ = ["Archive", "DownloadError", "archive_url", "ensure_files", "download_archive", "safe_extract"]

MIRROR_ENV = "METRICREC_MIRROR"


class DownloadError(OSError):
    """A data set could not be downloaded, verified or extracted."""


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
    """

    filename: str
    base_url: str
    sha256: str
    folder: str


def archive_url(archive: Archive, base_url: str | None = None) -> str:
    """URL of the archive: ``base_url``, else ``$METRICREC_MIRROR``, else the official location."""
    base = base_url or os.environ.get(MIRROR_ENV) or archive.base_url
    return base.rstrip("/") + "/" + archive.filename


def _manual_hint(url: str, data_dir: Path, folder: str, files: Sequence[str]) -> str:
    return (
        f"Download {url} yourself and unzip it into {data_dir}, so that {data_dir / folder} holds "
        f"{', '.join(files)} (or set {MIRROR_ENV} to a mirror, or pass another data_dir)"
    )


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
    timeout: float = 60.0,
) -> Path:
    """Return ``data_dir/folder`` once it holds all ``files``, downloading the archive if allowed.

    Raises
    ------
    FileNotFoundError
        Files are missing and cannot be downloaded (no archive, or ``download=False``); the message
        names the directory and the files to put there.
    DownloadError
        The download failed (offline, HTTP error), the checksum did not match, or the archive is unsafe.
    """
    target = data_dir / folder
    missing = [f for f in files if not (target / f).is_file()]
    if not missing:
        return target
    if archive is None:
        raise FileNotFoundError(
            f"data set {name!r}: missing {', '.join(missing)} in {target}. It cannot be downloaded "
            f"automatically; put the files {', '.join(files)} in {target}"
        )
    url = archive_url(archive, base_url)
    if not download:
        raise FileNotFoundError(
            f"data set {name!r}: missing {', '.join(missing)} in {target} and download=False. "
            + _manual_hint(url, data_dir, folder, files)
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    zip_path = download_archive(url, data_dir, sha256 or archive.sha256, timeout=timeout,
                                hint=_manual_hint(url, data_dir, folder, files))
    try:
        safe_extract(zip_path, data_dir, folder)
    finally:
        zip_path.unlink(missing_ok=True)
    missing = [f for f in files if not (target / f).is_file()]
    if missing:
        raise DownloadError(f"data set {name!r}: the archive {url} did not provide {', '.join(missing)} in {target}")
    return target


def download_archive(url: str, dest_dir: Path, sha256: str, *, timeout: float = 60.0, hint: str = "") -> Path:
    """Stream ``url`` into a temp file in ``dest_dir`` and verify its sha256.

    Returns
    -------
    Path
        The verified temp file (the caller deletes it). On any failure the temp file is removed.
    """
    fd, tmp_name = tempfile.mkstemp(dir=dest_dir, prefix=".download-", suffix=".part")
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as resp:
                    while chunk := resp.read(1 << 20):
                        digest.update(chunk)
                        out.write(chunk)
            except urllib.error.HTTPError as exc:
                raise DownloadError(f"could not download {url}: HTTP {exc.code} {exc.reason}. {hint}") from None
            except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as exc:
                reason = getattr(exc, "reason", exc)
                raise DownloadError(f"could not download {url} ({reason}); are you offline? {hint}") from None
        got = digest.hexdigest()
        if got != sha256.lower():
            raise DownloadError(
                f"checksum mismatch for {url}: expected sha256 {sha256.lower()}, got {got}. The download was "
                f"deleted; the file may be corrupt or the mirror serves another file. {hint}"
            )
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


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
    no symlinks). Members are extracted into a temp folder inside ``data_dir``; then the data set
    folder is moved into place with ``os.replace`` (files missing from an existing folder are moved in
    one by one). Only members under ``folder/`` are kept.
    """
    try:
        zf = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as exc:
        raise DownloadError(f"{zip_path}: not a valid zip archive ({exc})") from None
    with zf:
        members = [(info, _member_path(info, zip_path)) for info in zf.infolist()]
        tmp_dir = Path(tempfile.mkdtemp(dir=data_dir, prefix=".extract-"))
        try:
            root = tmp_dir.resolve()
            for info, rel in members:
                if not rel or not (rel == folder or rel.startswith(folder + "/")):
                    continue
                dest = tmp_dir / rel
                if not dest.resolve().is_relative_to(root):  # belt and braces after _member_path
                    raise DownloadError(f"{zip_path}: member {info.filename!r} escapes the target folder")
                if info.is_dir():
                    dest.mkdir(parents=True, exist_ok=True)
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
            src_dir = tmp_dir / folder
            if not src_dir.is_dir():
                raise DownloadError(f"{zip_path}: the archive has no folder {folder!r}")
            target = data_dir / folder
            if not target.exists():
                os.replace(src_dir, target)
            else:
                for path in sorted(src_dir.rglob("*")):
                    dest = target / path.relative_to(src_dir)
                    if path.is_dir():
                        dest.mkdir(exist_ok=True)
                    elif not dest.exists():
                        os.replace(path, dest)
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)
    return data_dir / folder
