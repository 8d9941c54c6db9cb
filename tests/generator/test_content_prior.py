"""The content prior at inference (cemg.generator.content_prior)."""

import numpy as np
import pytest
import torch

from cemg.generator.content_prior import ContentPriorRecommender
from cemg.tokenizer.semantic_ids import SemanticIds
from test_causal import random_histories, toy_content, untrained  # noqa: E402  (tests/generator/)
from toy_data import toy_ids  # noqa: E402


@pytest.fixture
def generator():
    ids = toy_ids(n_items=30, sizes=[4, 4, 3])
    rec = untrained(ids, trie_softmax=True, composed_outputs=True)
    for p in rec.model.node_mlp.parameters():
        torch.nn.init.normal_(p, std=0.5)
    return rec


def three_users(n_items: int):
    """Content (and its unit rows), training counts, three histories and what each excludes."""
    content = toy_content(n_items, dim=4, seed=2)
    unit = content / np.linalg.norm(content, axis=1, keepdims=True)
    counts = np.random.default_rng(1).integers(0, 50, n_items)
    histories = [np.array([3, 7]), np.array([11]), np.array([5, 6, 29])]
    return content, unit, counts, histories, [np.unique(h) for h in histories]


def test_weight_zero_ranks_by_exact_log_p_and_never_below_the_beam(generator):
    histories = random_histories(8, generator.n_items, seed=3)
    histories = [h if len(h) else np.array([0]) for h in histories]
    exclude = [np.unique(h) for h in histories]
    prior = ContentPriorRecommender(generator, toy_content(generator.n_items), weight=0.0, candidates=10)
    items, scores = prior.recommend_with_scores(histories, 10, exclude)
    base_items, base_scores = generator.recommend_with_scores(histories, 10, exclude)
    exact = generator.model.sequence_log_probs(generator.last_states(histories), torch.arange(generator.n_items),
                                               generator.tree).detach().numpy()
    for row in range(len(histories)):
        np.testing.assert_allclose(scores[row], exact[row][items[row]], rtol=1e-5, atol=1e-5)
    # the candidates hold the beam's top k, so the k-th best can only improve on the beam's
    assert (scores >= base_scores - 1e-5).all() and (np.diff(scores, axis=1) <= 1e-6).all()
    assert (items[:, 0] == base_items[:, 0]).all()


def test_scores_are_exact_log_p_plus_weighted_cosine_over_the_candidates(generator):
    content = toy_content(generator.n_items, dim=4, seed=2)
    unit = content / np.linalg.norm(content, axis=1, keepdims=True)
    histories = [np.array([3, 7]), np.array([11]), np.array([5, 6, 29])]
    exclude = [np.unique(h) for h in histories]
    prior = ContentPriorRecommender(generator, content, weight=3.0, candidates=generator.n_items)
    items, scores = prior.recommend_with_scores(histories, 8, exclude)
    states = generator.last_states(histories)
    exact = generator.model.sequence_log_probs(states, torch.arange(generator.n_items), generator.tree).detach().numpy()
    for row, history in enumerate(histories):
        want = exact[row] + 3.0 * (unit @ unit[history[-1]])
        want[history] = -np.inf
        order = np.argsort(-want, kind="stable")[:8]
        assert items[row].tolist() == order.tolist()
        np.testing.assert_allclose(scores[row], want[order], rtol=1e-4, atol=1e-4)


