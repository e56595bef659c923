"""Downloads against a real HTTP server on 127.0.0.1 serving zips built here."""

import functools
import hashlib
import http.server
import socket
import threading

import pytest

from fixtures_datasets import make_zip, ml100k_files
from metricrec.data.datasets import DownloadError, load_dataset
from metricrec.data.datasets.download import safe_extract


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    handler = functools.partial(QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{httpd.server_address[1]}/movielens"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def serve_zip(root, members):
    (root / "movielens").mkdir(exist_ok=True)
    path = make_zip(root / "movielens" / "ml-100k.zip", members)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def good_members():
    members = {f"ml-100k/{name}": data for name, data in ml100k_files().items()}
    members["ml-100k/README"] = b"readme"
    members["other/ignored.txt"] = b"x"
    return members


def test_good_download(server, tmp_path):
    root, base = server
    digest = serve_zip(root, good_members())
    data = tmp_path / "data"
    data.mkdir()
    x = load_dataset("ml-100k", data, base_url=base, sha256=digest, verify=False)
    assert x.shape == (3, 2) and x.nnz == 2
    assert sorted(p.name for p in data.iterdir()) == ["ml-100k"]  # no temp files, nothing else extracted
    assert (data / "ml-100k" / "u.item").read_bytes() == ml100k_files()["u.item"]
    # second load uses the files on disk: the server is not needed
    (root / "movielens" / "ml-100k.zip").unlink()
    assert load_dataset("ml-100k", data, base_url=base, download=False, verify=False).nnz == 2


def test_mirror_env(server, tmp_path, monkeypatch):
    root, base = server
    digest = serve_zip(root, good_members())
    monkeypatch.setenv("METRICREC_MIRROR", base)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("METRICREC_DATA", raising=False)
    assert load_dataset("ml-100k", sha256=digest, verify=False).nnz == 2  # default cache dir is created
    assert (tmp_path / "cache" / "metricrec" / "ml-100k" / "u.data").is_file()


def test_pinned_checksum_rejects_other_file(server, tmp_path):
    root, base = server
    serve_zip(root, good_members())
    with pytest.raises(DownloadError, match="checksum mismatch.*50d2a982"):
        load_dataset("ml-100k", tmp_path, base_url=base)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_download(server, tmp_path):
    root, base = server
    digest = serve_zip(root, good_members())
    zpath = root / "movielens" / "ml-100k.zip"
    zpath.write_bytes(zpath.read_bytes()[:-100])  # truncated in transit
    with pytest.raises(DownloadError) as err:
        load_dataset("ml-100k", tmp_path, base_url=base, sha256=digest)
    msg = str(err.value)
    assert "checksum mismatch" in msg and f"{base}/ml-100k.zip" in msg and str(tmp_path) in msg
    assert list(tmp_path.iterdir()) == []


def test_path_traversal_member_refused(server, tmp_path):
    root, base = server
    members = good_members()
    members["ml-100k/../../evil.txt"] = b"owned"
    digest = serve_zip(root, members)
    data = tmp_path / "a" / "data"
    data.mkdir(parents=True)
    with pytest.raises(DownloadError, match=r"refusing member with a '\.\.' path component"):
        load_dataset("ml-100k", data, base_url=base, sha256=digest)
    assert list(data.iterdir()) == []
    assert not list(tmp_path.rglob("evil.txt"))


def test_unsafe_members_refused(tmp_path):
    import stat
    import zipfile

    for name in ("/abs/ml-100k/u.data", "C:/x/u.data"):
        z = make_zip(tmp_path / "a.zip", {name: b"1"})
        with pytest.raises(DownloadError, match="absolute path"):
            safe_extract(z, tmp_path, "ml-100k")
    link = zipfile.ZipInfo("ml-100k/u.data")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(tmp_path / "l.zip", "w") as zf:
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(DownloadError, match="symbolic link"):
        safe_extract(tmp_path / "l.zip", tmp_path, "ml-100k")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip", "l.zip"]


def test_offline(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}/movielens"
    with pytest.raises(DownloadError) as err:
        load_dataset("ml-100k", tmp_path, base_url=base, timeout=5)
    msg = str(err.value)
    assert f"{base}/ml-100k.zip" in msg and str(tmp_path / "ml-100k") in msg and "u.data" in msg
    assert list(tmp_path.iterdir()) == []


def test_http_404(server, tmp_path):
    _, base = server
    with pytest.raises(DownloadError, match="HTTP 404"):
        load_dataset("ml-1m", tmp_path, base_url=base)
    assert list(tmp_path.iterdir()) == []
