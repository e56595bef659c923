"""`metricrec serve` as a real server process, called over HTTP with httpx: happy paths, every
refused request (4xx JSON, never a 500 or a traceback), and reloads while requests are in flight."""

import os
import signal
import threading
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("faiss")
httpx = pytest.importorskip("httpx")

from serving_fixtures import fit_tiny_model  # noqa: E402

from metricrec.serving.ann import AnnIndex, index_dir_for  # noqa: E402
from metricrec.serving.process import ServerProcess  # noqa: E402

RESPONSES: list = []  # every response this module received


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model):
    model_dir = tmp_path_factory.mktemp("served") / "model"
    tiny_model.save(model_dir)
    AnnIndex.build(tiny_model.item_embeddings, "hnsw", m=8).save(index_dir_for(model_dir))
    server = ServerProcess(model_dir, timeout=60)
    client = httpx.Client(base_url=server.url, timeout=10, event_hooks={"response": [RESPONSES.append]})
    yield server, client, tiny_model
    client.close()
    out = server.stop()
    assert "Traceback" not in out, out


def _liked(model, user):
    row = model.user_index([user])[0]
    return set(model.item_map.raw(model.user_items[row].indices).tolist())


def test_health(served):
    server, client, model = served
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["n_users"] == 60 and h["n_items"] == 80 and h["factors"] == 8
    assert h["index"] == "hnsw" and h["model"].endswith("model") and h["loaded_at"].endswith("+00:00")


def test_recommend_a_known_user_by_its_raw_id(served):
    _, client, model = served
    r = client.get("/recommend", params={"user": "100", "n": 5})
    assert r.status_code == 200
    body = r.json()
    assert body["user"] == 100  # the model's id, typed as the model has it
    assert len(body["items"]) == 5 and all(i.startswith("item-") for i in body["items"])
    assert not set(body["items"]) & _liked(model, 100)
    assert body["scores"] == sorted(body["scores"], reverse=True)
    exact_items, _ = model.recommend_raw([100], N=5)[0]
    assert body["items"] == exact_items.tolist()  # the index is exact on 80 items
    assert len(client.get("/recommend", params={"user": 101}).json()["items"]) == 10  # default n


def test_similar_items_leave_the_item_out(served):
    _, client, _ = served
    body = client.get("/similar-items", params={"item": "item-3", "n": 4}).json()
    assert body["item"] == "item-3" and len(body["items"]) == 4 and "item-3" not in body["items"]


def test_new_user_is_folded_in_and_gets_unliked_items(served):
    _, client, model = served
    liked = ["item-1", "item-2", "item-5", "item-2"]
    r = client.post("/recommend", json={"items": liked, "n": 6})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["liked"] == ["item-1", "item-2", "item-5"] and len(body["items"]) == 6
    assert not set(body["items"]) & set(liked) and set(body["items"]) <= set(model.item_map.ids.tolist())
    assert body["scores"] == sorted(body["scores"], reverse=True)


BIG = b'{"items": ["' + b"x" * 1_500_000 + b'"]}'


def _chunks():
    for _ in range(20):
        yield b" " * 100_000