def test_a_large_weight_ranks_content_neighbours_first_and_never_repeats_or_returns_excluded(generator):
    content = toy_content(generator.n_items, dim=4, seed=5)
    unit = content / np.linalg.norm(content, axis=1, keepdims=True)
    histories = random_histories(12, generator.n_items, seed=4)
    histories = [h if len(h) else np.array([1]) for h in histories]
    exclude = [np.unique(h) for h in histories]
    prior = ContentPriorRecommender(generator, content, weight=1e4, candidates=5)
    items = prior.recommend(histories, 10, exclude)
    for row, history in enumerate(histories):
        similarity = unit @ unit[history[-1]]
        similarity[exclude[row]] = -np.inf
        assert items[row, 0] == int(np.argmax(similarity))
        real = items[row][items[row] >= 0]
        assert len(set(real.tolist())) == len(real) and not set(real.tolist()) & set(exclude[row].tolist())
    # fewer items left than asked for: padded with -1
    everything_but = [np.setdiff1d(np.arange(generator.n_items), [4, 9])]
    assert sorted(prior.recommend([np.array([2])], 5, everything_but)[0].tolist()) == [-1, -1, -1, 4, 9]


def test_added_items_need_their_content(generator):
    prior = ContentPriorRecommender(generator, toy_content(generator.n_items, dim=4), weight=1.0, candidates=5)
    grid = np.stack(np.meshgrid(*[np.arange(k) for k in [4, 4, 3]], indexing="ij"), -1).reshape(-1, 3)
    unused = [row for row in grid.tolist() if row not in generator.semantic_ids.codes.tolist()][:1]
    wider_ids = SemanticIds(np.concatenate([generator.semantic_ids.codes, unused]), [4, 4, 3])
    with pytest.raises(ValueError, match="1 added items' content"):
        prior.with_catalogue(wider_ids)
    wider = prior.with_catalogue(wider_ids, toy_content(1, dim=4, seed=9))
    assert wider.n_items == generator.n_items + 1 and wider.info["content_prior"]["weight"] == 1.0
    assert generator.n_items in set(wider.recommend([np.array([0])], wider.n_items)[0].tolist())


def test_the_image_weight_scales_the_image_block_of_the_cosine_also_for_added_items(generator):
    from cemg.features.artifact import ItemFeatures
    from cemg.generator.content_prior import content_column_scale

    n, rng = generator.n_items, np.random.default_rng(7)
    text, image = rng.normal(size=(n + 1, 3)).astype(np.float32), rng.normal(size=(n + 1, 2)).astype(np.float32)
    features = ItemFeatures(n + 1, text, np.ones(n + 1, bool), image, np.ones(n + 1, bool), {})
    content = features.content_matrix(("text", "image"))  # the last row plays an added item
    assert content_column_scale(features, ("text", "image"), 1.0) is None
    assert content_column_scale(features, ("text",), 0.5) is None
    scale = content_column_scale(features, ("text", "image"), 0.5)
    assert scale.tolist() == [1, 1, 1, 0.5, 0.5]
    grid = np.stack(np.meshgrid(*[np.arange(k) for k in [4, 4, 3]], indexing="ij"), -1).reshape(-1, 3)
    unused = [row for row in grid.tolist() if row not in generator.semantic_ids.codes.tolist()][:1]
    wider_ids = SemanticIds(np.concatenate([generator.semantic_ids.codes, unused]), [4, 4, 3])
    prior = ContentPriorRecommender(generator, content[:n], 1.0, 5, scale).with_catalogue(wider_ids, content[n:])
    cos = prior.content @ prior.content.T
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    t, i = unit(text), unit(image)
    want = (t @ t.T + 0.25 * (i @ i.T)) / 1.25  # (cos_t + a^2 cos_i) / (1 + a^2)
    np.testing.assert_allclose(cos.numpy(), want, rtol=1e-5, atol=1e-5)
    assert prior.info["content_prior"]["image_weight"] == 0.5
    from cemg.generator.recommender import describe_generator

    causal = {"backbone": "causal"}
    assert describe_generator(causal, False, {"weight": 8, "image_weight": 0.5}).endswith(
        "content prior weight 8 (image block x 0.5)")
    assert describe_generator(causal, False, {"weight": 8, "popularity_adjustment": 0.25}).endswith(
        "content prior weight 8, popularity adjustment 0.25")
    assert describe_generator(causal, False, {"weight": 8, "cold_weight": 4}).endswith("prior weight 8, cold weight 4")
    assert "prior" not in describe_generator(causal, False, {"weight": 0, "cold_weight": 4})
    assert describe_generator(causal, False, {"weight": 2, "mixture": 0.3, "mixture_sharpness": 10,
                                              "new_item_share": 0.02, "new_item_sharpness": 40}).endswith(
        "prior weight 2, as a mixture (lambda 0.3, beta 10), new-item share 0.02 (beta 40)")
    assert describe_generator(causal, False, {"weight": 8, "new_item_share": 0.05, "new_item_sharpness": 20,
                                              "new_item_prefix_levels": 1}).endswith(
        "new-item share 0.05 (beta 20, first 1 code(s) weighed by the generator)")
    assert describe_generator(causal, False, {"weight": 8, "new_item_share": 0.15, "new_item_sharpness": 10,
                                              "new_item_gate": 1, "new_item_gate_sharpness": 20}).endswith(
        "new-item share 0.15 (beta 10, gated per user by the last item's neighbourhood (1, beta 20))")


