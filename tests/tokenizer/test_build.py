import json
import re

import numpy as np
import pytest
import torch

from cemg.artifacts import read_manifest
from cemg.collab.artifact import CollabEmbeddings
from cemg.config import TokenizerConfig
from cemg.data.dataset import InteractionDataset
from cemg.features.artifact import ItemFeatures
from cemg.tokenizer.build import (
    TokenizerArtifact,
    build_semantic_ids,
    build_tokenizer,
    level_stats,
    make_unique,
    prepare_inputs,
)
from cemg.tokenizer.semantic_ids import SemanticIds

TINY = dict(levels=2, codebook_size=8, latent_dim=4, hidden_dims=[16], epochs=3, batch_size=32)


def _data(n=60, d=6, dc=5, seed=0, image_missing=0.3):
    rng = np.random.default_rng(seed)
    image_mask = rng.random(n) > image_missing
    image = rng.normal(size=(n, d)).astype(np.float32) * image_mask[:, None]
    features = ItemFeatures(n, rng.normal(size=(n, d)).astype(np.float32), np.ones(n, bool), image, image_mask)
    collab = CollabEmbeddings(np.zeros((3, dc), np.float32), rng.normal(size=(n, dc)).astype(np.float32), {},
                              rng.integers(0, 20, size=n))
    return features, collab


def test_make_unique_adds_a_level_only_for_collisions():
    codes = np.array([[0, 1], [0, 1], [2, 3], [0, 1], [2, 0]])
    ids, stats = make_unique(codes, 4)
    assert ids.codebook_sizes == [4, 4, 3]
    assert ids.codes[:, 2].tolist() == [0, 1, 0, 2, 0]
    assert stats == {"rate_before_fix": 0.6, "colliding_items": 3, "groups": 1, "max_group_size": 3, "extra_level": True}

    ids, stats = make_unique(np.array([[0, 1], [1, 1]]), 4)
    assert ids.levels == 2 and not stats["extra_level"] and stats["rate_before_fix"] == 0.0


def test_level_stats_utilisation_and_perplexity():
    codes = np.array([[0, 0], [1, 0], [2, 0], [3, 1]])
    first, second = level_stats(codes, 8)
    assert first["utilisation"] == 0.5 and first["perplexity"] == pytest.approx(4.0)
    assert first["prefix_shared_rate"] == 0.0
    assert second["used_codes"] == 2 and second["perplexity"] == pytest.approx(np.exp(-(0.75 * np.log(0.75) + 0.25 * np.log(0.25))))


def test_identical_items_still_get_unique_ids():
    n, d = 24, 4
    features = ItemFeatures(n, np.ones((n, d), np.float32), np.ones(n, bool))
    collab = CollabEmbeddings(np.zeros((1, d), np.float32), np.ones((n, d), np.float32), {}, np.full(n, 10))
    ids, report = build_semantic_ids(features, collab, TokenizerConfig(**TINY, use_image=False), seed=0)
    assert ids.n_items == n and len({tuple(r) for r in ids.codes.tolist()}) == n
    assert report["collisions"]["rate_before_fix"] == 1.0
    assert ids.levels == 3 and ids.codebook_sizes[-1] == n


def test_report_and_determinism():
    features, collab = _data()
    cfg = TokenizerConfig(**TINY)
    ids, report = build_semantic_ids(features, collab, cfg, seed=3)
    again, _ = build_semantic_ids(features, collab, cfg, seed=3)
    assert np.array_equal(ids.codes, again.codes)
    assert [lv["level"] for lv in report["levels"]] == [1, 2]
    for lv in report["levels"]:
        assert 0 < lv["utilisation"] <= 1 and 1 <= lv["perplexity"] <= 8
    assert report["levels"][1]["latent_error"] <= report["levels"][0]["latent_error"]
    alphas = report["alphas"]
    assert alphas["items_both"] + alphas["items_text_only"] == 60
    assert alphas["mean_alpha_image"] + alphas["mean_alpha_text"] == pytest.approx(1.0)
    assert report["inputs"]["fused_dim"] == 6 + 5
    assert set(report["reconstruction"]) == {"mse", "mse_image", "mse_text", "mse_collab"}
    json.dumps(report)  # the report must be JSON-serialisable as it is


@pytest.mark.parametrize(
    "switches, fused_dim, modalities",
    [
        ({}, 11, ["image", "text", "collab"]),
        ({"use_collab": False}, 6, ["image", "text"]),
        ({"use_image": False}, 11, ["text", "collab"]),
        ({"use_text": False}, 11, ["image", "collab"]),
        ({"use_image": False, "use_text": False}, 5, ["collab"]),
        ({"recon_target": "fused"}, 11, ["image", "text", "collab"]),
    ],
)
def test_ablation_switches_change_the_fused_dimension(switches, fused_dim, modalities):
    features, collab = _data()
    cfg = TokenizerConfig(**{**TINY, "epochs": 1, **switches})
    _, report = build_semantic_ids(features, collab, cfg, seed=0)
    assert report["inputs"]["fused_dim"] == fused_dim
    assert report["inputs"]["modalities"] == modalities
    if not cfg.use_image:
        assert report["alphas"]["items_both"] == 0


