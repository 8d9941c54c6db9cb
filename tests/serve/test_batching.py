"""Micro-batching of POST /recommend (cemg.serve.batching): concurrent requests share generator calls
and get exactly what they would get one at a time; a bad request fails alone."""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
import threading
from types import SimpleNamespace

import httpx
import pytest

from cemg.api import Recommender, UnknownItem
from cemg.serve.app import create_app
from cemg.serve.batching import BatchingConfig, MicroBatcher


@pytest.fixture(scope="module")
def rec(tiny_run) -> Recommender:
    return Recommender.load(tiny_run, device="cpu")


def _bodies(rec: Recommender, n: int, seed: int) -> list[dict]:
    """Histories of different lengths (the batch pads them), as keys or indices, with a few k and
    exclusion settings so that one burst holds several batch groups."""
    rng = random.Random(seed)
    bodies = []
    for _ in range(n):
        items = [rng.randrange(rec.n_items) for _ in range(rng.randint(1, 25))]
        history = [rec.catalogue.key(i) for i in items] if rng.random() < 0.5 else items
        body = {"history": history, "k": rng.choice([3, 10])}
        if rng.random() < 0.3:
            body["exclude_history"] = False
        bodies.append(body)
    return bodies


async def _post_all(app, bodies: list[dict], concurrent_: bool) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        if concurrent_:
            return await asyncio.gather(*(client.post("/recommend", json=body) for body in bodies))
        return [await client.post("/recommend", json=body) for body in bodies]


def test_concurrent_batched_requests_match_sequential_unbatched(rec):
    bodies = _bodies(rec, 30, seed=0)
    plain = asyncio.run(_post_all(create_app(rec, BatchingConfig(enabled=False)), bodies, concurrent_=False))
    # A generous wait so the burst really lands in shared batches on a busy machine.
    app = create_app(rec, BatchingConfig(max_batch=16, max_wait_ms=200.0))
    try:
        batched = asyncio.run(_post_all(app, bodies, concurrent_=True))
        stats = app.state.batcher.stats()
    finally:
        app.state.batcher.close()
    assert [r.status_code for r in plain] == [200] * 30 and [r.status_code for r in batched] == [200] * 30
    # Same items, ranks, keys, titles; scores equal to float32 rounding only, because a matrix
    # product over a taller batch may sum in another order (measured differences ~2e-7).
    for got, want in zip(batched, plain):
        got, want = got.json(), want.json()
        assert {**got, "items": None} == {**want, "items": None}
        assert [{**row, "score": None} for row in got["items"]] == [{**row, "score": None} for row in want["items"]]
        assert [row["score"] for row in got["items"]] == pytest.approx([row["score"] for row in want["items"]],
                                                                       rel=1e-5, abs=1e-6)
    assert stats["requests"] == 30
    assert stats["generator_calls"] < 30 and max(int(size) for size in stats["batch_sizes"]) > 1
    assert max(int(size) for size in stats["batch_sizes"]) <= 16


def test_a_bad_request_in_a_burst_fails_alone(rec):
    bodies = _bodies(rec, 12, seed=1)
    bad = {
        3: ({"history": [0, "no-such-item", 1], "k": 5}, ["body", "history", 1], "unknown_item"),
        7: ({"history": [2, rec.n_items]}, ["body", "history", 1], "unknown_item"),
        9: ({"history": [0], "k": 0}, ["body", "k"], None),
    }
    for i, (body, _, _) in bad.items():
        bodies[i] = body
    app = create_app(rec, BatchingConfig(max_wait_ms=200.0))
    try:
        responses = asyncio.run(_post_all(app, bodies, concurrent_=True))
        stats = app.state.batcher.stats()
    finally:
        app.state.batcher.close()
    # only the 9 good requests reached the generator, and they shared calls with each other
    assert stats["requests"] == 9 and stats["generator_calls"] < 9
    for i, (body, response) in enumerate(zip(bodies, responses)):
        if i in bad:
            _, loc, kind = bad[i]
            assert response.status_code == 422, response.text
            (err,) = [e for e in response.json()["detail"] if e["loc"] == loc]
            assert kind is None or err["type"] == kind
        else:
            assert response.status_code == 200, response.text
            expected = rec.recommend(body["history"], body["k"], body.get("exclude_history"))
            assert [row["item"] for row in response.json()["items"]] == [row.item for row in expected]


def test_metrics_report_batch_sizes_only_when_batching(rec):
    from fastapi.testclient import TestClient

    with TestClient(create_app(rec)) as client:
        assert client.post("/recommend", json={"history": [0, 1], "k": 2}).status_code == 200
        batching = client.get("/metrics").json()["batching"]
    assert batching["requests"] == 1 and batching["batch_sizes"] == {"1": 1}
    assert batching["max_batch"] == BatchingConfig.max_batch and batching["max_wait_ms"] == BatchingConfig.max_wait_ms
    with TestClient(create_app(rec, BatchingConfig(enabled=False))) as client:
        assert client.post("/recommend", json={"history": [0, 1], "k": 2}).status_code == 200
        assert "batching" not in client.get("/metrics").json()


# --- the batcher on its own, around a stand-in recommender whose generator can be held busy --------