def test_the_popularity_adjustment_subtracts_tau_log_count_and_added_items_count_zero(generator):
    content, unit, counts, histories, exclude = three_users(generator.n_items)
    prior = ContentPriorRecommender(generator, content, 3.0, generator.n_items, None, counts, 0.7)
    items, scores = prior.recommend_with_scores(histories, 8, exclude)
    exact = generator.model.sequence_log_probs(generator.last_states(histories), torch.arange(generator.n_items),
                                               generator.tree).detach().numpy()
    for row, history in enumerate(histories):
        want = exact[row] + 3.0 * (unit @ unit[history[-1]]) - 0.7 * np.log1p(counts)
        want[history] = -np.inf
        order = np.argsort(-want, kind="stable")[:8]
        assert items[row].tolist() == order.tolist()
        np.testing.assert_allclose(scores[row], want[order], rtol=1e-4, atol=1e-4)
    assert prior.info["content_prior"]["popularity_adjustment"] == 0.7
    # an item added after training has no interactions: no penalty
    grid = np.stack(np.meshgrid(*[np.arange(k) for k in [4, 4, 3]], indexing="ij"), -1).reshape(-1, 3)
    unused = [row for row in grid.tolist() if row not in generator.semantic_ids.codes.tolist()][:1]
    wider = prior.with_catalogue(SemanticIds(np.concatenate([generator.semantic_ids.codes, unused]), [4, 4, 3]),
                                 toy_content(1, dim=4, seed=9))
    assert wider.train_counts.tolist() == [*counts.tolist(), 0] and float(wider.penalty[-1]) == 0.0
    with pytest.raises(ValueError, match="popularity_adjustment needs the training interactions"):
        ContentPriorRecommender(generator, content, 3.0, 5, None, None, 0.7)


