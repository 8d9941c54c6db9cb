import json

import numpy as np
import pytest
import torch

from cemg.config import EvalConfig, GeneratorConfig, T5DecoderGeneratorConfig
from cemg.data.dataset import InteractionDataset, ItemTable
from cemg.data.split import leave_one_out
from cemg.evaluation.protocol import evaluate
from cemg.generator import backbone_family, load_generator
from cemg.generator.t5_decoder import (
    PRESETS,
    TokenDecoderRecommender,
    _TokenLoss,
    build_token_decoder,
    item_windows,
    window_tokens,
)
from cemg.generator.train import train_generator
from cemg.generator.vocab import SemanticVocabulary
from cemg.tokenizer.semantic_ids import SemanticIds
from toy_data import N_ITEMS, SIZES, toy_ids, toy_split  # noqa: E402  (tests/generator/toy_data.py)

TINY = dict(d_model=32, d_kv=8, d_ff=64, dropout_rate=0.0)




def untrained(ids, max_history=6, beams=5, seed=0):
    model = build_token_decoder("t5-decoder-mini", ids.codebook_sizes, seed=seed, **TINY)
    return TokenDecoderRecommender(model, ids, GeneratorConfig(beams=beams), max_history=max_history)


def exact_scores(rec, histories):
    """(users, items) log p(item | history) by one plain forward per (user, item): the history's
    last max_history items' tokens then the item's, unpadded, no cache."""
    model, tokens, levels = rec.model, rec.item_tokens, rec.vocab.levels
    out = np.zeros((len(histories), rec.n_items))
    with torch.no_grad():
        for u, h in enumerate(histories):
            h = np.asarray(h)[-rec.max_history:]
            seq = np.concatenate([np.zeros((rec.n_items, 1), np.int64),
                                  np.broadcast_to(tokens[h].reshape(-1), (rec.n_items, len(h) * levels)), tokens], 1)
            hidden = model(torch.from_numpy(seq[:, :-1]))  # (items, T, d)
            first = len(h) * levels  # the state after the last history token predicts level 0
            for level in range(levels):
                lo, _ = rec.vocab.level_range(level)
                logp = torch.log_softmax(model.level_logits(hidden[:, first + level], level), -1)
                out[u] += logp[torch.arange(rec.n_items), torch.from_numpy(tokens[:, level] - lo)].numpy()
    return out


def test_presets_build_a_decoder_without_cross_attention():
    model = build_token_decoder("t5-decoder-tiny", [256] * 4, seed=0)
    assert model.config.num_layers == 4 and model.config.d_model == 128 and model.config.d_ff == 1024
    assert all(len(block.layer) == 2 for block in model.decoder.block)  # self-attention, feed-forward
    assert not any("EncDecAttention" in name for name, _ in model.named_parameters())
    assert PRESETS["t5-decoder"] == PRESETS["t5-decoder-tiny"]
    assert backbone_family("t5-decoder") == backbone_family("t5-decoder-mini") == "t5-decoder"
    assert backbone_family("t5-tiny") == "t5" and backbone_family("causal") == "causal"
    with pytest.raises(ValueError, match="presets"):
        build_token_decoder("t5-decoder-huge", SIZES, seed=0)
    with pytest.raises(ValueError, match="semantic by construction"):
        GeneratorConfig(backbone="t5-decoder", mode="hybrid")


def test_window_tokens_predict_every_item_after_the_first():
    vocab = SemanticVocabulary((4, 3))
    item_tokens = vocab.item_tokens(np.array([[0, 0], [1, 2], [3, 1]]))  # offsets 2 and 6
    windows, lengths = item_windows([np.array([0, 1, 2]), np.array([5]), np.array([2, 1])], max_history=4)
    assert lengths.tolist() == [3, 2] and windows[1].tolist() == [2, 1, -1, -1, -1]
    input_ids, labels = window_tokens(windows, lengths, item_tokens, vocab)
    # start token (pad 0), then the items' tokens but the last, right-padded with 0
    assert input_ids.tolist() == [[0, 2, 6, 3, 8, 5], [0, 5, 7, 3, 8, 0]]
    assert labels.tolist() == [[-100, -100, 3, 8, 5, 7], [-100, -100, 3, 8, -100, -100]]


