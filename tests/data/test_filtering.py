"""k-core filtering and dataset building on hand-made interactions."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from cemg.data.filtering import build_dataset, k_core


def frame(pairs: list[tuple[str, str]], times: list[float] | None = None) -> pd.DataFrame:
    n = len(pairs)
    return pd.DataFrame(
        {
            "user": [u for u, _ in pairs],
            "item": [i for _, i in pairs],
            "timestamp": np.full(n, np.nan) if times is None else np.asarray(times, float),
            "order": np.arange(n),
        }
    )


def test_k_core_needs_a_second_round(caplog):
    # k = 2. Round 1 drops item c (1 interaction); that leaves user C with only b, so round 2 drops
    # C, and with it b's third interaction (b still has 2 and stays). A single pass would keep C.
    pairs = [("A", "a"), ("A", "b"), ("B", "a"), ("B", "b"), ("C", "b"), ("C", "c")]
    with caplog.at_level(logging.INFO):
        kept = k_core(frame(pairs), 2)
    assert list(zip(kept["user"], kept["item"])) == pairs[:4]
    assert "2 round(s)" in caplog.text


def test_k_core_cascade_removes_an_item_in_the_second_round():
    # k = 2: round 1 drops user D (one interaction); item e then has one interaction left and goes
    # in round 2, which in turn takes user E down to one -> round 3.
    pairs = [("A", "a"), ("A", "b"), ("B", "a"), ("B", "b"), ("D", "e"), ("E", "e"), ("E", "a")]
    kept = k_core(frame(pairs), 2)
    assert set(kept["user"]) == {"A", "B"} and set(kept["item"]) == {"a", "b"}


def test_k_core_disabled_for_zero_and_one():
    data = frame([("A", "a"), ("B", "b")])
    assert k_core(data, 0) is data and k_core(data, 1) is data


def _one_at_a_time(pairs: list[tuple[str, str]], k: int) -> set[int]:
    """Reference: remove one under-k user or item per step. The k-core is unique, so this different
    removal order must end in the same set as k_core's simultaneous rounds."""
    alive = set(range(len(pairs)))
    while True:
        users = pd.Series([pairs[r][0] for r in alive], dtype=object).value_counts()
        items = pd.Series([pairs[r][1] for r in alive], dtype=object).value_counts()
        weak = [("u", u) for u, c in users.items() if c < k] + [("i", i) for i, c in items.items() if c < k]
        if not weak:
            return alive
        side, key = weak[0]
        alive = {r for r in alive if pairs[r][0 if side == "u" else 1] != key}


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), min_size=1, max_size=60), st.integers(2, 4))
def test_k_core_matches_one_at_a_time_removal(pairs, k):
    pairs = [(str(u), str(i)) for u, i in pairs]
    kept = k_core(frame(pairs), k)
    assert set(kept["order"]) == _one_at_a_time(pairs, k)
    if len(kept):
        assert kept["user"].value_counts().min() >= k and kept["item"].value_counts().min() >= k
    assert kept["order"].is_monotonic_increasing


def test_build_orders_users_items_and_time():
    # u2 appears first in the file; u1's items out of time order with a tie (t=5) and a NaN.
    data = frame(
        [("u2", "x"), ("u1", "y"), ("u1", "z"), ("u1", "x"), ("u1", "w"), ("u2", "y")],
        [1.0, 9.0, 5.0, 5.0, np.nan, 2.0],
    )
    ds = build_dataset("toy", data)
    assert ds.user_keys == ["u2", "u1"]
    # u2: x(1), y(2); u1: z(5, file order 2), x(5, order 3), y(9), w(NaN last)
    assert ds.items.keys == ["x", "y", "z", "w"]
    assert [s.tolist() for s in ds.sequences] == [[0, 1], [2, 0, 1, 3]]
    assert all(s.dtype == np.int64 for s in ds.sequences)
    assert ds.items.fields == {} and ds.items.image_refs is None


def test_build_aligns_item_table_and_keeps_items_without_metadata(caplog):
    data = frame([("u", "b"), ("u", "a"), ("v", "c")])
    items = pd.DataFrame(
        {"item": ["a", "b", "zzz"], "title": ["A", None, "unused"], "image": ["a.jpg", "b.jpg", "z.jpg"]}
    )
    with caplog.at_level(logging.INFO):
        ds = build_dataset("toy", data, items, ["title"])
    assert ds.items.keys == ["b", "a", "c"]
    assert ds.items.fields == {"title": [None, "A", None]}
    assert ds.items.image_refs == ["b.jpg", "a.jpg", None]
    assert "1 of 3 items (1 interactions) have no metadata" in caplog.text
    assert "1 metadata rows describe items with no kept interactions" in caplog.text
    overridden = build_dataset("toy", data, items, ["title"], image_refs={"c": "posters/c.jpg"})
    assert overridden.items.image_refs == [None, None, "posters/c.jpg"]


def test_built_dataset_round_trips_through_save(tmp_path):
    data = frame([("u", "b"), ("u", "a"), ("v", "b")], [2.0, 1.0, 0.0])
    items = pd.DataFrame({"item": ["a", "b"], "title": ["A", "B"]})
    ds = build_dataset("toy", data, items, ["title"], image_root=tmp_path)
    ds.save(tmp_path / "ds")
    back = type(ds).load(tmp_path / "ds")
    assert back.user_keys == ds.user_keys and back.items.fields == ds.items.fields
    assert [s.tolist() for s in back.sequences] == [[0, 1], [1]]