BAD_REQUESTS = [
    # (method, url, kwargs, status, error)
    ("GET", "/recommend?user=999", {}, 404, "unknown_id"),
    ("GET", "/recommend?user=0100", {}, 404, "unknown_id"),  # the id rule: "0100" is not 100
    ("GET", "/recommend?user=abc", {}, 404, "unknown_id"),
    ("GET", "/recommend", {}, 422, "missing_user"),
    ("GET", "/recommend?user=", {}, 422, "missing_user"),
    ("GET", "/recommend?user=" + "7" * 1001, {}, 422, "invalid_user"),
    ("GET", "/recommend?user=100&n=0", {}, 422, "invalid_n"),
    ("GET", "/recommend?user=100&n=-3", {}, 422, "invalid_n"),
    ("GET", "/recommend?user=100&n=1001", {}, 422, "invalid_n"),
    ("GET", "/recommend?user=100&n=ten", {}, 422, "invalid_n"),
    ("GET", "/recommend?user=100&n=2.5", {}, 422, "invalid_n"),
    ("GET", "/recommend?user=100&n=99999999999999999999", {}, 422, "invalid_n"),
    ("GET", "/similar-items?item=nope", {}, 404, "unknown_id"),
    ("GET", "/similar-items?item=item-1&n=x", {}, 422, "invalid_n"),
    ("GET", "/similar-items", {}, 422, "missing_item"),
    ("POST", "/recommend", {"content": b'{"items": [', "headers": {"content-type": "application/json"}}, 400,
     "malformed_json"),
    ("POST", "/recommend", {"content": b""}, 400, "malformed_json"),
    ("POST", "/recommend", {"content": b"\xff\xfe\x00"}, 400, "malformed_json"),
    ("POST", "/recommend", {"content": b"[" * 200_000}, 400, "malformed_json"),  # nesting: no RecursionError 500
    ("POST", "/recommend", {"json": ["item-1"]}, 422, "invalid_body"),
    ("POST", "/recommend", {"json": {"items": ["item-1"], "user": 3}}, 422, "invalid_body"),
    ("POST", "/recommend", {"json": {"items": []}}, 422, "invalid_items"),
    ("POST", "/recommend", {"json": {"items": "item-1"}}, 422, "invalid_items"),
    ("POST", "/recommend", {"json": {"items": [None]}}, 422, "invalid_item"),
    ("POST", "/recommend", {"json": {"items": [1.5]}}, 422, "invalid_item"),
    ("POST", "/recommend", {"json": {"items": ["item-1", "nope"]}}, 404, "unknown_id"),
    ("POST", "/recommend", {"json": {"items": ["item-1"], "n": 0}}, 422, "invalid_n"),
    ("POST", "/recommend", {"json": {"items": ["item-1"], "n": "5"}}, 422, "invalid_n"),
    ("POST", "/recommend", {"json": {"items": ["item-1"], "n": True}}, 422, "invalid_n"),
    ("POST", "/recommend", {"json": {"items": ["item-1"] * 1001}}, 422, "too_many_items"),
    ("POST", "/recommend", {"content": BIG, "headers": {"content-type": "application/json"}}, 413,
     "body_too_large"),
    ("POST", "/recommend", {"content": _chunks, "headers": {"content-type": "application/json"}}, 413,
     "body_too_large"),  # chunked: no Content-Length, cut off while streaming
    ("POST", "/recommend", {"content": b'{"items": ["item-1"]}', "headers": {"content-type": "text/plain"}}, 415,
     "unsupported_media_type"),
    ("PUT", "/recommend", {}, 405, "method_not_allowed"),
    ("DELETE", "/health", {}, 405, "method_not_allowed"),
    ("GET", "/recommendations", {}, 404, "not_found"),
    ("GET", "/reload", {}, 405, "method_not_allowed"),
]


@pytest.mark.parametrize("method,url,kw,status,error", BAD_REQUESTS, ids=[f"{m} {u[:40]} -> {s}"
                                                                          for m, u, _, s, _ in BAD_REQUESTS])
def test_bad_requests_get_a_4xx_json_error(served, method, url, kw, status, error):
    _, client, _ = served
    kw = {k: (v() if callable(v) else v) for k, v in kw.items()}
    r = client.request(method, url, **kw)
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "detail"} and body["error"] == error, body
    assert "Traceback" not in r.text and "\n" not in body["detail"]


def test_no_response_was_a_500(served):
    _, client, _ = served
    assert client.get("/health").status_code == 200  # the server survived all of the above
    assert RESPONSES and all(r.status_code < 500 for r in RESPONSES), [r.status_code for r in RESPONSES]


def _hammer(url: str, stop: threading.Event, results: list) -> None:
    with httpx.Client(base_url=url, timeout=10) as c:
        while not stop.is_set():
            try:
                results.append(c.get("/recommend", params={"user": "100", "n": 5}).status_code)
            except httpx.HTTPError as exc:  # a dropped request
                results.append(repr(exc))


def _wait_generation(client, generation: int, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        h = client.get("/health").json()
        if h["generation"] >= generation:
            return h
        time.sleep(0.05)
    raise AssertionError(f"generation {generation} not reached in {timeout} s")


def test_reload_while_requests_are_in_flight(tmp_path, tiny_model):
    model_dir = tmp_path / "model"
    tiny_model.save(model_dir)
    with ServerProcess(model_dir, "--no-warm-up", timeout=60) as server, \
            httpx.Client(base_url=server.url, timeout=10) as client:
        stop, results = threading.Event(), []
        workers = [threading.Thread(target=_hammer, args=(server.url, stop, results)) for _ in range(4)]
        for w in workers:
            w.start()
        try:
            time.sleep(0.3)
            retrained = fit_tiny_model(seed=1)
            retrained.save(model_dir)
            r = client.post("/reload")
            assert r.status_code == 200 and r.json()["generation"] == 2, r.text
            after_reload = client.get("/recommend", params={"user": "100", "n": 5}).json()["items"]
            assert after_reload == retrained.recommend_raw([100], N=5)[0][0].tolist()
            os.kill(server.proc.pid, signal.SIGHUP)
            assert _wait_generation(client, 3)["n_items"] == 80
            (model_dir / "config.json").write_text("{broken")  # a bad model on disk: refused, the old one kept
            r = client.post("/reload")
            assert r.status_code == 409 and r.json()["error"] == "reload_failed", r.text
            assert client.get("/health").json()["generation"] == 3
            time.sleep(0.3)
        finally:
            stop.set()
            for w in workers:
                w.join(10)
        out = server.stop()
    assert len(results) > 20 and all(s == 200 for s in results), [s for s in results if s != 200][:5]
    assert "Traceback" not in out and "SIGHUP: reloaded" in out, out
