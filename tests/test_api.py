"""cemg.api on a tiny finished run (the session's `tiny_run`)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from cemg.api import ItemCatalogue, Recommender, UnknownItem, load_run_config
from cemg.data.dataset import InteractionDataset
from cemg.data.split import leave_one_out

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.fixture(scope="module")
def rec(tiny_run) -> Recommender:
    return Recommender.load(tiny_run, device="cpu")


def test_load_reads_the_config_the_run_was_built_with(tiny_run, rec):
    assert (tiny_run / "config.yaml").is_file()
    assert rec.config.tokenizer.levels == 2 and rec.config.generator.causal.hidden == 16
    assert rec.backbone == "causal"
    assert rec.n_items == InteractionDataset.load(tiny_run / "data").n_items
    assert set(rec.evaluation) == {"valid", "test"}


def test_recommend_keys_and_indices_give_the_same_ranking(rec):
    keys = [rec.catalogue.key(i) for i in (0, 3, 5)]
    by_key = rec.recommend(keys, k=5)
    by_index = rec.recommend([0, 3, 5], k=5)
    mixed = rec.recommend([keys[0], np.int64(3), keys[2]], k=5)
    assert [r.item for r in by_key] == [r.item for r in by_index] == [r.item for r in mixed]
    assert [r.rank for r in by_key] == [1, 2, 3, 4, 5]
    scores = [r.score for r in by_key]
    assert scores == sorted(scores, reverse=True)
    for row in by_key:
        assert row.key == rec.catalogue.key(row.item) and row.title == rec.catalogue.title(row.item)
        assert row.source == "generator"
    # the history is masked by default (evaluation.mask_history)
    assert not {0, 3, 5} & {r.item for r in by_key}


def test_recommend_matches_the_generator_and_batch_matches_single(rec):
    history = np.array([1, 2, 4])
    items, _ = rec.generator.recommend_with_scores([history], 4, [history])
    assert [r.item for r in rec.recommend(history.tolist(), k=4)] == items[0][items[0] >= 0].tolist()
    histories = [[1, 2], [7], [rec.catalogue.key(9), 10, 11]]
    batch = rec.recommend_batch(histories, k=3)
    assert [[r.item for r in rows] for rows in batch] == [[r.item for r in rec.recommend(h, k=3)] for h in histories]


def test_exclude_history_can_be_switched_off(rec):
    # A long history of one repeated item: with masking it never comes back, without it may.
    kept = rec.recommend([2] * 30, k=rec.n_items, exclude_history=False)
    masked = rec.recommend([2] * 30, k=rec.n_items)
    assert 2 in {r.item for r in kept} and 2 not in {r.item for r in masked}
    assert len(kept) == rec.n_items and len(masked) == rec.n_items - 1


def test_empty_history_falls_back_to_training_popularity(rec):
    rows = rec.recommend([], k=4)
    counts = leave_one_out(rec.catalogue.dataset, rec.config.data.max_history).train_item_counts()
    assert [r.source for r in rows] == ["popularity"] * 4
    assert [r.item for r in rows] == np.argsort(-counts, kind="stable")[:4].tolist()
    assert rows[0].score == pytest.approx(np.log(counts.max() / counts.sum()))


def test_unknown_items_are_value_errors_naming_them(rec):
    with pytest.raises(ValueError, match=re.escape("unknown item key 'no-such-item'")):
        rec.recommend([0, "no-such-item"])
    with pytest.raises(UnknownItem, match=f"item index {rec.n_items} is out of range"):
        rec.recommend([rec.n_items])
    with pytest.raises(ValueError, match="item index -1 is out of range"):
        rec.explain(-1)
    with pytest.raises(ValueError, match="not bool"):
        rec.recommend([True])
    with pytest.raises(ValueError, match="k must be at least 1"):
        rec.recommend([0], k=0)
    with pytest.raises(ValueError, match="not the string"):
        rec.recommend_batch(["i0001"], k=2)


def test_explain_gives_codes_fusion_weights_and_prefix_neighbours(rec):
    codes = rec.catalogue.semantic_ids.codes
    for item in range(rec.n_items):
        e = rec.explain(item, neighbours=3)
        assert e.codes == codes[item].tolist() and e.key == rec.catalogue.key(item)
        assert len(e.codebook_sizes) == len(e.codes)
        # 3 levels of ids from 2 learned levels <=> the tokenizer appended a disambiguation level
        assert e.disambiguation_level == (len(e.codes) > rec.config.tokenizer.levels)
        assert e.fusion_weights is not None
        total = e.fusion_weights["image"] + e.fusion_weights["text"]
        has_image = rec.catalogue.fusion.has_image[item]
        has_text = rec.catalogue.fusion.has_text[item]
        assert total == pytest.approx(1.0 if (has_image or has_text) else 0.0, abs=1e-6)
        if not has_image:
            assert e.fusion_weights["image"] == 0.0
        shared = [n.shared_levels for n in e.neighbours]
        assert shared == sorted(shared, reverse=True) and all(s >= 1 for s in shared)
        for n in e.neighbours:
            assert n.item != item
            assert codes[n.item, : n.shared_levels].tolist() == codes[item, : n.shared_levels].tolist()
            assert n.shared_levels == len(codes[item]) or codes[n.item, n.shared_levels] != codes[item, n.shared_levels]
        # nothing closer in prefix was left out
        same_first = int((codes[:, 0] == codes[item, 0]).sum()) - 1
        assert len(e.neighbours) == min(3, same_first)


def test_old_runs_without_config_yaml_load_from_the_manifests(tiny_run, tmp_path):
    old = tmp_path / "old-run"
    shutil.copytree(tiny_run, old)
    (old / "config.yaml").unlink()
    cfg = load_run_config(old)
    assert cfg.tokenizer.levels == 2 and cfg.generator.backbone == "causal" and cfg.data.max_history == 20
    assert Recommender.load(old, device="cpu").recommend([0, 1], k=3)


def test_a_config_yaml_newer_than_a_stage_is_flagged(tiny_run, tmp_path, caplog):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(text.replace("causal:\n    backbone: gpt2\n    hidden: 16", "causal:\n    backbone: gpt2\n    hidden: 32"))
    with caplog.at_level("WARNING", logger="cemg.run_folder"):
        assert load_run_config(run).generator.causal.hidden == 32
    assert "stage 'generator' was built with other generator settings" in caplog.text
    assert "stage 'tokenizer'" not in caplog.text


def test_a_changed_content_prior_is_not_a_stage_mismatch(tiny_run, tmp_path, caplog):
    # The prior acts at inference: `cemg run --set generator.content_prior.weight=W` reuses the
    # generator (its manifest still records the old weight) and re-runs only the evaluation.
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["generator"]["content_prior"]["weight"] == 0
    cfg["generator"]["content_prior"]["weight"] = 2.0
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    with caplog.at_level("WARNING", logger="cemg.run_folder"):
        assert load_run_config(run).generator.content_prior.weight == 2.0
    assert "built with other" not in caplog.text


def test_missing_stages_are_named(tiny_run, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(tiny_run, partial)
    shutil.rmtree(partial / "generator")
    assert len(ItemCatalogue.load(partial)) > 0  # items and ids need no generator
    with pytest.raises(FileNotFoundError, match="no trained generator"):
        Recommender.load(partial)
    with pytest.raises(FileNotFoundError, match="run directory not found"):
        Recommender.load(tmp_path / "nothing-here")


def test_the_example_in_the_docs_runs(tiny_run, capsys):
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    assert 'Recommender.load("runs/demo")' in code
    exec(compile(code.replace('"runs/demo"', repr(str(tiny_run))), "docs/api.md", "exec"), {})
    out = capsys.readouterr().out
    assert "semantic id" in out and "1." in out
