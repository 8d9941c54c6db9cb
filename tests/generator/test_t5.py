import numpy as np
import pytest
import torch

from cemg.config import EvalConfig, GeneratorConfig
from cemg.data.dataset import InteractionDataset, ItemTable
from cemg.data.split import leave_one_out
from cemg.evaluation.protocol import evaluate
from cemg.generator.t5 import GenerativeRecommender, build_backbone
from cemg.tokenizer.semantic_ids import SemanticIds

SIZES = [6, 5, 4]
TINY = dict(d_model=32, num_layers=1, num_decoder_layers=2, num_heads=2, d_kv=16, d_ff=64)


def random_ids(n_items, seed=0):
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(k) for k in SIZES], indexing="ij"), -1).reshape(-1, len(SIZES))
    return SemanticIds(grid[rng.choice(len(grid), n_items, replace=False)], SIZES)


def recommender(n_items=50, seed=0, **cfg):
    model, vocab = build_backbone("t5-tiny", SIZES, seed=seed, **TINY)
    return GenerativeRecommender(model, vocab, random_ids(n_items, seed), GeneratorConfig(**cfg), device="cpu")


def histories(n, n_items, seed=1):
    rng = np.random.default_rng(seed)
    return [rng.choice(n_items, size=rng.integers(0, min(25, n_items)), replace=False) for _ in range(n)]


def test_recommend_returns_real_distinct_items_best_first():
    rec = recommender(beams=12, eval_batch_size=4)  # several beam-search batches
    hist = histories(10, 50)
    items, scores = rec.recommend_with_scores(hist, 10)
    assert items.shape == scores.shape == (10, 10) and items.dtype == np.int64
    assert ((items >= 0) & (items < 50)).all()
    assert all(len(set(row)) == 10 for row in items.tolist())
    assert (np.diff(scores, axis=1) <= 0).all() and (scores < 0).all()
    # batching does not change a user's ranking
    alone = rec.recommend(hist[3:4], 10)
    assert np.array_equal(alone[0], items[3])
    assert not rec.model.training


def test_exclude_removes_history_and_pads_when_catalogue_runs_out():
    rec = recommender(n_items=12, beams=5)
    hist = histories(6, 12)
    exclude = [h for h in hist]
    exclude[0] = np.arange(12)  # everything excluded: nothing to recommend
    exclude[1] = np.arange(4)  # 8 left, fewer than k
    items = rec.recommend(hist, 10, exclude)  # k > beams widens the beam to k
    assert (items[0] == -1).all()
    assert sorted(items[1][items[1] >= 0].tolist()) == list(range(4, 12))
    for u in range(2, 6):
        got = items[u][items[u] >= 0]
        assert not set(got.tolist()) & set(exclude[u].tolist())
        assert len(got) == min(10, 12 - len(set(exclude[u].tolist())))


def test_works_with_the_evaluation_protocol():
    rng = np.random.default_rng(0)
    seqs = [rng.choice(30, size=rng.integers(3, 12), replace=False) for _ in range(20)]
    data = InteractionDataset("toy", [str(u) for u in range(20)], seqs, ItemTable(keys=[str(i) for i in range(30)]))
    split = leave_one_out(data)
    result = evaluate(recommender(n_items=30), split, "test", EvalConfig(ks=[5, 10]))
    assert result.n_users == 20 and set(result.metrics) == {"HR@5", "NDCG@5", "HR@10", "NDCG@10"}


def test_save_load_round_trip(tmp_path):
    rec = recommender(beams=8)
    rec.info = {"best_epoch": 3}
    rec.save(tmp_path / "gen")
    loaded = GenerativeRecommender.load(tmp_path / "gen", device="cpu")
    assert loaded.info == {"best_epoch": 3} and loaded.config.beams == 8
    assert loaded.vocab == rec.vocab and np.array_equal(loaded.semantic_ids.codes, rec.semantic_ids.codes)
    hist = histories(5, 50)
    a, sa = rec.recommend_with_scores(hist, 8, hist)
    b, sb = loaded.recommend_with_scores(hist, 8, hist)
    assert np.array_equal(a, b)
    np.testing.assert_allclose(sa, sb, atol=1e-6)


def test_load_rejects_tampered_semantic_ids(tmp_path):
    rec = recommender()
    rec.save(tmp_path / "gen")
    codes = np.load(tmp_path / "gen" / "semantic_ids" / "codes.npy")
    np.save(tmp_path / "gen" / "semantic_ids" / "codes.npy", codes[::-1].copy())
    with pytest.raises(ValueError, match="differ"):
        GenerativeRecommender.load(tmp_path / "gen", device="cpu")
    with pytest.raises(FileNotFoundError):
        GenerativeRecommender.load(tmp_path / "missing", device="cpu")


@pytest.mark.parametrize("preset", ["t5-tiny", "t5-mini"])
def test_presets_are_built_over_the_semantic_vocabulary(preset):
    model, vocab = build_backbone(preset, [256] * 4, seed=0)
    assert vocab.offset == 2 and model.config.vocab_size == vocab.size == 2 + 1024
    assert (model.config.pad_token_id, model.config.eos_token_id, model.config.decoder_start_token_id) == (0, 1, 0)
    assert model.config.num_layers == model.config.num_decoder_layers


def test_pretrained_backbone_gets_semantic_tokens_appended(tmp_path):
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(vocab_size=40, d_model=16, num_layers=1, num_decoder_layers=1, num_heads=2, d_kv=8,
                      d_ff=32, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    torch.manual_seed(0)
    base = T5ForConditionalGeneration(config)
    base.save_pretrained(tmp_path / "base")
    model, vocab = build_backbone(str(tmp_path / "base"), SIZES, seed=0)
    assert vocab.offset == 40 and vocab.size == 40 + sum(SIZES)
    assert model.get_input_embeddings().num_embeddings == vocab.size
    # the checkpoint's own embeddings survive untouched
    assert torch.equal(model.get_input_embeddings().weight[:40], base.get_input_embeddings().weight)
    with pytest.raises(ValueError, match="neither a preset"):
        build_backbone(str(tmp_path), SIZES, seed=0)
    with pytest.raises(ValueError, match="overrides"):
        build_backbone(str(tmp_path / "base"), SIZES, seed=0, d_model=8)