def test_wide_beam_equals_exact_scoring_and_the_loss_is_its_likelihood():
    ids = toy_ids(n_items=30, sizes=[4, 4, 3])
    rec = untrained(ids)
    rng = np.random.default_rng(1)
    # lengths 0 to 9 with a max_history of 6: empty, short, and truncated histories in one batch
    histories = [rng.integers(0, ids.n_items, size=n) for n in (3, 0, 9, 1, 6, 2)]
    items, scores = rec.recommend_with_scores(histories, k=ids.n_items)
    exact = exact_scores(rec, histories)
    for row in range(len(histories)):
        order = np.argsort(-exact[row], kind="stable")
        assert items[row].tolist() == order.tolist()
        np.testing.assert_allclose(scores[row], exact[row][order], rtol=1e-5, atol=1e-5)
    # a narrow beam still returns real, distinct items with their own exact scores
    narrow, narrow_scores = rec.recommend_with_scores(histories, k=5)
    assert all(len(set(row)) == 5 for row in narrow.tolist())
    np.testing.assert_allclose(narrow_scores, np.take_along_axis(exact, narrow, 1), rtol=1e-5, atol=1e-5)
    # training on the 2-item window [a, b] is -log p(b | a) per token of b
    a, b = 7, 19
    windows, lengths = item_windows([np.array([a, b])], max_history=6)
    input_ids, labels = window_tokens(windows, lengths, rec.item_tokens, rec.vocab)
    loss = _TokenLoss(rec.model)(torch.from_numpy(input_ids), torch.from_numpy(labels))[0]
    np.testing.assert_allclose(loss.item(), -exact_scores(rec, [np.array([a])])[0, b] / 3, rtol=1e-5)


def test_exclusion_is_respected_and_pads_when_the_catalogue_runs_out():
    ids = toy_ids()
    rec = untrained(ids, beams=10)
    rng = np.random.default_rng(2)
    histories = [rng.integers(0, ids.n_items, size=rng.integers(1, 8)) for _ in range(12)]
    exclude = [np.unique(h) for h in histories]
    exclude[0] = np.setdiff1d(np.arange(ids.n_items), [3, 17, 29])
    top = rec.recommend(histories, k=10, exclude=exclude)
    assert sorted(top[0, :3].tolist()) == [3, 17, 29] and (top[0, 3:] == -1).all()
    for row, excl in zip(top[1:], exclude[1:]):
        assert ((row >= 0) & (row < ids.n_items)).all() and len(set(row.tolist())) == 10
        assert not set(row.tolist()) & set(excl.tolist())


def test_learns_a_deterministic_next_item_and_round_trips(tmp_path):
    split, ids = toy_split(), toy_ids()
    cfg = GeneratorConfig(backbone="t5-decoder-mini", t5_decoder=T5DecoderGeneratorConfig(lr=3e-3, epochs=30),
                          batch_size=32, beams=10, patience=2, eval_every=5, warmup_ratio=0.0, valid_users=None)
    out = tmp_path / "gen"
    rec, info = train_generator(split, ids, cfg, seed=0, device="cpu", out_dir=out)
    result = evaluate(rec, split, "test", EvalConfig())
    # chance is about 10 / 34 with history masking (0.29); the pattern is fully learnable
    assert result.metrics["HR@10"] > 0.9, result.metrics
    assert info["best_valid_ndcg10"] > 0.7
    assert info["backbone"] == "t5-decoder-mini" and info["mode"] == "semantic"
    assert info["n_windows"] == sum(len(s) >= 2 for s in split.train)
    assert info["history"][0]["loss"] > info["history"][-1]["loss"]

    loaded = load_generator(out, "t5-decoder-mini", device="cpu")
    assert isinstance(loaded, TokenDecoderRecommender)
    assert json.loads((out / "t5_decoder.json").read_text())["info"]["best_epoch"] == info["best_epoch"]
    histories, exclude = split.test.histories[:25], [np.unique(h) for h in split.test.histories[:25]]
    a_items, a_scores = rec.recommend_with_scores(histories, 10, exclude)
    b_items, b_scores = loaded.recommend_with_scores(histories, 10, exclude)
    assert (a_items == b_items).all()
    np.testing.assert_array_equal(a_scores, b_scores)
    for key, value in rec.model.state_dict().items():
        assert torch.equal(value, loaded.model.state_dict()[key]), key


def test_load_rejects_codes_it_was_not_trained_on(tmp_path):
    rec = untrained(toy_ids())
    rec.save(tmp_path / "gen")
    np.save(tmp_path / "gen" / "semantic_ids" / "codes.npy", toy_ids(seed=1).codes)
    with pytest.raises(ValueError, match="codes differ"):
        TokenDecoderRecommender.load(tmp_path / "gen", device="cpu")
