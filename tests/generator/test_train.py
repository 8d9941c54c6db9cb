import json

import numpy as np
import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

from cemg.config import EvalConfig, GeneratorConfig, T5GeneratorConfig
from cemg.data.dataset import InteractionDataset, ItemTable
from cemg.data.split import leave_one_out
from cemg.evaluation.protocol import evaluate
from cemg.generator.t5 import GenerativeRecommender, NextItemExamples
from cemg.generator.train import length_bucketed_batches, train_generator
from cemg.tokenizer.semantic_ids import SemanticIds
from toy_data import N_ITEMS, SIZES, toy_ids, toy_split  # noqa: E402  (tests/generator/toy_data.py)





@pytest.fixture
def tiny_t5(tmp_path):
    """A tiny T5 saved like a pretrained checkpoint (its own 8-token vocabulary), loaded by path."""
    config = T5Config(vocab_size=8, d_model=32, num_layers=2, num_decoder_layers=2, num_heads=2, d_kv=16,
                      d_ff=64, dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    torch.manual_seed(0)
    path = tmp_path / "tiny-t5"
    T5ForConditionalGeneration(config).save_pretrained(path)
    return str(path)


def test_sliding_windows_cover_every_position_with_capped_history():
    seqs = [np.array([5, 6, 7]), np.array([9]), np.arange(10, 14)]
    ex = NextItemExamples.from_sequences(seqs, max_history=2)
    assert len(ex) == 2 + 0 + 3
    history, lengths, targets = ex.batch(np.arange(len(ex)))
    assert targets.tolist() == [6, 7, 11, 12, 13]
    assert lengths.tolist() == [1, 2, 1, 2, 2]
    rows = [history[i, : lengths[i]].tolist() for i in range(len(ex))]
    assert rows == [[5], [5, 6], [10], [10, 11], [11, 12]]
    assert ex.history_lengths.tolist() == lengths.tolist()


def test_length_buckets_partition_the_examples_and_group_lengths():
    lengths = np.random.default_rng(0).integers(1, 21, size=1000)
    batches = length_bucketed_batches(lengths, 32, np.random.default_rng(1), bucket_batches=8)
    rows = np.concatenate(batches)
    assert sorted(rows.tolist()) == list(range(1000))
    assert len(batches) == -(-1000 // 32)
    # within a batch lengths are close: far less padding than random batches
    padded = sum(lengths[b].max() * len(b) for b in batches)
    assert padded < 1.3 * lengths.sum()


def test_tiny_t5_learns_a_deterministic_next_item_and_round_trips(tiny_t5, tmp_path, caplog):
    split, sid = toy_split(), toy_ids()
    cfg = GeneratorConfig(backbone=tiny_t5, t5=T5GeneratorConfig(lr=1e-2, epochs=20), batch_size=32, beams=10, patience=2,
                          eval_every=5, warmup_ratio=0.0, valid_users=None)
    out = tmp_path / "gen"
    rec, info = train_generator(split, sid, cfg, seed=0, device="cpu", out_dir=out)
    assert info["n_examples"] == sum(len(s) - 1 for s in split.train if len(s) > 1)
    result = evaluate(rec, split, "test", EvalConfig())
    # chance is about 10 / 34 with history masking (0.29); the pattern is fully learnable
    assert result.metrics["HR@10"] > 0.7, result.metrics
    assert info["best_valid_ndcg10"] > 0.5
    assert info["history"][0]["loss"] > info["history"][-1]["loss"]
    # the semantic tokens were appended after the checkpoint's own 8 tokens
    assert rec.vocab.offset == 8 and rec.model.get_input_embeddings().num_embeddings == 8 + sum(SIZES)

    loaded = GenerativeRecommender.load(out, device="cpu")
    assert json.loads((out / "generator.json").read_text())["info"]["best_epoch"] == info["best_epoch"]
    assert (out / "model" / "model.safetensors").is_file()
    hist = split.test.histories
    items, scores = rec.recommend_with_scores(hist, 10)
    items2, scores2 = loaded.recommend_with_scores(hist, 10)
    assert np.array_equal(items, items2)
    np.testing.assert_allclose(scores, scores2, atol=1e-6)


def test_mismatched_semantic_ids_are_rejected():
    split = toy_split(n_users=10)
    with pytest.raises(ValueError, match="semantic ids cover 3 items"):
        train_generator(split, SemanticIds(np.array([[0], [1], [2]]), [4]), GeneratorConfig(), seed=0)