def test_the_cold_weight_raises_the_cosine_weight_of_rarely_seen_items_and_of_added_ones(generator):
    content, unit, counts, histories, exclude = three_users(generator.n_items)
    counts[:3] = [0, 5, 45]
    prior = ContentPriorRecommender(generator, content, 3.0, generator.n_items, None, counts, 0.2, cold_weight=4.0)
    # weight + cold x 5 / (5 + n): all of it for an item never seen, half at 5 interactions, a tenth at 45
    np.testing.assert_allclose(prior.item_weight[:3].numpy(), [7.0, 5.0, 3.4], rtol=1e-6)
    items, scores = prior.recommend_with_scores(histories, 8, exclude)
    exact = generator.model.sequence_log_probs(generator.last_states(histories), torch.arange(generator.n_items),
                                               generator.tree).detach().numpy()
    for row, history in enumerate(histories):
        want = exact[row] + (3.0 + 4.0 * 5 / (5 + counts)) * (unit @ unit[history[-1]]) - 0.2 * np.log1p(counts)
        want[history] = -np.inf
        order = np.argsort(-want, kind="stable")[:8]
        assert items[row].tolist() == order.tolist()
        np.testing.assert_allclose(scores[row], want[order], rtol=1e-4, atol=1e-4)
    assert prior.info["content_prior"]["cold_weight"] == 4.0
    grid = np.stack(np.meshgrid(*[np.arange(k) for k in [4, 4, 3]], indexing="ij"), -1).reshape(-1, 3)
    unused = [row for row in grid.tolist() if row not in generator.semantic_ids.codes.tolist()][:1]
    wider = prior.with_catalogue(SemanticIds(np.concatenate([generator.semantic_ids.codes, unused]), [4, 4, 3]),
                                 toy_content(1, dim=4, seed=9))
    assert float(wider.item_weight[-1]) == 7.0 and wider.cold_weight == 4.0  # an added item: never seen
    with pytest.raises(ValueError, match="cold_weight needs the training interactions"):
        ContentPriorRecommender(generator, content, 3.0, 5, None, None, 0.0, cold_weight=1.0)
    with pytest.raises(ValueError, match="cold_weight must be >= 0"):
        ContentPriorRecommender(generator, content, 3.0, 5, None, counts, 0.0, cold_weight=-1.0)


def test_a_run_with_the_prior_re_evaluates_without_retraining_and_serves_it(tiny_run, tmp_path):
    import json
    import shutil

    from cemg.api import Recommender, add_items
    from cemg.config import load_config
    from cemg.pipeline import run_pipeline

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    generator_manifest = (run / "generator" / "manifest.json").read_text()
    cfg = load_config(run / "config.yaml", ["generator.content_prior.weight=2.0", "generator.content_prior.candidates=8",
                                            f"run_dir={run}"])
    result = run_pipeline(cfg)
    assert (run / "generator" / "manifest.json").read_text() == generator_manifest  # not retrained
    assert result.artifacts["evaluation"].results["test"].metrics  # evaluated with the prior
    # `cemg recommend` stops after the generator: it ranks under the prior too
    assert isinstance(run_pipeline(cfg, stop_after="generator").artifacts["ranker"], ContentPriorRecommender)
    rec = Recommender.load(run, device="cpu")
    assert rec.generator.info["content_prior"] == {"weight": 2.0, "candidates": 8}
    # the popularity adjustment re-evaluates too; at its default 0 the evaluation hash is the old one
    hashes = result.hashes
    adjusted = load_config(run / "config.yaml", ["generator.content_prior.weight=2.0", "generator.content_prior.candidates=8",
                                                 "generator.content_prior.popularity_adjustment=0.5", f"run_dir={run}"])
    adjusted_hash = run_pipeline(adjusted).hashes["evaluation"]
    assert adjusted_hash != hashes["evaluation"]
    assert Recommender.load(run, device="cpu").generator.info["content_prior"]["popularity_adjustment"] == 0.5
    assert run_pipeline(cfg).hashes["evaluation"] == hashes["evaluation"]
    cold = load_config(run / "config.yaml", ["generator.content_prior.weight=2.0", "generator.content_prior.candidates=8",
                                             "generator.content_prior.cold_weight=3", f"run_dir={run}"])
    assert run_pipeline(cold).hashes["evaluation"] not in (hashes["evaluation"], adjusted_hash)
    assert Recommender.load(run, device="cpu").generator.info["content_prior"]["cold_weight"] == 3.0
    run_pipeline(cfg)
    items = tmp_path / "new.jsonl"
    items.write_text(json.dumps({"item_id": "n1", "title": "Velvet Matte Lipstick", "brand": "Acme",
                                 "categories": ["lips"]}) + "\n", encoding="utf-8")
    add_items(run, items)
    rec = Recommender.load(run, device="cpu")
    assert rec.n_items == 41 and "n1" in {r.key for r in rec.recommend(["i0001", "i0002"], k=41)}


