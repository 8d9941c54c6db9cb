"""bench/new_items.py: the new items leave every training input, come back through `cemg items add`,
and every row is scored by searching its own top-k lists for the target."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def load_bench(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # the script imports its neighbours baselines_beauty, dataset_tables
    return load_bench("new_items")


def test_scores_search_each_list_for_its_target(bench):
    scores = bench.scores_of([["a", "b"], ["c"], []], ["b", "x", "y"])
    assert scores["HR@5"] == pytest.approx(1 / 3)
    assert scores["NDCG@5"] == pytest.approx((1 / math.log2(3)) / 3)


def test_new_items_leave_training_and_come_back_by_items_add(bench, tiny_run, tmp_path):
    from cemg.api import add_items
    from cemg.config import load_config

    work = tmp_path / "work"
    config = Path(tiny_run) / "config.yaml"
    split = bench.derive_data(config, work, fraction=0.1, split_seed=0)
    new_keys = set(split["new_keys"])
    assert split["new_items"] == len(new_keys) == 4  # 10% of the 40 tiny items
    rows = [line.split(",") for line in (work / "interactions.csv").read_text().splitlines()[1:]]
    assert rows and not {item for _, item, _ in rows} & new_keys
    trained_table = [json.loads(line)["item_id"] for line in (work / "items.jsonl").read_text().splitlines()]
    added_table = [json.loads(line)["item_id"] for line in (work / "new_items.jsonl").read_text().splitlines()]
    assert set(added_table) == new_keys and not set(trained_table) & new_keys
    users = json.loads((work / "evaluated_users.json").read_text())
    assert users and all(u["target"] in new_keys for u in users)

    seed = load_config(config).seed
    # with a content prior, so that the new-item mixture (bench/new_item_share.py) can be checked below
    run = bench.train(work, "semantic", [seed], threads=1, overrides=["generator.content_prior.weight=1"])
    leak = bench.check_no_leak(run, new_keys, [seed], work / "interactions.csv")
    assert leak["interactions_with_new_items"] == 0
    assert set(leak["artifact_item_counts"].values()) == {leak["trained_catalogue_items"]}

    trained_keys = json.loads((run / "data" / "meta.json").read_text())["item_keys"]
    # a model whose catalogue is the trained items cannot rank a new target: measured as 0
    zero = bench.evaluate_id_model(trained_keys, lambda h, k, ex: np.tile(np.arange(k), (len(h), 1)), users)
    assert zero["targets_in_catalogue"] == 0 and set(zero["metrics"].values()) == {0.0}

    add_items(run, work / "new_items.jsonl", seed=seed)
    semantic = bench.evaluate_semantic(run, seed, users)
    assert semantic["targets_in_catalogue"] == len(users)
    assert semantic["catalogue_items"] == len(trained_keys) + len(new_keys)
    assert all(0.0 <= v <= 1.0 for v in semantic["metrics"].values())
    content = bench.evaluate_content(run, seed, users, work / "new_items.jsonl")
    assert content["catalogue_items"] == len(trained_keys) + len(new_keys)

    # bench/new_item_share.py: every grid point's lists are the recommender's own under that setting
    share_bench = load_bench("new_item_share")
    from cemg.api import Recommender

    recommender = Recommender.load(run, device="cpu", seed=seed)
    prior = recommender.generator
    assert prior.n_trained == len(trained_keys) and prior.n_items == len(trained_keys) + len(new_keys)
    index = {key: i for i, key in enumerate(recommender.catalogue.dataset.items.keys)}
    valid = json.loads((work / "valid_users.json").read_text())
    assert len(valid) == split["valid_users"] and any(u["target"] in new_keys for u in valid)
    histories, targets = share_bench.indexed(valid, index)
    assert len(targets) and (targets >= prior.n_trained).any()
    grid = [(0.0, 20.0, 0), (0.3, 5.0, 0), (0.3, 5.0, 1), (0.3, 5.0, 1, 2.0, 10.0)]
    lists = share_bench.grid_lists(prior, histories, grid, 10)
    np.testing.assert_array_equal(lists[(0.0, 20.0, 0)], prior.recommend(histories, 10, histories))
    mixed = prior.replace(new_item_share=0.3, new_item_sharpness=5.0).recommend(histories, 10, histories)
    np.testing.assert_array_equal(lists[(0.3, 5.0, 0)], mixed)
    assert (mixed >= prior.n_trained).any()  # a share of 0.3 puts added items in the lists
    weighed = prior.replace(new_item_share=0.3, new_item_sharpness=5.0, new_item_prefix_levels=1)
    np.testing.assert_array_equal(lists[(0.3, 5.0, 1)], weighed.recommend(histories, 10, histories))
    gated = weighed.replace(new_item_gate=2.0, new_item_gate_sharpness=10.0)
    np.testing.assert_array_equal(lists[(0.3, 5.0, 1, 2.0, 10.0)], gated.recommend(histories, 10, histories))
    assert not np.array_equal(lists[(0.3, 5.0, 1, 2.0, 10.0)], lists[(0.3, 5.0, 1)])  # the gate moves lists
    # the rule: the best valid NDCG@10 among settings above the reference's new-target HR@10
    mean = {"a": {"valid": {"NDCG@10": 0.07}, "valid_new_targets": {"HR@10": 0.04}},
            "b": {"valid": {"NDCG@10": 0.06}, "valid_new_targets": {"HR@10": 0.09}},
            "c": {"valid": {"NDCG@10": 0.05}, "valid_new_targets": {"HR@10": 0.10}}}
    assert share_bench.choose(mean, 0.05) == "b"
    assert share_bench.choose(mean, 0.2) == share_bench.choose(mean, None) == "a"  # none above it: overall
    # on every seed: b's mean is above the bar but one seed is below it
    mean["b"]["valid_new_targets"]["HR@10 lowest seed"] = 0.04
    mean["c"]["valid_new_targets"]["HR@10 lowest seed"] = 0.08
    mean["a"]["valid_new_targets"]["HR@10 lowest seed"] = 0.03
    assert share_bench.choose(mean, 0.05, "every-seed") == "c"
    # paired: the lower bound of each user's hit minus the reference's on the same user
    for key, bound in (("a", 0.01), ("b", 0.002), ("c", -0.001)):
        mean[key]["valid_new_targets"]["HR@10 paired lower bound, lowest seed"] = bound
    assert share_bench.choose(mean, 0.05, "paired") == "a"
    hits, reference_hits = np.array([1, 1, 0, 1, 0, 0, 1, 0]), np.array([0, 1, 0, 0, 0, 0, 1, 0])
    difference = hits - reference_hits
    assert share_bench.paired_lower_bound(hits, reference_hits) == pytest.approx(
        difference.mean() - 1.645 * difference.std(ddof=1) / np.sqrt(8))
    assert share_bench.paired_lower_bound(np.ones(40), np.zeros(40)) == 1.0  # every user gained: no spread
    kept = share_bench.ranked_users(valid, index)
    assert kept.sum() == len(targets) and share_bench.indexed([u for u, k in zip(valid, kept) if k], index)[1].tolist() == targets.tolist()
    shared = bench.evaluate_semantic(run, seed, users, {"new_item_share": 0.3, "new_item_sharpness": 5.0})
    assert shared["metrics"]["HR@10"] >= semantic["metrics"]["HR@10"]  # the new targets gain from it


def test_known_prefix_shares_count_the_added_items_whose_prefix_a_trained_item_has(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # it imports its neighbour new_item_share
    prefixes = load_bench("new_item_prefixes")
    codes = np.array([[0, 0, 1], [0, 1, 0], [1, 2, 2],   # trained
                      [0, 1, 3], [2, 0, 0], [1, 2, 0], [0, 0, 1]])  # added (the last shares all three codes)
    assert prefixes.known_prefix_shares(codes, 3) == [0.75, 0.75, 0.25]
