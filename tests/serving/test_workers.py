"""`metricrec serve --workers 2` as a real process: both workers answer from one memory-mapped copy
of the model, /metrics counts the requests of all workers, the fast path answers exactly what the
full path answers, a reload under concurrent requests loses none and reaches every worker, and
SIGTERM lets a request in flight finish (200) before the process exits 0."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
httpx = pytest.importorskip("httpx")

from serving_fixtures import fit_tiny_model  # noqa: E402

from metricrec.serving.process import ServerProcess  # noqa: E402

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory, tiny_model):
    """One server of two workers for the whole module; the last test stops it (SIGTERM)."""
    model_dir = tmp_path_factory.mktemp("workers") / "model"
    tiny_model.save(model_dir)
    server = ServerProcess(model_dir, "--workers", "2", timeout=90)
    yield server, model_dir, tiny_model
    out = server.stop()
    assert "Traceback" not in out, out


_NEW_CONNECTIONS = httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=0))


def _fresh(url: str, path: str, **params):
    """One request on a new connection (the kernel hands each connection to either worker)."""
    return _NEW_CONNECTIONS.get(url + path, params=params)


def _worker_pids_answering(url: str, want: int, tries: int = 200) -> set[int]:
    seen: set[int] = set()
    for _ in range(tries):
        seen.add(_fresh(url, "/health").json()["pid"])
        if len(seen) >= want:
            break
    return seen


def _mapping(pid: int, suffix: str) -> tuple[str, int, int]:
    """(path, Rss kB, Pss kB) of the mapping of the file ending in ``suffix`` in process ``pid``."""
    found, fields = None, {}
    for line in open(f"/proc/{pid}/smaps").read().splitlines():
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            if found is not None:
                break
            if line.split()[-1].endswith(suffix):
                found = line.split()[-1]
        elif found is not None and line.endswith(" kB"):
            key, value = line.split(":", 1)
            fields[key] = int(value.split()[0])
    assert found is not None, f"no mapping of *{suffix} in process {pid}"
    return found, fields.get("Rss", 0), fields.get("Pss", 0)


def test_two_workers_answer_and_share_one_mapped_copy_of_the_tables(two_workers):
    server, _, model = two_workers
    pids = server.worker_pids()
    assert len(pids) == 2, pids
    assert _worker_pids_answering(server.url, 2) == set(pids)  # both serve
    for pid in pids:
        maps = open(f"/proc/{pid}/maps").read()
        assert "/tables/item.npy" in maps and "/tables/user.npy" in maps, maps[-2000:]
    paths = {_mapping(pid, "/tables/item.npy")[0] for pid in pids}
    assert len(paths) == 1  # the same file in both: one copy in the page cache
    inodes = {os.stat(p).st_ino for p in paths}
    assert len(inodes) == 1
    for pid in pids:  # the item table is read whole by every recommendation: resident, and shared
        _, rss, pss = _mapping(pid, "/tables/item.npy")
        assert rss > 0 and pss < rss, (pid, rss, pss)
    body = _fresh(server.url, "/recommend", user="100", n=5).json()
    assert body["items"] == model.recommend_raw([100], N=5)[0][0].tolist()


def test_the_fast_path_answers_exactly_what_fastapi_answers(two_workers):
    server, _, model = two_workers
    with httpx.Client(base_url=server.url, timeout=10) as c:
        for user in [str(u) for u in model.user_ids.tolist()[:30]] + ["0100", "nobody", "+100", "1e2"]:
            for n in ("1", "5", "80", "500"):
                fast = c.get(f"/recommend?user={user}&n={n}")
                full = c.get(f"/recommend?user={user}&n={n}&unused=1")  # an extra parameter: FastAPI's path
                assert (fast.status_code, fast.content) == (full.status_code, full.content), (user, n)
                assert fast.headers["content-type"] == full.headers["content-type"]
        assert c.get("/recommend?user=100&n=0").json()["error"] == "invalid_n"
        assert c.get("/recommend?user=100&n=05").content == c.get("/recommend?user=100&n=5&x=").content


def test_metrics_count_the_requests_of_every_worker(two_workers):
    server, _, _ = two_workers
    before = _fresh(server.url, "/metrics").text
    n_ok, n_missing = 12, 3
    for _ in range(n_ok):
        assert _fresh(server.url, "/recommend", user="101", n=3).status_code == 200
    for _ in range(n_missing):
        assert _fresh(server.url, "/recommend", user="nobody").status_code == 404
    r = _fresh(server.url, "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text

    def value(doc: str, line_start: str) -> float:
        found = [float(line.rsplit(" ", 1)[1]) for line in doc.splitlines() if line.startswith(line_start)]
        return sum(found)

    ok = 'metricrec_http_requests_total{method="GET",route="/recommend",status="200"}'
    missing = 'metricrec_http_requests_total{method="GET",route="/recommend",status="404"}'
    assert value(text, ok) - value(before, ok) == n_ok  # the sum over both workers
    assert value(text, missing) - value(before, missing) == n_missing
    errors = 'metricrec_http_errors_total{kind="client",route="/recommend"}'
    assert value(text, errors) - value(before, errors) == n_missing
    count = 'metricrec_http_request_duration_seconds_count{route="/recommend"}'
    assert value(text, count) - value(before, count) == n_ok + n_missing
    assert '# TYPE metricrec_http_request_duration_seconds histogram' in text
    assert 'metricrec_http_request_duration_seconds_bucket{le="0.005",route="/recommend"}' in text
    assert "metricrec_model_generation 1.0" in text and "metricrec_recommend_batch_size_count" in text
    assert "/metrics" not in _fresh(server.url, "/openapi.json").json()["paths"]


def _hammer(url: str, stop: threading.Event, results: list) -> None:
    with httpx.Client(base_url=url, timeout=10) as c:
        while not stop.is_set():
            try:
                results.append(c.get("/recommend", params={"user": "100", "n": 5}).status_code)
            except httpx.HTTPError as exc:  # a dropped request
                results.append(repr(exc))


def test_reload_under_concurrent_requests_reaches_every_worker_and_loses_none(two_workers):
    server, model_dir, _ = two_workers
    stop, results = threading.Event(), []
    threads = [threading.Thread(target=_hammer, args=(server.url, stop, results)) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        retrained = fit_tiny_model(seed=1)
        retrained.save(model_dir)
        r = httpx.post(server.url + "/reload", timeout=60)
        assert r.status_code == 200 and r.json()["generation"] == 2, r.text
        want = retrained.recommend_raw([100], N=5)[0][0].tolist()
        for _ in range(10):  # any worker, on a fresh connection: already the new model
            assert _fresh(server.url, "/recommend", user="100", n=5).json()["items"] == want
            assert _fresh(server.url, "/health").json()["generation"] == 2
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert len(results) > 20 and all(s == 200 for s in results), [s for s in results if s != 200][:5]
    assert _worker_pids_answering(server.url, 2) == set(server.worker_pids())
    metrics = _fresh(server.url, "/metrics").text
    assert 'metricrec_model_reloads_total{outcome="ok"}' in metrics and "metricrec_model_generation 2.0" in metrics


def test_sigterm_finishes_the_request_in_flight_then_exits_0(two_workers):
    server, _, _ = two_workers
    body = json.dumps({"items": ["item-1", "item-2", "item-5"], "n": 4}).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as s:
        s.sendall(b"POST /recommend HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                  b"content-length: %d\r\n\r\n" % len(body) + body[:7])  # in flight: half its body sent
        time.sleep(0.3)
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.7)  # the workers are shutting down, this request still open
        assert server.proc.poll() is None
        s.sendall(body[7:])
        response = b""
        while chunk := s.recv(65536):
            response += chunk
    head, _, payload = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), response
    assert len(json.loads(payload)["items"]) == 4
    assert server.proc.wait(30) == 0, server.output()
    with pytest.raises(httpx.TransportError):
        httpx.get(server.url + "/health", timeout=2)


def test_serve_errors_are_one_line(tmp_path):
    for argv, words in ((["--model", str(tmp_path / "none")], "no model at"),
                        (["--model", str(tmp_path), "--workers", "0"], "--workers is out of range"),
                        (["--model", str(tmp_path), "--threads", "0"], "--threads is out of range")):
        done = subprocess.run([sys.executable, "-m", "metricrec", "serve", *argv], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 2 and words in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.parametrize("kind, int_items", [("CML", True), ("BPR", False)])
def test_fast_path_equals_fastapi_in_process(kind, int_items):
    """In one process (create_app, no workers): a dot model and a model of integer ids too."""
    from fastapi.testclient import TestClient

    from metricrec.serving.app import create_app
    from metricrec.serving.service import ModelHolder

    model = fit_tiny_model(0, kind, int_items=int_items)
    holder = ModelHolder("unused", loader=lambda path: model)
    with TestClient(create_app(holder=holder)) as c:
        for user in [str(u) for u in model.user_ids.tolist()[:20]] + ["0150", "x"]:
            fast, full = c.get(f"/recommend?user={user}&n=7"), c.get(f"/recommend?user={user}&n=7&full=1")
            assert (fast.status_code, fast.content) == (full.status_code, full.content), user
        assert c.get("/metrics").status_code == 200


def test_snapshot_is_reused_only_while_its_files_match(tmp_path, tiny_model):
    from metricrec.serving.service import load_serving_model
    from metricrec.serving.snapshot import load_snapshot, prepare_snapshot

    model_dir, cache = tmp_path / "model", tmp_path / "cache"
    tiny_model.save(model_dir)

    def loader(p):
        return load_serving_model(p, warm_up=False)

    digest, snap = prepare_snapshot(model_dir, cache, exact=True, loader=loader)
    assert prepare_snapshot(model_dir, cache, exact=True, loader=loader) == (digest, snap)  # unchanged: reused
    model, tables = load_snapshot(snap, loader=loader)
    assert tables is not None and not tables.item.flags.writeable
    assert model.recommend_raw([100], N=5)[0][0].tolist() == tiny_model.recommend_raw([100], N=5)[0][0].tolist()
    table = snap / "tables" / "item.npy"
    data = bytearray(table.read_bytes())
    data[-1] ^= 0xFF  # a damaged cache file: its sha256 no longer matches, so the snapshot is made again
    table.write_bytes(bytes(data))
    assert prepare_snapshot(model_dir, cache, exact=True, loader=loader) == (digest, snap)
    assert (snap / "tables" / "item.npy").read_bytes() != bytes(data)
    fit_tiny_model(seed=1).save(model_dir)  # another model: another snapshot
    assert prepare_snapshot(model_dir, cache, exact=True, loader=loader)[0] != digest
