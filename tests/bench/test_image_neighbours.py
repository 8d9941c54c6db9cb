"""bench/image_neighbours.py: content-neighbour HR/NDCG of each modality on a run folder."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from cemg.config import CEMGConfig
from cemg.data.dataset import InteractionDataset, ItemTable
from cemg.features.artifact import ItemFeatures

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "image_neighbours.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("image_neighbours", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def ring_run(tmp_path):
    """12 items on a circle; every user walks it one step at a time, so the next item is always the
    unseen one of the last item's two nearest image neighbours. Text vectors say nothing of it, and
    item 3 has no text."""
    n = 12
    run = tmp_path / "ring"
    cfg = CEMGConfig(run_dir=run)
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    sequences = [np.array([(u + s) % n for s in range(5)]) for u in range(2 * n)]
    items = ItemTable(keys=[f"i{i}" for i in range(n)], fields={"title": [f"t{i}" for i in range(n)]})
    InteractionDataset("ring", [f"u{u}" for u in range(2 * n)], sequences, items).save(run / "data")
    angle = 2 * np.pi * np.arange(n) / n
    image = np.stack([np.cos(angle), np.sin(angle)], 1).astype(np.float32)
    text = np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32)
    text_mask = np.ones(n, bool)
    text_mask[3] = False
    text[3] = 0
    ItemFeatures(n, text, text_mask, image, np.ones(n, bool), {"image": {"model": "ring"}}).save(run / "features")
    return run


def test_the_next_item_is_the_nearest_unseen_image_neighbour(bench, ring_run, tmp_path):
    out = bench.main([str(ring_run), "--out", str(tmp_path / "out.json")])
    record = json.loads(out.read_text())
    assert record["command"] == f"python bench/image_neighbours.py {ring_run}"
    assert record["users"] == 24 and record["items"] == 12 and record["chance"]["HR@10"] == round(10 / 12, 5)
    image = record["modalities"]["image"]
    assert image["encoder"] == "ring" and image["dim"] == 2
    assert image["metrics"] == {"HR@5": 1.0, "NDCG@5": 1.0, "HR@10": 1.0, "NDCG@10": 1.0}
    text = record["modalities"]["text"]
    assert text["items_with_vector"] == 11
    # Test targets are items u+4; the last history item is u+3, which is item 3 for two users.
    assert text["users_whose_last_item_lacks_it"] == 2 and text["targets_lacking_it"] == 2
    assert text["metrics"]["NDCG@10"] < 1.0
    content = record["modalities"]["content"]  # the image half still finds the ring's neighbours
    assert content["items_with_vector"] == 12 and content["dim"] == 6
    assert content["metrics"]["HR@10"] >= text["metrics"]["HR@10"]
    overlap = record["overlap"]["@10"]  # every user is an image hit; the union is all of them
    assert overlap["image_hits"] == 24 and overlap["either_HR"] == 1.0
    assert overlap["both"] == overlap["text_hits"] and overlap["image_only"] == 24 - overlap["text_hits"]


def test_only_the_chosen_modalities_are_scored(bench, ring_run, tmp_path):
    out = bench.main([str(ring_run), "--modalities", "image", "content", "--out", str(tmp_path / "o.json")])
    record = json.loads(out.read_text())
    assert record["command"] == f"python bench/image_neighbours.py {ring_run} --modalities image content"
    assert set(record["modalities"]) == {"image", "content"} and "overlap" not in record
    assert record["modalities"]["image"]["metrics"]["HR@10"] == 1.0


def test_no_list_without_a_vector_and_nothing_seen_is_recommended(bench):
    unit = np.eye(4, dtype=np.float32)[[0, 0, 1, 2, 3]] + 0.1  # items 0 and 1 identical
    mask = np.array([True, True, True, True, False])
    model = bench.ContentNeighbours(unit, mask)
    top = model.recommend([np.array([2, 0]), np.array([4])], 5, [np.array([2])])
    assert top[0, 0] == 1 and 0 not in top[0] and 2 not in top[0] and 4 not in top[0]
    assert (top[0, 3:] == -1).all() and (top[1] == -1).all()  # item 4 has no image: no neighbours


def test_on_a_pipeline_run(bench, tiny_run, tmp_path):
    # The session's tiny demo run (shared with the API, service and report tests).
    record = json.loads(bench.main([str(tiny_run), "--out", str(tmp_path / "tiny.json")]).read_text())
    for name in ("image", "text", "content"):
        row = record["modalities"][name]
        assert set(row["metrics"]) == {"HR@5", "NDCG@5", "HR@10", "NDCG@10"}
        assert all(0.0 <= v <= 1.0 for v in row["metrics"].values())
    assert record["modalities"]["image"]["encoder"] == "efficientnet-lite0"