def test_artifact_round_trip_and_model_reencodes_the_same_codes(tmp_path):
    features, collab = _data()
    cfg = TokenizerConfig(**TINY)
    artifact = build_tokenizer(features, collab, cfg, seed=0)
    artifact.save(tmp_path / "tok")
    loaded = TokenizerArtifact.load(tmp_path / "tok")
    assert np.array_equal(loaded.semantic_ids.codes, artifact.semantic_ids.codes)
    assert loaded.semantic_ids.codebook_sizes == artifact.semantic_ids.codebook_sizes
    assert loaded.report == json.loads(json.dumps(artifact.report))

    model = loaded.model()
    inputs = prepare_inputs(features, collab, cfg, scales=loaded.model_state["scales"])
    assert inputs.scales == artifact.model_state["scales"]
    with torch.no_grad():
        codes = model(inputs).get("codes").numpy()
    assert np.array_equal(codes, artifact.semantic_ids.codes[:, : cfg.levels])


def test_semantic_ids_round_trip(tmp_path):
    ids = SemanticIds(np.array([[0, 1, 0], [0, 1, 1], [3, 2, 0]], dtype=np.int64), [4, 4, 2])
    ids.save(tmp_path)
    back = SemanticIds.load(tmp_path)
    assert np.array_equal(back.codes, ids.codes) and back.codebook_sizes == ids.codebook_sizes


def test_bad_inputs_are_named():
    features, collab = _data()
    with pytest.raises(ValueError, match="use_collab"):
        build_semantic_ids(features, None, TokenizerConfig(**TINY), seed=0)
    short = CollabEmbeddings(collab.users, collab.items[:10], {}, collab.item_counts[:10])
    with pytest.raises(ValueError, match="cover 10 items"):
        build_semantic_ids(features, short, TokenizerConfig(**TINY), seed=0)
    odd = ItemFeatures(60, features.text, features.text_mask, features.image[:, :3], features.image_mask)
    with pytest.raises(ValueError, match="share one dimension"):
        build_semantic_ids(odd, collab, TokenizerConfig(**TINY), seed=0)


def test_cli_tokenize_writes_the_artifact_and_reuses_it(tmp_path):
    from typer.testing import CliRunner

    from cemg.cli import app

    # The command runs the upstream stages it needs (tiny synthetic data, encoders, LightGCN).
    overrides = [
        f"run_dir={tmp_path / 'run'}", f"cache_dir={tmp_path / 'cache'}",
        "data.synthetic_items=40", "data.synthetic_users=60", "features.dim=8",
        "collab.dim=8", "collab.epochs=2", *(f"tokenizer.{k}={v}" for k, v in TINY.items()),
    ]
    args = ["tokenize", "-q", *sum((["--set", o] for o in overrides), [])]
    runner = CliRunner()
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "collisions before the fix" in first.output
    assert read_manifest(tmp_path / "run" / "tokenizer")["stage"] == "tokenizer"
    ids = TokenizerArtifact.load(tmp_path / "run" / "tokenizer").semantic_ids
    assert ids.n_items == InteractionDataset.load(tmp_path / "run" / "data").n_items > 30
    second = runner.invoke(app, args)
    assert second.exit_code == 0
    assert re.search(r"tokenizer [\d.]+s \(reused\)", second.output), second.output


def _popularity_graph(n=200, d=8, seed=0):
    """Collab vectors whose norm grows with the item's training count (LightGCN's shape), and a
    collab direction that is a linear function of the text vector plus noise."""
    rng = np.random.default_rng(seed)
    text = rng.normal(size=(n, d)).astype(np.float32)
    counts = rng.integers(0, 40, size=n)
    direction = text @ rng.normal(size=(d, d)) + 0.1 * rng.normal(size=(n, d))
    items = (direction / np.linalg.norm(direction, axis=1, keepdims=True) * (1 + counts[:, None] / 10))
    features = ItemFeatures(n, text, np.ones(n, bool))
    return features, CollabEmbeddings(np.zeros((1, d), np.float32), items.astype(np.float32), {}, counts), direction


