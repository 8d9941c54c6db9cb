import numpy as np
import pytest
import torch

from cemg.generator.search import Exclusion, PrefixTree
from cemg.generator.t5 import DECODE_MODES, build_backbone, constrained_beam_search

SIZES = [4, 3, 5]
TINY = dict(d_model=32, num_layers=2, num_decoder_layers=2, num_heads=2, d_kv=16, d_ff=64)


def random_codes(n_items, sizes, seed):
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(k) for k in sizes], indexing="ij"), -1).reshape(-1, len(sizes))
    return grid[rng.choice(len(grid), n_items, replace=False)]


@pytest.fixture(scope="module")
def setup():
    codes = random_codes(30, SIZES, seed=0)
    model, vocab = build_backbone("t5-tiny", SIZES, seed=3, **TINY)
    model.eval()
    rng = np.random.default_rng(1)
    histories = [rng.integers(0, 30, size=n) for n in (3, 0, 7, 20, 1)]
    ids, mask = vocab.encode_histories(histories, vocab.item_tokens(codes), 20)
    return codes, model, vocab, torch.from_numpy(ids), torch.from_numpy(mask)


def brute_force_scores(model, vocab, codes, ids, mask):
    """(users, items) log-prob of every item's full code sequence, by teacher forcing."""
    tokens = torch.from_numpy(vocab.item_tokens(codes))
    n_items = len(codes)
    decoder_in = torch.cat([torch.full((n_items, 1), vocab.decoder_start_id), tokens[:, :-1]], 1)
    out = []
    with torch.no_grad():
        for u in range(len(ids)):
            logits = model(input_ids=ids[u : u + 1].expand(n_items, -1),
                           attention_mask=mask[u : u + 1].expand(n_items, -1),
                           decoder_input_ids=decoder_in).logits  # (items, L, V)
            score = torch.zeros(n_items)
            for level in range(codes.shape[1]):
                lo, hi = vocab.level_range(level)
                logp = torch.log_softmax(logits[:, level, lo:hi], -1)
                score += logp[torch.arange(n_items), torch.from_numpy(codes[:, level])]
            out.append(score)
    return torch.stack(out)


def test_prefix_tree_children_are_exactly_the_catalogue_prefixes():
    codes = random_codes(30, SIZES, seed=0)
    tree = PrefixTree(codes, SIZES)
    # walk every item down the tree with the tensor tables and land on that item's leaf
    nodes = torch.zeros(len(codes), dtype=torch.long)
    for depth in range(len(SIZES)):
        table = tree.children(depth, nodes)
        allowed = {(tuple(c[:depth]), int(code)) for c in codes for code in [c[depth]]}
        for row, node in enumerate(nodes):
            prefix = tuple(codes[row, :depth])
            expected = {code for p, code in allowed if p == prefix}
            assert set(torch.nonzero(table[row] >= 0).squeeze(1).tolist()) == expected
        nodes = table[torch.arange(len(codes)), torch.from_numpy(codes[:, depth])]
    assert tree.leaf_item[nodes].tolist() == list(range(len(codes)))
    assert tree.n_nodes[-1] == 30 and tree.subtree_size[0].tolist() == [30]


def test_prefix_tree_size_grows_with_nodes_not_with_nodes_times_codes():
    codes = random_codes(30, SIZES, seed=0)
    tree = PrefixTree(codes, SIZES)
    n, levels = codes.shape
    # int64 tables: child_start (nodes + 1 per inner depth), child_code (root + all non-root nodes),
    # subtree_size (all nodes), ancestor (one per item and depth), leaf_item (one per item)
    entries = (sum(tree.n_nodes[:-1]) + levels) + (1 + sum(tree.n_nodes[1:])) + sum(tree.n_nodes) \
        + (levels + 1) * n + n
    assert tree.nbytes == 8 * entries


def test_prefix_tree_rejects_duplicate_codes():
    with pytest.raises(ValueError, match="share a code sequence"):
        PrefixTree(np.array([[0, 1], [0, 1]]), [2, 2])


