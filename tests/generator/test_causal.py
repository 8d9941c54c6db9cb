import json

import numpy as np
import pytest
import torch

from cemg.config import CausalGeneratorConfig, EvalConfig, GeneratorConfig
from cemg.data.dataset import InteractionDataset, ItemTable
from cemg.data.split import leave_one_out
from cemg.evaluation.protocol import evaluate
from cemg.generator.causal import (
    CausalGenerativeRecommender,
    CausalSemanticModel,
    CausalSpec,
    left_padded,
    train_causal_generator,
    training_windows,
)
from cemg.tokenizer.semantic_ids import SemanticIds
from toy_data import N_ITEMS, SIZES, toy_ids, toy_split  # noqa: E402  (tests/generator/toy_data.py)





def toy_content(n_items, dim=5, seed=0):
    return np.random.default_rng(seed).normal(size=(n_items, dim)).astype(np.float32)


def untrained(ids, seed=0, **spec):
    torch.manual_seed(seed)
    spec = CausalSpec(tuple(ids.codebook_sizes), ids.n_items, max_history=6, hidden=16, heads=2, dropout=0.0, **spec)
    content = toy_content(ids.n_items, spec.content_dim) if spec.content_dim else None
    return CausalGenerativeRecommender(CausalSemanticModel(spec, ids.codes, content=content), ids,
                                       GeneratorConfig(beams=5))


def random_histories(n, n_items, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, n_items, size=rng.integers(0, 9)) for _ in range(n)]


def test_windows_are_left_padded_next_item_pairs():
    inputs, targets = training_windows([np.array([5, 6, 7]), np.array([9]), np.arange(10, 16)], max_history=3)
    assert inputs.tolist() == [[-1, 5, 6], [12, 13, 14]]
    assert targets.tolist() == [[-1, 6, 7], [13, 14, 15]]
    assert left_padded([np.array([], np.int64), np.array([1, 2])], 3).tolist() == [[-1, -1, -1], [-1, 1, 2]]


def untrained_with_live_heads(ids, **spec):
    """An untrained model whose node vectors and input MLP, zero at start, have a say."""
    rec = untrained(ids, **spec)
    for module in (rec.model.node_emb, rec.model.node_mlp, rec.model.input_mlp, rec.model.content_out):
        for p in (module.parameters() if module is not None else []):
            torch.nn.init.normal_(p, std=0.5)
    return rec


@pytest.mark.parametrize(
    "spec",
    [{}, {"trie_softmax": True}, {"trie_softmax": True, "mode": "hybrid"}, {"composed_outputs": True},
     {"trie_softmax": True, "composed_inputs": True, "composed_outputs": True, "content_dim": 5},
     {"trie_softmax": True, "composed_outputs": True, "composed_leaf_codes": True}],
)
def test_pair_log_probs_scores_each_shared_prefix_once_with_the_teacher_forced_values(spec):
    # pair_log_probs groups a user's candidates by prefix; the teacher-forced logits along each
    # candidate's own path (what training computes) must give the same numbers
    ids = toy_ids(n_items=30, sizes=[4, 4, 3])
    rec = untrained_with_live_heads(ids, **spec)
    states = rec.last_states(random_histories(5, ids.n_items))
    rng = np.random.default_rng(0)
    items = torch.from_numpy(np.stack([rng.choice(ids.n_items, 40) for _ in range(5)]))  # repeats included
    model, (n, m) = rec.model, items.shape
    flat = items.reshape(-1)
    codes = model.item_tokens[flat] - model.item_tokens.new_tensor(model.offsets)
    logits = model._target_logits(states[:, None, :].expand(n, m, -1).reshape(n * m, -1), flat, codes, rec.tree)
    want = sum(lg.log_softmax(-1).gather(1, codes[:, level : level + 1]).squeeze(1)
               for level, lg in enumerate(logits)).reshape(n, m)
    got = model.pair_log_probs(states, items, rec.tree)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    # `levels`: the log p of the first codes only
    first_two = sum(lg.log_softmax(-1).gather(1, codes[:, level : level + 1]).squeeze(1)
                    for level, lg in enumerate(logits[:2])).reshape(n, m)
    torch.testing.assert_close(model.pair_log_probs(states, items, rec.tree, levels=2), first_two, rtol=0, atol=1e-6)
    assert not model.pair_log_probs(states, items, rec.tree, levels=0).any()
    with pytest.raises(ValueError, match="4 levels asked of items with 3 codes"):
        model.pair_log_probs(states, items, rec.tree, levels=4)