def test_collab_calibration_removes_popularity_and_fills_cold_items_from_content():
    from cemg.tokenizer.build import calibrate_collab

    features, collab, direction = _popularity_graph()
    raw = calibrate_collab(features, collab, TokenizerConfig(use_image=False, collab_calibration="none"))
    assert raw is collab.items
    rms = lambda x: np.sqrt((x.astype(np.float64) ** 2).mean(1))  # noqa: E731
    unit = calibrate_collab(features, collab, TokenizerConfig(use_image=False, collab_calibration="unit"))
    np.testing.assert_allclose(rms(unit), 1.0, rtol=1e-5)  # popularity (the norm) is gone
    cfg = TokenizerConfig(use_image=False, collab_calibration="content", collab_prior_weight=5.0)
    content = calibrate_collab(features, collab, cfg)
    np.testing.assert_allclose(rms(content), 1.0, rtol=1e-5)
    cos = lambda a, b: (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)  # noqa: E731
    never_seen = collab.item_counts == 0
    popular = collab.item_counts >= 30
    # an unseen item's vector is the content prediction, which recovers the true direction here
    assert cos(content[never_seen], direction[never_seen]).min() > 0.9
    # a well-known item keeps mostly its own vector
    assert cos(content[popular], unit[popular]).min() > 0.8
    # deterministic (a closed-form ridge)
    assert np.array_equal(content, calibrate_collab(features, collab, cfg))


def test_collab_calibration_refuses_an_artifact_without_counts():
    from cemg.tokenizer.build import calibrate_collab

    features, collab = _data()
    collab = CollabEmbeddings(collab.users, collab.items)
    with pytest.raises(ValueError, match="item_counts"):
        calibrate_collab(features, collab, TokenizerConfig(collab_calibration="unit"))


def test_extend_unique_fills_free_codes_then_the_nearest_group_with_room():
    from cemg.tokenizer.build import CodeSpaceFull, extend_unique

    base, _ = make_unique(np.array([[0, 1], [0, 1], [2, 3]]), 4)  # disambiguation level of 2 codes
    out = extend_unique(base, np.array([[2, 3], [1, 1]]))
    assert out.codes[3:].tolist() == [[2, 3, 1], [1, 1, 0]] and out.codebook_sizes == base.codebook_sizes
    # (0, 1) is full: the next code of the last level in the given order with room is taken
    moved = extend_unique(base, np.array([[0, 1]]), last_level_order=np.array([[1, 3, 2, 0]]))
    assert moved.codes[3:].tolist() == [[0, 3, 0]]
    with pytest.raises(CodeSpaceFull, match=r"\(0, 1\) are already taken"):
        extend_unique(base, np.array([[0, 1]]))


@pytest.mark.parametrize("kind", ["concat", "content_attention", "mean"])
@pytest.mark.parametrize("switches", [{}, {"use_collab": False}, {"use_image": False},
                                      {"use_image": False, "use_text": False}])
def test_fusion_variants_train_save_and_reencode_their_codes(kind, switches, tmp_path):
    features, collab = _data()  # d = 6, d_c = 5; 30% of the items lack an image
    cfg = TokenizerConfig(**{**TINY, "epochs": 1, "fusion": kind, **switches})
    artifact = build_tokenizer(features, collab, cfg, seed=0)
    used = [cfg.use_image, cfg.use_text].count(True)
    content = (6 * used if kind == "concat" else 6) if used else 0
    assert artifact.report["inputs"]["fusion"] == kind
    assert artifact.report["inputs"]["fused_dim"] == content + (5 if cfg.use_collab else 0)
    alphas = artifact.report["alphas"]
    if used == 2 and kind != "content_attention":
        assert alphas["both_mean_alpha_text"] == 0.5 and alphas["both_std_alpha_text"] == 0.0

    artifact.save(tmp_path / "tok")
    model = TokenizerArtifact.load(tmp_path / "tok").model()  # the variant comes back from the saved state
    assert model.fusion.out_dim == artifact.report["inputs"]["fused_dim"]
    inputs = prepare_inputs(features, collab if cfg.use_collab else None, cfg, scales=artifact.model_state["scales"])
    with torch.no_grad():
        codes = model(inputs)["codes"].numpy()
    assert np.array_equal(codes, artifact.semantic_ids.codes[:, : cfg.levels])


def test_a_model_saved_before_the_fusion_option_loads_as_attention(tmp_path):
    features, collab = _data()
    artifact = build_tokenizer(features, collab, TokenizerConfig(**{**TINY, "epochs": 1}), seed=0)
    state = dict(artifact.model_state)
    state["init_args"] = {**state["init_args"], "cfg": {k: v for k, v in state["init_args"]["cfg"].items()
                                                       if k != "fusion"}}
    old = TokenizerArtifact(artifact.semantic_ids, artifact.report, state)
    assert type(old.model().fusion).__name__ == "CollaborativeGuidedFusion"