@pytest.mark.parametrize("mode", DECODE_MODES)
def test_full_beam_equals_brute_force_over_all_items(setup, mode):
    codes, model, vocab, ids, mask = setup
    tree = PrefixTree(codes, SIZES)
    items, scores = constrained_beam_search(model, vocab, tree, ids, mask, beams=30, mode=mode)
    expected = brute_force_scores(model, vocab, codes, ids, mask)
    order = torch.argsort(expected, dim=1, descending=True)
    assert torch.equal(items, order)
    torch.testing.assert_close(scores, expected.gather(1, order), atol=1e-5, rtol=0)
    # more beams than items: the extra slots are padding
    wide, wide_scores = constrained_beam_search(model, vocab, tree, ids, mask, beams=40, mode=mode)
    assert torch.equal(wide[:, :30], order) and (wide[:, 30:] == -1).all()
    assert torch.isinf(wide_scores[:, 30:]).all()


def test_narrow_beam_returns_only_real_distinct_items(setup):
    codes, model, vocab, ids, mask = setup
    for seed in range(3):  # several random models and catalogues
        cat = random_codes(25, SIZES, seed=seed + 10)
        m, _ = build_backbone("t5-tiny", SIZES, seed=seed, **TINY)
        m.eval()
        items, scores = constrained_beam_search(m, vocab, PrefixTree(cat, SIZES), ids, mask, beams=6)
        for mode in ("cache", "recompute"):  # the decoder strategies prune identically
            other, _ = constrained_beam_search(m, vocab, PrefixTree(cat, SIZES), ids, mask, beams=6, mode=mode)
            assert torch.equal(other, items)
        assert items.shape == (len(ids), 6)
        assert ((items >= 0) & (items < 25)).all()
        assert all(len(set(row)) == 6 for row in items.tolist())
        assert (scores[:, :-1] >= scores[:, 1:]).all()
        # a beam's score is the item's own sequence log-prob
        brute = brute_force_scores(m, vocab, cat, ids, mask)
        torch.testing.assert_close(scores, brute.gather(1, items), atol=1e-5, rtol=0)


def test_exclusion_removes_items_and_still_fills_the_list(setup):
    codes, model, vocab, ids, mask = setup
    tree = PrefixTree(codes, SIZES)
    expected = brute_force_scores(model, vocab, codes, ids, mask)
    # user 0 excludes its 12 best items (with a repeat), user 2 every item under one level-0 code,
    # user 4 everything, the others nothing
    best12 = torch.argsort(expected[0], descending=True)[:12].numpy()
    subtree = np.flatnonzero(codes[:, 0] == codes[int(torch.argmax(expected[2])), 0])
    exclude = [np.concatenate([best12, best12[:2]]), np.array([], np.int64), subtree,
               np.array([], np.int64), np.arange(30)]
    exclusion = Exclusion.build(tree, exclude, "cpu")
    for beams in (30, 10):
        items, scores = constrained_beam_search(model, vocab, tree, ids, mask, beams=beams, exclusion=exclusion)
        for u, banned in enumerate(exclude):
            got = [i for i in items[u].tolist() if i >= 0]
            assert not set(got) & set(banned.tolist())
            allowed = [i for i in torch.argsort(expected[u], descending=True).tolist() if i not in set(banned.tolist())]
            assert len(got) == min(beams, len(allowed))
            if beams == 30:  # exhaustive: exactly the brute-force ranking of the allowed items
                assert got == allowed
    items, _ = constrained_beam_search(model, vocab, tree, ids, mask, beams=10, exclusion=exclusion)
    assert (items[4] == -1).all()


def test_exclusion_rejects_unknown_items():
    tree = PrefixTree(random_codes(10, SIZES, seed=0), SIZES)
    with pytest.raises(ValueError, match="outside"):
        Exclusion.build(tree, [np.array([10])], "cpu")
