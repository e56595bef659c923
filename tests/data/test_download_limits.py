"""Downloads under hostile or failing conditions, against real HTTP servers on 127.0.0.1: a server sending
one byte a second (the overall deadline fires), an endless stream (the size cap fires), a stalled
server, and processes killed (SIGKILL, SIGTERM, SIGINT) in the middle of a download. Nothing may be left
behind in the data directory, except a SIGKILLed download's part file, which the next run removes."""

import contextlib
import hashlib
import http.server
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from fixtures_datasets import make_zip, ml100k_files
from metricrec.data.datasets import DownloadError, load_dataset
from metricrec.data.datasets.download import remove_stale_downloads
from metricrec.data.datasets.movielens import ML100K


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self):  # noqa: N802 - http.server's name
        try:
            self.server.behaviour(self, self.server.stop)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serving(behaviour):
    """An HTTP server on 127.0.0.1 answering every GET with ``behaviour(handler, stop_event)``; yields its base URL."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.behaviour, httpd.stop = behaviour, threading.Event()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/movielens"
    finally:
        httpd.stop.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def one_byte_a_second(h, stop, length=ML100K.size):
    h.send_response(200)
    h.send_header("Content-Length", str(length))
    h.end_headers()
    while not stop.is_set():
        h.wfile.write(b"P")
        h.wfile.flush()
        stop.wait(1.0)


def endless(h, stop):
    h.send_response(200)  # no Content-Length: the body ends when the connection closes (never)
    h.end_headers()
    block = b"\0" * (1 << 16)
    while not stop.is_set():
        h.wfile.write(block)


def announces(length):
    def behaviour(h, stop):
        h.send_response(200)
        h.send_header("Content-Length", str(length))
        h.end_headers()
        stop.wait(30)
    return behaviour


def zip_bytes(tmp_path):
    members = {f"ml-100k/{name}": data for name, data in ml100k_files().items()}
    data = make_zip(tmp_path / "good.zip", members).read_bytes()
    return data, hashlib.sha256(data).hexdigest()


def serves(data):
    def behaviour(h, stop):
        h.send_response(200)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)
    return behaviour


def test_slow_server_hits_the_overall_deadline(tmp_path):
    with serving(one_byte_a_second) as base:
        t0 = time.monotonic()
        with pytest.raises(DownloadError, match=r"not complete after the 2 s deadline \(\d bytes received"):
            load_dataset("ml-100k", tmp_path, base_url=base, deadline=2, timeout=60)
        assert time.monotonic() - t0 < 4.5  # not 60 s per read, not 4.9 million seconds
    assert list(tmp_path.iterdir()) == []


def test_endless_stream_stops_at_the_archive_size(tmp_path):
    with serving(endless) as base:
        t0 = time.monotonic()
        with pytest.raises(DownloadError, match=r"more than the 4,924,029 bytes expected"):
            load_dataset("ml-100k", tmp_path, base_url=base)  # the pinned checksum: the official size caps it
        assert time.monotonic() - t0 < 30
    assert list(tmp_path.iterdir()) == []  # the 4.9 MB part file is gone


def test_announced_size_over_the_cap_refused_before_the_first_byte(tmp_path):
    with serving(announces(10**12)) as base:
        with pytest.raises(DownloadError, match=r"announces 1,000,000,000,000 bytes, more than the 4,924,029"):
            load_dataset("ml-100k", tmp_path, base_url=base)
        with pytest.raises(DownloadError, match=r"more than the 1,000 expected"):
            load_dataset("ml-100k", tmp_path, base_url=base, sha256="0" * 64, size=1000)
    assert list(tmp_path.iterdir()) == []


def test_stalled_server_times_out_per_read(tmp_path):
    with serving(announces(100)) as base:
        with pytest.raises(DownloadError, match=r"no data for 0\.5 s after 0 bytes"):
            load_dataset("ml-100k", tmp_path, base_url=base, timeout=0.5)
    assert list(tmp_path.iterdir()) == []


def test_connection_closed_early_is_named(tmp_path):
    def short(h, stop):
        h.send_response(200)
        h.send_header("Content-Length", "1000")
        h.end_headers()
        h.wfile.write(b"x" * 10)
    with serving(short) as base:
        with pytest.raises(DownloadError, match=r"closed after 10 of 1,000 bytes"):
            load_dataset("ml-100k", tmp_path, base_url=base)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------- killed downloads
_LIBRARY = ("import sys; from metricrec.data.datasets import load_dataset; "
            "load_dataset('ml-100k', sys.argv[1], base_url=sys.argv[2], sha256='0' * 64)")


def _start_and_wait_for_part(argv, data_dir, env=None):
    # SIGINT at its default in the child: a background job of a non-interactive shell (CI started with
    # `cmd &`) inherits SIGINT ignored, and Python then keeps it ignored, as it should for such a job.
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not list(data_dir.glob(".*.part")):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"no part file appeared (exit {proc.returncode}): {err.decode()[-2000:]}")
        time.sleep(0.05)
    time.sleep(0.3)  # a few bytes in
    return proc


def test_sigkill_leaves_a_part_file_that_the_next_run_removes(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with serving(one_byte_a_second) as base:
        proc = _start_and_wait_for_part([sys.executable, "-c", _LIBRARY, str(data_dir), base], data_dir)
        proc.kill()
        proc.communicate()
    assert len(list(data_dir.glob(".ml-100k.zip.*.part"))) == 1  # what SIGKILL leaves
    data, digest = zip_bytes(tmp_path)
    with serving(serves(data)) as base:
        x = load_dataset("ml-100k", data_dir, base_url=base, sha256=digest, verify=False)
    assert x.nnz == 2
    assert sorted(p.name for p in data_dir.iterdir()) == ["ml-100k"]  # the stale part file is gone


def test_sigterm_removes_the_part_file_and_ends_the_process_by_sigterm(tmp_path):
    with serving(one_byte_a_second) as base:
        proc = _start_and_wait_for_part([sys.executable, "-c", _LIBRARY, str(tmp_path), base], tmp_path)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGTERM
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_cli_interrupted_download_exits_cleanly(tmp_path, sig, code):
    env = {**os.environ, "METRICREC_MIRROR": "", "PYTHONFAULTHANDLER": "1"}
    with serving(one_byte_a_second) as base:
        env["METRICREC_MIRROR"] = base
        argv = [sys.executable, "-m", "metricrec", "data", "stats", "--dataset", "ml-100k", "--data-dir", str(tmp_path)]
        proc = _start_and_wait_for_part(argv, tmp_path, env)
        proc.send_signal(sig)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)  # faulthandler prints where every thread is
            _, err = proc.communicate(timeout=30)
            pytest.fail(f"still running 30 s after the signal; its threads:\n{err.decode()[-4000:]}")
    assert proc.returncode == code
    assert "Traceback" not in err.decode() and len(err.decode().strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_remove_stale_downloads_keeps_live_ones(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live_pid = os.getppid()
    stamp = f"{time.time_ns():020d}"
    stale = tmp_path / f".ml-1m.zip.{stamp}.{dead.pid}.abcdef.part"
    live = tmp_path / f".ml-1m.zip.{stamp}.{live_pid}.abcdef.part"
    old_legacy, new_legacy = tmp_path / ".download-x1.part", tmp_path / ".download-x2.part"
    extract = tmp_path / ".extract-zz"
    for p in (stale, live, old_legacy, new_legacy):
        p.write_bytes(b"x")
    extract.mkdir()
    for p in (old_legacy, extract):
        os.utime(p, (time.time() - 7200, time.time() - 7200))
    other = tmp_path / "mine.part"
    other.write_bytes(b"keep")
    removed = remove_stale_downloads(tmp_path)
    assert sorted(p.name for p in removed) == sorted([stale.name, old_legacy.name, extract.name])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, new_legacy.name, other.name])