class _HeldRecommender:
    """Records each recommend_batch call; the first one blocks until `release` is set, so requests
    submitted meanwhile pile up in the queue exactly as they do behind a busy generator."""

    def __init__(self, fail_k: int | None = None):
        self.config = SimpleNamespace(evaluation=SimpleNamespace(mask_history=True))
        self.calls: list[tuple[list, int, bool]] = []
        self.busy, self.release = threading.Event(), threading.Event()
        self.fail_k = fail_k

    def index(self, item):
        if item == "bad":
            raise UnknownItem(item, "unknown item key 'bad'")
        return item

    def recommend_batch(self, histories, k, exclude_history):
        self.busy.set()
        self.release.wait(10)
        self.calls.append(([list(h) for h in histories], k, exclude_history))
        if k == self.fail_k:
            raise RuntimeError("generator failed")
        return [[("rows for", tuple(h), k)] for h in histories]


def test_waiting_requests_are_grouped_by_k_and_capped_at_max_batch():
    fake = _HeldRecommender()
    batcher = MicroBatcher(fake, max_batch=3, max_wait_ms=0.0)
    try:
        first = batcher.submit([0], k=2)
        assert fake.busy.wait(10)  # the worker is inside the first call; the rest queue up
        later = [batcher.submit([i], k=2) for i in range(1, 5)] + [batcher.submit([9], k=7, exclude_history=False)]
        fake.release.set()
        results = [f.result(10) for f in [first, *later]]
    finally:
        batcher.close()
    assert results == [[("rows for", (i,), 2)] for i in range(5)] + [[("rows for", (9,), 7)]]
    # [0] alone (the queue was empty); then the next 3 queued, then the last 2, split by (k, exclusion)
    assert fake.calls == [([[0]], 2, True), ([[1], [2], [3]], 2, True), ([[4]], 2, True), ([[9]], 7, False)]
    assert batcher.stats()["requests"] == 6 and batcher.stats()["batch_sizes"] == {"1": 3, "3": 1}


def test_unknown_items_raise_before_queuing_and_errors_reach_only_their_group():
    fake = _HeldRecommender(fail_k=5)
    batcher = MicroBatcher(fake, max_wait_ms=0.0)
    try:
        with pytest.raises(UnknownItem, match="'bad'"):
            batcher.submit([0, "bad"])
        first = batcher.submit([0], k=1)
        assert fake.busy.wait(10)
        failing, fine = batcher.submit([1], k=5), batcher.submit([2], k=1)
        fake.release.set()
        assert first.result(10) and fine.result(10) == [("rows for", (2,), 1)]
        with pytest.raises(RuntimeError, match="generator failed"):
            failing.result(10)
        assert batcher.submit([3], k=1).result(10)  # the worker survived the failure
    finally:
        batcher.close()
    assert all("bad" not in h for histories, _, _ in fake.calls for h in histories)


def test_a_cancelled_request_is_dropped_from_its_batch():
    fake = _HeldRecommender()
    batcher = MicroBatcher(fake, max_wait_ms=0.0)
    try:
        first = batcher.submit([0])
        assert fake.busy.wait(10)
        gone, kept = batcher.submit([1]), batcher.submit([2])
        assert gone.cancel()  # what asyncio.wrap_future does when a client hangs up
        fake.release.set()
        assert kept.result(10) and first.result(10)
        with pytest.raises(concurrent.futures.CancelledError):
            gone.result(0)
    finally:
        batcher.close()
    assert [histories for histories, _, _ in fake.calls] == [[[0]], [[2]]]


def test_close_stops_the_worker_and_a_later_submit_restarts_it():
    fake = _HeldRecommender()
    fake.release.set()
    batcher = MicroBatcher(fake, max_wait_ms=0.0)
    assert batcher.submit([0]).result(10)
    thread = batcher._thread
    batcher.close()
    assert thread is not None and not thread.is_alive()
    assert batcher.submit([1]).result(10) == [("rows for", (1,), 10)]
    batcher.close()


@pytest.mark.parametrize("max_batch, max_wait_ms", [(0, 2.0), (8, -1.0), (8, 5000.0)])
def test_bad_settings_are_refused(max_batch, max_wait_ms):
    with pytest.raises(ValueError, match="max_"):
        BatchingConfig(max_batch=max_batch, max_wait_ms=max_wait_ms)


@pytest.mark.parametrize("args, enabled, max_batch", [([], True, 64), (["--no-batching"], False, None),
                                                      (["--max-batch", "8", "--max-wait-ms", "5"], True, 8)])
def test_cemg_serve_batching_options(tiny_run, monkeypatch, args, enabled, max_batch):
    import uvicorn
    from typer.testing import CliRunner

    from cemg.cli import app

    served = []
    monkeypatch.setattr(uvicorn, "run", lambda asgi_app, **kwargs: served.append(asgi_app))
    result = CliRunner().invoke(app, ["serve", str(tiny_run), "--device", "cpu", "--quiet", *args])
    assert result.exit_code == 0, result.output
    batcher = served[0].state.batcher
    assert (batcher is not None) == enabled
    if enabled:
        assert batcher.max_batch == max_batch
    assert ("no batching" in result.output) == (not enabled)
