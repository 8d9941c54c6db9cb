"""The HTTP service, over real sockets: uvicorn serving `create_app` on a free loopback port."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest
import uvicorn

from cemg.api import Recommender
from cemg.serve.app import MAX_HISTORY, create_app


def _wait_until_healthy(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer /health within {seconds} s")


@pytest.fixture(scope="module")
def rec(tiny_run) -> Recommender:
    return Recommender.load(tiny_run, device="cpu")


@pytest.fixture(scope="module")
def server(rec):
    """uvicorn in a thread, on a socket bound to port 0 (the kernel picks a free port)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(rec), log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    _wait_until_healthy(url, 30)
    yield url
    srv.should_exit = True
    thread.join(timeout=10)
    sock.close()


def test_recommend_returns_titled_items(server, rec):
    keys = [rec.catalogue.key(i) for i in (0, 1, 2)]
    r = httpx.post(f"{server}/recommend", json={"history": keys, "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["k"] == 5 and body["history_length"] == 3 and body["model"] == "causal"
    assert body["mode"] == "semantic"  # the generator mode answers with every recommendation
    assert [row["rank"] for row in body["items"]] == [1, 2, 3, 4, 5]
    expected = rec.recommend(keys, k=5)
    assert [row["item"] for row in body["items"]] == [row.item for row in expected]
    for row in body["items"]:
        assert row["title"] == rec.catalogue.title(row["item"]) and row["title"]
        assert row["key"] == rec.catalogue.key(row["item"])
    # indices and keys name the same items
    by_index = httpx.post(f"{server}/recommend", json={"history": [0, 1, 2], "k": 5}).json()
    assert by_index["items"] == body["items"]


@pytest.mark.parametrize(
    "body, where",
    [
        ({"history": []}, ["body", "history"]),  # empty
        ({"history": [0] * (MAX_HISTORY + 1)}, ["body", "history"]),  # too long
        ({"history": [0], "k": 0}, ["body", "k"]),
        ({"history": [0], "k": 101}, ["body", "k"]),
        ({"history": [0], "k": "5"}, ["body", "k"]),  # no string -> int coercion
        ({"history": [1.5]}, ["body", "history", 0]),
        ({"history": [True]}, ["body", "history", 0]),  # a boolean is not an item index
        ({"history": "i0001"}, ["body", "history"]),
        ({"history": [0], "extra": 1}, ["body", "extra"]),
        ({}, ["body", "history"]),
    ],
)
def test_bad_bodies_are_422(server, body, where):
    r = httpx.post(f"{server}/recommend", json=body)
    assert r.status_code == 422, r.text
    assert any(err["loc"][: len(where)] == where for err in r.json()["detail"])


def test_unknown_items_are_422_naming_them(server, rec):
    r = httpx.post(f"{server}/recommend", json={"history": [0, "not-an-item"]})
    assert r.status_code == 422
    (err,) = r.json()["detail"]
    assert err["loc"] == ["body", "history", 1] and err["type"] == "unknown_item"
    assert "'not-an-item'" in err["msg"] and err["input"] == "not-an-item"
    r = httpx.post(f"{server}/recommend", json={"history": [rec.n_items]})
    assert r.status_code == 422 and f"item index {rec.n_items} is out of range" in r.json()["detail"][0]["msg"]


def test_items_endpoint(server, rec):
    key = rec.catalogue.key(3)
    body = httpx.get(f"{server}/items/{key}").json()
    assert body["item"] == 3 and body["title"] == rec.catalogue.title(3)
    assert body["codes"] == rec.catalogue.semantic_ids.codes[3].tolist()
    assert set(body["fusion_weights"]) == {"image", "text"}
    assert httpx.get(f"{server}/items/3", params={"by": "index"}).json() == body
    assert len(httpx.get(f"{server}/items/{key}", params={"neighbours": 1}).json()["neighbours"]) <= 1
    missing = httpx.get(f"{server}/items/no-such-key")
    assert missing.status_code == 404 and "'no-such-key'" in missing.json()["detail"][0]["msg"]
    assert httpx.get(f"{server}/items/{rec.n_items}", params={"by": "index"}).status_code == 404
    assert httpx.get(f"{server}/items/x", params={"by": "index"}).status_code == 422
    assert httpx.get(f"{server}/items/{key}", params={"by": "name"}).status_code == 422


def test_health_metrics_and_openapi(server, rec):
    health = httpx.get(f"{server}/health").json()
    assert health["status"] == "ok" and health["items"] == rec.n_items and health["generator"] == "causal"
    before = httpx.get(f"{server}/metrics").json().get("POST /recommend", {}).get("count", 0)
    for _ in range(3):
        httpx.post(f"{server}/recommend", json={"history": [0], "k": 2})
    httpx.post(f"{server}/recommend", json={"history": []})
    httpx.get(f"{server}/no-such-route")
    metrics = httpx.get(f"{server}/metrics").json()
    rec_stats = metrics["POST /recommend"]
    assert rec_stats["count"] == before + 4
    assert rec_stats["status"]["200"] >= 3 and rec_stats["status"]["422"] >= 1
    lat = rec_stats["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert metrics["unmatched"]["status"]["404"] >= 1
    assert "GET /health" in metrics
    spec = httpx.get(f"{server}/openapi.json").json()
    assert {"/recommend", "/items/{item_id}", "/health", "/metrics"} <= set(spec["paths"])
    assert httpx.get(f"{server}/docs").status_code == 200


def test_cemg_serve_command(tiny_run, monkeypatch):
    """`cemg serve RUN_DIR --host --port` end to end, in-process: uvicorn.run is swapped for the same
    server run in a thread so the test can stop it (a subprocess would spend ~20 s importing torch)."""
    from typer.testing import CliRunner

    from cemg.cli import app

    with socket.socket() as probe:  # a free port; the short window before the server binds it is harmless
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    servers: list[uvicorn.Server] = []

    def run_in_thread(asgi_app, host, port, log_level):
        servers.append(uvicorn.Server(uvicorn.Config(asgi_app, host=host, port=port, log_level=log_level)))
        threading.Thread(target=servers[0].run, daemon=True).start()

    monkeypatch.setattr(uvicorn, "run", run_in_thread)
    result = CliRunner().invoke(app, ["serve", str(tiny_run), "--host", "127.0.0.1", "--port", str(port),
                                      "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    assert f"http://127.0.0.1:{port}" in result.output
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_healthy(url, 30)
        r = httpx.post(f"{url}/recommend", json={"history": ["i0001", "i0002"], "k": 3})
        assert r.status_code == 200, r.text
        assert len(r.json()["items"]) == 3 and all(row["title"] for row in r.json()["items"])
    finally:
        servers[0].should_exit = True