@pytest.mark.parametrize(
    "spec",
    [{}, {"tie_codes": False, "mode": "hybrid"}, {"backbone": "llama"}, {"trie_softmax": True},
     {"trie_softmax": True, "mode": "hybrid"}, {"mode": "hybrid"},
     {"trie_softmax": True, "composed_inputs": True, "composed_outputs": True}, {"composed_outputs": True},
     {"trie_softmax": True, "composed_outputs": True, "composed_leaf_codes": True},
     {"trie_softmax": True, "composed_inputs": True, "composed_outputs": True, "content_dim": 5},
     {"trie_softmax": True, "content_dim": 5}],
)
def test_wide_beam_equals_exact_scoring_of_every_item(spec):
    ids = toy_ids(n_items=30, sizes=[4, 4, 3])
    rec = untrained_with_live_heads(ids, **spec)
    histories = random_histories(6, ids.n_items)
    items, scores = rec.recommend_with_scores(histories, k=ids.n_items)
    states = rec.last_states(histories)
    exact = rec.model.sequence_log_probs(states, torch.arange(ids.n_items), rec.tree).detach().numpy()
    for row in range(len(histories)):
        order = np.argsort(-exact[row], kind="stable")
        assert items[row].tolist() == order.tolist()
        np.testing.assert_allclose(scores[row], exact[row][order], rtol=1e-5, atol=1e-5)
    mass = np.exp(scores).sum(1)
    if spec.get("trie_softmax"):
        # every level normalised over the tree's children: a distribution over the catalogue, and
        # the training loss is its negative log-likelihood
        np.testing.assert_allclose(mass, 1.0, rtol=1e-5)
        targets = torch.tensor([3, 7, 11, 0, 29, 18])
        nll = rec.model.loss(states, targets, rec.tree)
        chosen = -torch.from_numpy(exact)[torch.arange(6), targets].mean()
        torch.testing.assert_close(nll, chosen, rtol=1e-5, atol=1e-5)
    else:
        # each level's softmax runs over the full codebook, so items (a subset of all code
        # sequences) hold less than all the mass
        assert mass.max() <= 1.0 + 1e-5


def test_outputs_are_real_items_and_exclusion_is_respected():
    ids = toy_ids()
    rec = untrained(ids)
    histories = random_histories(20, ids.n_items, seed=1)
    exclude = [np.unique(h) for h in histories]
    top = rec.recommend(histories, k=10, exclude=exclude)
    assert top.shape == (20, 10)
    assert ((top >= 0) & (top < ids.n_items)).all()  # the beam (10) always fills k real items
    for row, excl in zip(top, exclude):
        assert len(set(row.tolist())) == 10
        assert not set(row.tolist()) & set(excl.tolist())


def test_exclusion_leaving_fewer_than_k_items_pads_with_minus_one():
    ids = toy_ids()
    rec = untrained(ids)
    keep = np.array([3, 17, 29])
    exclude = [np.setdiff1d(np.arange(ids.n_items), keep)]
    top, scores = rec.recommend_with_scores([np.array([1, 2])], k=5, exclude=exclude)
    assert sorted(top[0, :3].tolist()) == keep.tolist()
    assert top[0, 3:].tolist() == [-1, -1] and np.isneginf(scores[0, 3:]).all()
    everything = [np.arange(ids.n_items)]
    assert (rec.recommend([np.array([1])], k=3, exclude=everything) == -1).all()


