"""Hostile requests to the HTTP service (issue #8): random JSON, wrong types, negative and huge ids,
NaN/Infinity, lone surrogates, Unicode keys, oversized histories, raw bytes, odd paths. Every one
gets a 4xx with a JSON message or a well-formed 200, never a 5xx. In-process through FastAPI's
TestClient (the real-socket tests are in test_app.py)."""

from __future__ import annotations

import json
import math
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cemg.api import Recommender
from cemg.serve.app import MAX_HISTORY, MAX_K, create_app

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def client(tiny_run):
    rec = Recommender.load(tiny_run, device="cpu")
    with TestClient(create_app(rec), raise_server_exceptions=False) as c:
        c.rec = rec
        yield c


def _check(response, k: int | None = None) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:300])
    body = response.json()  # every answer, error or not, is JSON
    if response.status_code >= 400:
        assert body["detail"], body
        if isinstance(body["detail"], list):
            assert all(err["msg"] for err in body["detail"])
        return
    if "items" in body and k is not None:
        assert len(body["items"]) <= k
        assert [r["rank"] for r in body["items"]] == list(range(1, len(body["items"]) + 1))
        assert all(math.isfinite(r["score"]) for r in body["items"])


nasty = st.text(st.one_of(st.characters(), st.sampled_from(["\x00", "\ufeff", "\u202e", "\u2028", "\ud800", "\udfff"])),
                max_size=12)
numbers = st.one_of(st.integers(-(10**30), 10**30), st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([-1, 0, 1, 2**31, 2**63, -(2**63) - 1, 10**300]))
scalars = st.one_of(st.none(), st.booleans(), numbers, nasty)
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                             st.dictionaries(nasty, inner, max_size=4)), max_leaves=15)
history_item = st.one_of(st.integers(-5, 60), numbers, nasty, st.sampled_from(["i0001", "i0002", "i0003"]), json_values)
bodies = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"history": st.one_of(st.lists(history_item, max_size=8), json_values)},
        optional={"k": st.one_of(st.integers(-3, MAX_K + 3), json_values), "exclude_history": json_values,
                  "extra \ud800 \u202e key": json_values},
    ),
    st.builds(lambda h, extra: {"history": h, **extra}, st.lists(st.integers(0, 39), min_size=1, max_size=5),
              st.dictionaries(nasty, scalars, max_size=2)),
)


def _encode(body) -> bytes:
    # Python's json writes NaN/Infinity tokens and \\ud800 escapes, both of which its parser reads back.
    return json.dumps(body, allow_nan=True).encode()


@SETTINGS
@given(body=bodies)
def test_recommend_never_5xx(client, body):
    response = client.post("/recommend", content=_encode(body), headers={"content-type": "application/json"})
    _check(response, k=body.get("k", 10) if isinstance(body, dict) and isinstance(body.get("k", 10), int) else None)


@SETTINGS
@given(raw=st.one_of(st.binary(max_size=300), st.sampled_from([b"[" * 100_000, b'{"history": [' + b"9" * 5000 + b"]}",
                                                              b'{"history": [1e999]}', b'{"history": [0], "k": NaN}',
                                                              b"\xef\xbb\xbf{\"history\": [0]}", b"null", b""])),
       content_type=st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded", ""]))
def test_recommend_with_raw_bytes(client, raw, content_type):
    headers = {"content-type": content_type} if content_type else {}
    _check(client.post("/recommend", content=raw, headers=headers))


@SETTINGS
@given(length=st.integers(MAX_HISTORY + 1, 20_000), item=st.sampled_from([0, "i0001", "x" * 300]))
def test_oversized_history_is_422(client, length, item):
    response = client.post("/recommend", json={"history": [item] * length})
    assert response.status_code == 422
    assert any(err["loc"][:2] == ["body", "history"] for err in response.json()["detail"])


@SETTINGS
@given(history=st.lists(st.integers(-(10**20), 10**20), min_size=1, max_size=5))
def test_out_of_range_indices_are_named(client, history):
    response = client.post("/recommend", json={"history": history})
    _check(response)
    n = client.rec.n_items
    negative = [i for i, item in enumerate(history) if item < 0]  # refused by the request model
    too_big = [i for i, item in enumerate(history) if item >= n]  # refused by the catalogue, after it
    assert (response.status_code == 200) == (not negative and not too_big)
    if negative or too_big:
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"][:3] == ["body", "history", (negative or too_big)[0]]


@SETTINGS
@given(item_id=st.one_of(nasty, st.text("0123456789", min_size=1, max_size=6000),
                         st.sampled_from(["..", "%2e", "i0001"])),
       by=st.one_of(st.sampled_from(["key", "index"]), nasty), neighbours=st.one_of(st.integers(-5, 60), nasty))
def test_items_endpoint_never_5xx(client, item_id, by, neighbours):
    path = "/items/" + quote(item_id.encode("utf-8", "surrogatepass"), safe="")
    query = "by=" + quote(by.encode("utf-8", "surrogatepass"), safe="") + "&neighbours=" + quote(
        str(neighbours).encode("utf-8", "surrogatepass"), safe="")
    _check(client.get(f"{path}?{query}"))


@pytest.mark.parametrize("body", [
    '{"history": ["\\ud800"]}',  # a lone surrogate: echoing it back must not break the JSON encoder
    '{"history": [0], "\\udfff": 1}',
    '{"history": [0], "k": NaN}',  # NaN/Infinity in the error's echoed input
    '{"history": [Infinity]}',
    '{"history": [0], "k": -Infinity}',
])
def test_error_answers_stay_valid_json(client, body):
    response = client.post("/recommend", content=body.encode(), headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    json.loads(response.text, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))


def test_index_of_thousands_of_digits_is_404(client):
    response = client.get("/items/" + "9" * 5000, params={"by": "index"})  # int() refuses > 4300 digits
    assert response.status_code == 404 and "out of range" in response.json()["detail"][0]["msg"]
