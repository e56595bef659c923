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
    assert body["user"] == "100"  # ids are strings, whatever the model's id kind
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
    assert all(isinstance(i, str) for i in body["items"])
    assert not set(body["items"]) & set(liked) and set(body["items"]) <= set(model.item_map.ids.tolist())
    assert body["scores"] == sorted(body["scores"], reverse=True)


def test_item_filters_restrict_and_exclude(served):
    _, client, model = served
    full, _ = model.recommend_raw([100], N=80)[0]  # every unliked item, best first
    top = full[:6].tolist()
    r = client.get("/recommend", params=[("user", "100"), ("n", "4"), ("exclude", top[0]), ("exclude", top[2])])
    assert r.status_code == 200, r.text
    assert r.json()["items"] == [i for i in top if i not in (top[0], top[2])][:4]
    allowed = full[[5, 1, 9]].tolist()  # any order in: ranked out in the model's order
    r = client.get("/recommend", params=[("user", "100")] + [("include", a) for a in allowed])
    assert r.json()["items"] == [i for i in full.tolist() if i in allowed]
    liked = sorted(_liked(model, 100))[0]  # an included liked item is still left out
    r = client.get("/recommend", params=[("user", "100"), ("include", liked), ("include", allowed[0])])
    assert r.json()["items"] == [allowed[0]]
    r = client.post("/recommend", json={"items": ["item-1", "item-2"], "n": 3, "exclude": ["item-3"],
                                        "include": ["item-3", "item-4", "item-7", "item-9"]})
    assert r.status_code == 200 and set(r.json()["items"]) <= {"item-4", "item-7", "item-9"}, r.text
    assert len(r.json()["items"]) == 3
    r = client.get("/recommend", params=[("user", "100"), ("exclude", "nope")])
    assert r.status_code == 404 and r.json()["error"] == "unknown_id" and "nope" in r.json()["detail"]


def test_batch_is_the_single_user_answer_for_each_user(served):
    _, client, model = served
    users = ["100", 101, "117", "100"]
    r = client.post("/recommend/batch", json={"users": users, "n": 5, "exclude": ["item-3"]})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["user"] for x in results] == ["100", "101", "117", "100"]
    for x in results:
        one = client.get("/recommend", params=[("user", x["user"]), ("n", "5"), ("exclude", "item-3")]).json()
        assert x["items"] == one["items"] and x["scores"] == pytest.approx(one["scores"], abs=2e-6)
        assert "item-3" not in x["items"] and not set(x["items"]) & _liked(model, int(x["user"]))
    r = client.post("/recommend/batch", json={"users": ["100", "nobody"]})
    assert r.status_code == 404 and "nobody" in r.json()["detail"]


@pytest.fixture(scope="module")
def served_int_ids(tmp_path_factory):
    """A model whose user and item ids are all integers (users 150..209, items 200..279), no index."""
    model = fit_tiny_model(0, int_items=True)
    model_dir = tmp_path_factory.mktemp("served-int") / "model"
    model.save(model_dir)
    server = ServerProcess(model_dir, timeout=60)
    client = httpx.Client(base_url=server.url, timeout=10, event_hooks={"response": [RESPONSES.append]})
    yield client, model
    client.close()
    out = server.stop()
    assert "Traceback" not in out, out