def test_learns_a_deterministic_next_item_and_round_trips(tmp_path):
    split, ids = toy_split(), toy_ids()
    cfg = GeneratorConfig(causal=CausalGeneratorConfig(lr=1e-2, epochs=40, hidden=32, dropout=0.1), batch_size=32, beams=10,
                          patience=3, eval_every=5, warmup_ratio=0.0, valid_users=None)
    out = tmp_path / "gen"
    rec = train_causal_generator(split, ids, cfg, seed=0, device="cpu", out_dir=out)
    result = evaluate(rec, split, "test", EvalConfig())
    # chance is about 10 / 34 with history masking (0.29); the pattern is fully learnable
    assert result.metrics["HR@10"] > 0.9, result.metrics
    assert rec.info["best_valid_ndcg10"] > 0.7
    assert rec.info["n_windows"] == sum(len(s) >= 2 for s in split.train)
    assert len(rec.info["history"]) == rec.info["epochs_run"]

    loaded = CausalGenerativeRecommender.load(out, device="cpu")
    histories, exclude = split.test.histories[:25], [np.unique(h) for h in split.test.histories[:25]]
    a_items, a_scores = rec.recommend_with_scores(histories, 10, exclude)
    b_items, b_scores = loaded.recommend_with_scores(histories, 10, exclude)
    assert (a_items == b_items).all()
    np.testing.assert_array_equal(a_scores, b_scores)
    assert loaded.info["best_epoch"] == rec.info["best_epoch"]


def test_load_rejects_codes_it_was_not_trained_on(tmp_path):
    ids = toy_ids()
    rec = untrained(ids)
    rec.save(tmp_path / "gen")
    np.save(tmp_path / "gen" / "semantic_ids" / "codes.npy", toy_ids(seed=1).codes)
    with pytest.raises(ValueError, match="codes differ"):
        CausalGenerativeRecommender.load(tmp_path / "gen", device="cpu")
    meta = json.loads((tmp_path / "gen" / "causal.json").read_text())
    assert meta["spec"]["codebook_sizes"] == SIZES


def test_rejects_mismatched_catalogue():
    split = toy_split(n_users=20)
    with pytest.raises(ValueError, match="cover 30 items"):
        train_causal_generator(split, toy_ids(n_items=30), GeneratorConfig(), seed=0)


def test_content_reading_model_trains_round_trips_and_takes_new_items_with_their_content(tmp_path):
    split, ids = toy_split(), toy_ids()
    content = toy_content(ids.n_items, dim=6)
    cfg = GeneratorConfig(causal=CausalGeneratorConfig(lr=1e-2, epochs=10, hidden=16, content_features=True),
                          batch_size=32, beams=10, patience=3, eval_every=5, warmup_ratio=0.0, valid_users=None)
    with pytest.raises(ValueError, match="needs the items' content"):
        train_causal_generator(split, ids, cfg, seed=0)
    out = tmp_path / "gen"
    rec = train_causal_generator(split, ids, cfg, seed=0, out_dir=out, item_content=content)
    assert rec.model.content_out[-1].weight.abs().sum() > 0  # the node content term trained
    loaded = CausalGenerativeRecommender.load(out, device="cpu")
    np.testing.assert_array_equal(loaded.model.item_content.numpy(), content)
    histories = split.test.histories[:10]
    np.testing.assert_array_equal(rec.recommend_with_scores(histories, 10)[1],
                                  loaded.recommend_with_scores(histories, 10)[1])

    # Two new items under unused code tuples: scored from their codes and content, nothing per item.
    grid = np.stack(np.meshgrid(*[np.arange(k) for k in SIZES], indexing="ij"), -1).reshape(-1, len(SIZES))
    unused = [row for row in grid.tolist() if row not in ids.codes.tolist()][:2]
    extended = SemanticIds(np.concatenate([ids.codes, unused]), ids.codebook_sizes)
    with pytest.raises(ValueError, match="2 added items need their content"):
        loaded.with_catalogue(extended)
    wider = loaded.with_catalogue(extended, toy_content(2, dim=6, seed=1))
    assert wider.n_items == ids.n_items + 2
    np.testing.assert_array_equal(wider.model.item_content[: ids.n_items].numpy(), content)
    items, scores = wider.recommend_with_scores(histories, k=wider.n_items)
    assert set(items[0].tolist()) == set(range(wider.n_items)) and np.isfinite(scores).all()