def test_the_new_item_share_ranks_added_items_as_a_mixture_part_by_softmax_of_their_cosine(generator):
    content = toy_content(generator.n_items, dim=4, seed=2)
    histories = [np.array([3, 7]), np.array([11]), np.array([5, 6, 29])]
    grid = np.stack(np.meshgrid(*[np.arange(k) for k in [4, 4, 3]], indexing="ij"), -1).reshape(-1, 3)
    unused = [row for row in grid.tolist() if row not in generator.semantic_ids.codes.tolist()][:5]
    added = toy_content(len(unused), dim=4, seed=9)
    ids = SemanticIds(np.concatenate([generator.semantic_ids.codes, unused]), [4, 4, 3])
    n, n_all = generator.n_items, generator.n_items + len(unused)
    histories.append(np.array([4, n + 1]))  # an added item in the history: excluded, and the last item
    exclude = [np.unique(h) for h in histories]
    plain = ContentPriorRecommender(generator, content, 3.0, n_all).with_catalogue(ids, added)
    share, sharpness = 0.2, 5.0
    mixed = plain.replace(new_item_share=share, new_item_sharpness=sharpness)
    assert mixed.n_trained == n and mixed.info["content_prior"]["new_item_share"] == share
    items, scores = mixed.recommend_with_scores(histories, 12, exclude)
    _, base_scores = plain.recommend_with_scores(histories, n_all, exclude)
    base_items = plain.recommend(histories, n_all, exclude)
    unit = np.concatenate([content, added])
    unit = unit / np.linalg.norm(unit, axis=1, keepdims=True)

    def added_cos(history):  # each added item's cosine to the last item, -inf where excluded
        cos = unit[n:] @ unit[history[-1]]
        cos[[i - n for i in history if i >= n]] = -np.inf
        return cos

    def assert_mixture(items, scores, row, user_share, logit):
        """the plain prior's score of every trained item (from its own ranking) at log(1 - share), the
        added items' log softmax of `logit` at log share"""
        want = np.full(n_all, -np.inf)
        trained = base_items[row] < n
        want[base_items[row][trained]] = np.log(1 - user_share) + base_scores[row][trained]
        want[n:] = np.log(user_share) + logit - np.log(np.exp(logit).sum())
        order = np.argsort(-want, kind="stable")[:12]
        assert items[row].tolist() == order.tolist()
        np.testing.assert_allclose(scores[row], want[order], rtol=1e-4, atol=1e-4)

    for row, history in enumerate(histories):
        assert_mixture(items, scores, row, share, sharpness * added_cos(history))
        assert not set(items[row].tolist()) & set(history.tolist())
    # the added items' part holds `share` of the mass whatever the user: exp of their scores sums to it
    # (all of them are in a list as long as the catalogue)
    every, every_score = mixed.recommend_with_scores(histories[:1], n_all, exclude[:1])
    assert np.exp(every_score[0][every[0] >= n]).sum() == pytest.approx(share, rel=1e-4)
    # with the first code weighed by the generator, an added item's logit gains its log p of that code
    weighed = mixed.replace(new_item_prefix_levels=1)
    assert weighed.info["content_prior"]["new_item_prefix_levels"] == 1
    items, scores = weighed.recommend_with_scores(histories, 12, exclude)
    extended = weighed.generator  # the catalogue with the added items: its tree has their nodes
    root = extended.tree.children(0, torch.zeros(len(histories), dtype=torch.long))
    first_logits = extended.model.level_logits(0, extended.last_states(histories), root).masked_fill(root < 0, -np.inf)
    first_log_p = first_logits.log_softmax(-1).detach().numpy()
    for row, history in enumerate(histories):
        assert_mixture(items, scores, row, share, sharpness * added_cos(history) + first_log_p[row][ids.codes[n:, 0]])
    with pytest.raises(ValueError, match="new_item_prefix_levels must be in"):
        mixed.replace(new_item_prefix_levels=4)
    # gated: each user's share is logit(share) + gate x (log of the added items' part of a softmax of
    # g x cos over the items the user may be shown - log of their part of those items)
    gate, g = 1.5, 6.0
    gated = mixed.replace(new_item_gate=gate, new_item_gate_sharpness=g)
    assert gated.info["content_prior"]["new_item_gate"] == gate
    items, scores = gated.recommend_with_scores(histories, 12, exclude)
    for row, history in enumerate(histories):
        shown = np.ones(n_all, bool)
        shown[history] = False
        weights = np.exp(g * (unit @ unit[history[-1]])) * shown
        log_ratio = np.log(weights[n:].sum() / weights.sum()) - np.log(shown[n:].sum() / shown.sum())
        user_share = 1 / (1 + np.exp(-(np.log(share / (1 - share)) + gate * log_ratio)))
        assert_mixture(items, scores, row, user_share, sharpness * added_cos(history))
    # at gate sharpness 0 the neighbourhood is the catalogue: the shared share, the ungated ranking
    flat = mixed.replace(new_item_gate=gate, new_item_gate_sharpness=0.0)
    np.testing.assert_array_equal(flat.recommend(histories, 12, exclude), mixed.recommend(histories, 12, exclude))
    # every added item excluded: none ranked, no nan
    all_added = [np.arange(n, n_all)]
    none_left, none_scores = gated.recommend_with_scores(histories[:1], 12, all_added)
    assert (none_left[0] < n).all() and not np.isnan(none_scores).any()
    with pytest.raises(ValueError, match="new_item_gate must be >= 0"):
        mixed.replace(new_item_gate=-1.0)
    # a trained catalogue is ranked as without it
    alone = ContentPriorRecommender(generator, content, 3.0, n, new_item_share=share)
    np.testing.assert_array_equal(alone.recommend(histories[:3], 8, exclude[:3]),
                                  ContentPriorRecommender(generator, content, 3.0, n).recommend(histories[:3], 8, exclude[:3]))
    with pytest.raises(ValueError, match="not a ranking setting of the content prior: candidates"):
        plain.replace(candidates=3)
    with pytest.raises(ValueError, match="new_item_share must be in"):
        ContentPriorRecommender(generator, content, 3.0, 5, new_item_share=1.0)