def test_integer_ids_come_back_as_strings(served_int_ids):
    client, model = served_int_ids
    r = client.get("/recommend", params={"user": "196", "n": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user"] == "196" and r.text.startswith('{"user":"196","items":["')
    assert len(body["items"]) == 5 and all(isinstance(i, str) for i in body["items"])
    exact_items, _ = model.recommend_raw([196], N=5)[0]
    assert body["items"] == [str(i) for i in exact_items.tolist()]
    assert client.get("/recommend", params={"user": "0196"}).json()["error"] == "unknown_id"  # not 196


def test_similar_items_of_an_integer_id_are_strings(served_int_ids):
    client, model = served_int_ids
    body = client.get("/similar-items", params={"item": 201, "n": 4}).json()
    assert body["item"] == "201" and len(body["items"]) == 4 and all(isinstance(i, str) for i in body["items"])
    nearest, _ = model.similar_items_raw([201], N=5)[0]
    assert body["items"] == [str(i) for i in nearest.tolist() if i != 201][:4]


def test_json_number_ids_are_their_text(served_int_ids):
    client, _ = served_int_ids
    as_text = client.post("/recommend", json={"items": ["201", "202", "203"], "n": 5}).json()
    as_numbers = client.post("/recommend", json={"items": [201, 202.0, "203", 203], "n": 5}).json()
    assert as_text["liked"] == as_numbers["liked"] == ["201", "202", "203"]  # 203 and "203" are one item
    assert as_numbers["items"] == as_text["items"] and len(as_text["items"]) == 5
    assert all(isinstance(i, str) for i in as_numbers["items"])
    # the same fold-in twice; 2e-6: the scores are rounded to 6 decimals after threaded float sums
    assert as_numbers["scores"] == pytest.approx(as_text["scores"], abs=2e-6)
    r = client.post("/recommend", json={"items": ["0201"]})
    assert r.status_code == 404 and r.json()["error"] == "unknown_id"  # "0201" is another id than 201


def _schema(doc: dict, path: str, method: str) -> dict:
    schema = doc["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"]
    return doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]["properties"]


def test_openapi_says_ids_are_strings(served):
    _, client, _ = served
    r = client.get("/openapi.json")
    assert r.status_code == 200, r.text
    doc = r.json()
    for path, method, key in (("/recommend", "get", "user"), ("/similar-items", "get", "item"),
                              ("/recommend", "post", "liked")):
        props = _schema(doc, path, method)
        query = props[key] if key != "liked" else props[key]["items"]
        assert query["type"] == "string", (path, method, props)
        assert props["items"]["type"] == "array" and props["items"]["items"] == {"type": "string"}
        assert {"type": "number"} in props["scores"]["items"]["anyOf"]
        assert doc["paths"][path][method]["responses"]["404"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorBody"}
    # the parameters FastAPI validates: the id, n within the server's limit, repeatable item filters
    params = {p["name"]: p for p in doc["paths"]["/recommend"]["get"]["parameters"]}
    assert set(params) == {"user", "n", "include", "exclude"} and params["user"]["required"]
    assert params["user"]["schema"]["type"] == "string" and params["user"]["schema"]["maxLength"] == 1000
    assert params["n"]["schema"]["type"] == "integer" and params["n"]["schema"]["maximum"] == 1000
    assert params["n"]["schema"]["minimum"] == 1 and params["n"]["schema"]["default"] == 10
    assert {"type": "array", "items": {"type": "string"}, "maxItems": 1000} in params["exclude"]["schema"]["anyOf"]
    for path, name in (("/recommend", "NewUserRequest"), ("/recommend/batch", "BatchRequest")):
        ref = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        body = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
        assert ref.endswith(name) and body["additionalProperties"] is False
        ids = body["properties"]["items" if name == "NewUserRequest" else "users"]["items"]["anyOf"]
        assert ids == [{"type": "integer"}, {"type": "number"}, {"type": "string"}]
    assert set(doc["paths"]) == {"/health", "/recommend", "/recommend/batch", "/similar-items", "/reload"}
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/openapi.json" in docs.text


def test_every_response_matches_its_documented_schema(served, served_int_ids):
    from metricrec.serving import schema

    for client in (served[1], served_int_ids[0]):
        user, item = ("100", "item-3") if client is served[1] else ("196", "201")
        liked = ["item-1", "item-2"] if client is served[1] else [201, "202"]
        for model, r in ((schema.RecommendResponse, client.get("/recommend", params={"user": user, "n": 3})),
                         (schema.SimilarItemsResponse, client.get("/similar-items", params={"item": item, "n": 3})),
                         (schema.NewUserResponse, client.post("/recommend", json={"items": liked, "n": 3})),
                         (schema.Health, client.get("/health")),
                         (schema.ErrorBody, client.get("/recommend", params={"user": "nobody"}))):
            body = r.json()
            assert set(body) == set(model.model_fields), (model.__name__, body)  # nothing undocumented
            model.model_validate(body, strict=True)  # strict: an int where the schema says str fails


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
    ("POST", "/recommend", {"json": {"items": [1e20]}}, 422, "invalid_item"),  # whole, but not one exact integer
    ("POST", "/recommend", {"json": {"items": [True]}}, 422, "invalid_item"),
    ("POST", "/recommend", {"content": b'{"items": [NaN]}', "headers": {"content-type": "application/json"}}, 422,
     "invalid_item"),
    ("POST", "/recommend", {"json": {"items": [7]}}, 404, "unknown_id"),  # 7 is the id "7", not "item-7"
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
    ("GET", "/recommend?user=100&exclude=" + "&exclude=".join(["item-1"] * 1001), {}, 422, "too_many_items"),
    ("POST", "/recommend", {"json": {"items": ["item-1"], "exclude": [None]}}, 422, "invalid_item"),
    ("POST", "/recommend", {"json": {"items": ["item-1"], "include": "item-2"}}, 422, "invalid_include"),
    ("POST", "/recommend", {"json": {"items": ["item-1"], "include": ["nope"]}}, 404, "unknown_id"),
    ("POST", "/recommend/batch", {"json": {"users": []}}, 422, "invalid_users"),
    ("POST", "/recommend/batch", {"json": {"users": "100"}}, 422, "invalid_users"),
    ("POST", "/recommend/batch", {"json": {"users": [True]}}, 422, "invalid_user"),
    ("POST", "/recommend/batch", {"json": {"users": ["100"], "n": 1001}}, 422, "invalid_n"),
    ("POST", "/recommend/batch", {"json": {"users": ["100"], "m": 3}}, 422, "invalid_body"),
    ("POST", "/recommend/batch", {"json": {"users": ["100"] * 1001}}, 422, "too_many_users"),
    ("POST", "/recommend/batch", {"content": b'{"users": [', "headers": {"content-type": "application/json"}}, 400,
     "malformed_json"),
    ("GET", "/recommend/batch", {}, 405, "method_not_allowed"),
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


def test_every_request_is_one_json_line_in_the_access_log(served):
    import json

    server, client, _ = served
    client.get("/recommend", params={"user": "100", "n": 3, "exclude": "item-3"})
    client.get("/recommend", params={"user": "nobody"})
    time.sleep(0.2)  # the line is written after the response is sent
    lines = [json.loads(x) for x in server.output().splitlines() if x.startswith('{"ts"')]
    ok = [x for x in lines if x["query"] == "user=100&n=3&exclude=item-3"]
    bad = [x for x in lines if x["query"] == "user=nobody"]
    assert ok and ok[-1]["status"] == 200 and ok[-1]["method"] == "GET" and ok[-1]["path"] == "/recommend"
    assert bad and bad[-1]["status"] == 404 and bad[-1]["bytes"] > 0
    assert all(0 <= x["ms"] < 10_000 and x["client"].startswith("127.0.0.1:") for x in ok + bad)


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
