"""bench/content_prior.py: the content-prior weight sweep on validation, on the tiny run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "content_prior.py"


def test_sweep_scores_every_weight_on_validation_and_picks_the_best_mean(tiny_run, tmp_path):
    from cemg.api import load_generator
    from cemg.data.dataset import InteractionDataset
    from cemg.data.split import leave_one_out
    from cemg.evaluation.protocol import evaluate
    from cemg.features.artifact import ItemFeatures
    from cemg.generator.content_prior import ContentPriorRecommender
    from cemg.run_folder import RunFolder, load_run_config

    out = tmp_path / "sweep.json"
    subprocess.run([sys.executable, str(SCRIPT), str(tiny_run), "--seeds", "42", "--weights", "0,4",
                    "--candidates", "6", "--out", str(out)], check=True, capture_output=True, text=True)
    result = json.loads(out.read_text())
    rows = result["per_seed"]["42"]["weights"]
    assert set(rows) == {"0.0", "4.0"}
    assert result["chosen_weight"] == max((0.0, 4.0), key=lambda w: rows[str(w)]["valid"]["NDCG@10"])
    # the sweep's shared candidates give what evaluating the prior directly gives
    cfg = load_run_config(tiny_run)
    folder = RunFolder.open(tiny_run, 42)
    split = leave_one_out(InteractionDataset.load(folder.stage("data")), cfg.data.max_history)
    content = ItemFeatures.load(folder.stage("features")).content_matrix(cfg.tokenizer.content_modalities)
    direct = evaluate(ContentPriorRecommender(load_generator(folder, cfg, "cpu"), content, 4.0, 6), split, "valid",
                      cfg.evaluation)
    assert rows["4.0"]["valid"] == direct.metrics


def test_an_image_weight_sweep_matches_the_configured_prior(tiny_run, tmp_path):
    from cemg.api import load_generator
    from cemg.data.dataset import InteractionDataset
    from cemg.data.split import leave_one_out
    from cemg.evaluation.protocol import evaluate
    from cemg.run_folder import RunFolder, load_run_config

    cfg = load_run_config(tiny_run)
    assert "image" in cfg.tokenizer.content_modalities  # the demo has images: the weight acts
    out = tmp_path / "sweep.json"
    subprocess.run([sys.executable, str(SCRIPT), str(tiny_run), "--seeds", "42", "--weights", "4",
                    "--candidates", "6", "--image-weight", "0.5", "--out", str(out)], check=True,
                   capture_output=True, text=True)
    result = json.loads(out.read_text())
    assert result["image_weight"] == 0.5
    prior = cfg.generator.content_prior.model_copy(update={"weight": 4.0, "candidates": 6, "image_weight": 0.5})
    cfg = cfg.model_copy(update={"generator": cfg.generator.model_copy(update={"content_prior": prior})})
    folder = RunFolder.open(tiny_run, 42)
    split = leave_one_out(InteractionDataset.load(folder.stage("data")), cfg.data.max_history)
    ranker = load_generator(folder, cfg, "cpu")  # under the configured prior, as `cemg run` ranks
    assert ranker.info["content_prior"]["image_weight"] == 0.5
    assert result["per_seed"]["42"]["weights"]["4.0"]["valid"] == evaluate(ranker, split, "valid", cfg.evaluation).metrics


@pytest.mark.parametrize("field, flag", [("popularity_adjustment", "--adjustments"), ("cold_weight", "--cold-weights"),
                                         ("mixture", "--mixtures")])
def test_an_adjustment_grid_writes_one_file_each_and_matches_the_configured_prior(tiny_run, tmp_path, field, flag):
    from cemg.api import load_generator
    from cemg.data.dataset import InteractionDataset
    from cemg.data.split import leave_one_out
    from cemg.evaluation.protocol import evaluate
    from cemg.run_folder import RunFolder, load_run_config

    out = tmp_path / "sweep.json"
    done = subprocess.run([sys.executable, str(SCRIPT), str(tiny_run), "--seeds", "42", "--weights", "4",
                           "--candidates", "6", flag, "0.5", "--out", str(out)], check=True,
                          capture_output=True, text=True)
    assert {"popularity_adjustment": "adjustment 0.5", "cold_weight": "cold weight 0.5",
            "mixture": "mixture 0.5/10"}[field] in done.stdout
    result = json.loads(out.read_text())
    assert result[field] == 0.5
    cfg = load_run_config(tiny_run)
    prior = cfg.generator.content_prior.model_copy(update={"weight": 4.0, "candidates": 6, field: 0.5})
    cfg = cfg.model_copy(update={"generator": cfg.generator.model_copy(update={"content_prior": prior})})
    folder = RunFolder.open(tiny_run, 42)
    split = leave_one_out(InteractionDataset.load(folder.stage("data")), cfg.data.max_history)
    ranker = load_generator(folder, cfg, "cpu")  # counts read from the run's data stage
    assert ranker.info["content_prior"][field] == 0.5
    assert result["per_seed"]["42"]["weights"]["4.0"]["valid"] == evaluate(ranker, split, "valid", cfg.evaluation).metrics
    two = subprocess.run([sys.executable, str(SCRIPT), str(tiny_run), flag, "0,1", "--out", str(out)],
                         capture_output=True, text=True)
    assert two.returncode != 0 and "one --adjustments, --cold-weights and --mixtures value" in two.stderr