def test_the_mixture_ranks_by_a_mixture_of_the_generator_and_the_content_neighbours(generator):
    content, unit, counts, histories, exclude = three_users(generator.n_items)
    lam, beta = 0.3, 8.0
    prior = ContentPriorRecommender(generator, content, 2.0, generator.n_items, None, counts, cold_weight=1.0,
                                    mixture=lam, mixture_sharpness=beta)
    assert prior.info["content_prior"]["mixture"] == lam
    items, scores = prior.recommend_with_scores(histories, 8, exclude)
    exact = generator.model.sequence_log_probs(generator.last_states(histories), torch.arange(generator.n_items),
                                               generator.tree).detach().numpy()
    for row, history in enumerate(histories):
        cos = unit @ unit[history[-1]]
        keep = np.setdiff1d(np.arange(generator.n_items), history)  # every item is a candidate here

        def softmax(x):
            e = np.exp(x[keep] - x[keep].max())
            return e / e.sum()

        product = exact[row] + (2.0 + 1.0 * 5 / (5 + counts)) * cos
        mixed = np.full(generator.n_items, -np.inf)
        mixed[keep] = np.log((1 - lam) * softmax(product) + lam * softmax(beta * cos))
        order = np.argsort(-mixed, kind="stable")[:8]
        assert items[row].tolist() == order.tolist()
        np.testing.assert_allclose(scores[row], mixed[order], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="mixture must be in"):
        ContentPriorRecommender(generator, content, 2.0, 5, mixture=1.0)
