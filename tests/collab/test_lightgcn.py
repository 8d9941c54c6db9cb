"""LightGCN collaborative encoder: the graph holds exactly the training edges, and training learns
user-item structure that popularity cannot see."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from cemg.collab.artifact import CollabEmbeddings
from cemg.collab.lightgcn import build_graph, normalized_adjacency, train_lightgcn
from cemg.config import CollabConfig
from cemg.data.dataset import InteractionDataset, ItemTable
from cemg.data.errors import DataError
from cemg.data.split import EvalExamples, SplitDataset, leave_one_out


def _dataset(sequences: list[list[int]], n_items: int) -> InteractionDataset:
    return InteractionDataset(
        name="tiny",
        user_keys=[f"u{u}" for u in range(len(sequences))],
        sequences=[np.asarray(s, dtype=np.int64) for s in sequences],
        items=ItemTable(keys=[f"i{i}" for i in range(n_items)]),
    )


def _blocks(seed: int = 0) -> InteractionDataset:
    """Two user groups, each buying only from its own item block. Group B is larger, so its items
    top the popularity list and popularity is blind to what group A users want."""
    rng = np.random.default_rng(seed)
    block_a, block_b = np.arange(0, 10), np.arange(10, 20)
    sequences = [rng.choice(block_a, 6, replace=False).tolist() for _ in range(16)]
    sequences += [rng.choice(block_b, 6, replace=False).tolist() for _ in range(32)]
    return _dataset(sequences, 20)


FAST = CollabConfig(dim=16, layers=2, lr=0.05, weight_decay=1e-4, batch_size=64, epochs=60,
                    patience=100, eval_every=5, valid_k=3)


def test_graph_holds_exactly_the_training_edges():
    # User 0's validation (8) and test (9) items appear in no training sequence at all.
    split = leave_one_out(_dataset([[0, 1, 2, 8, 9], [1, 2, 3, 4], [0, 3, 4, 5, 6, 7]], 10))
    graph = build_graph(split)

    assert graph.n_users == 3 and graph.n_items == 10 and graph.num_nodes == 13
    pairs = set(zip(graph.users.tolist(), graph.items.tolist()))
    assert pairs == {(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 0), (2, 3), (2, 4), (2, 5)}
    assert (0, 8) not in pairs and (0, 9) not in pairs and (1, 3) not in pairs and (1, 4) not in pairs

    edges = graph.edge_index
    assert edges.shape == (2, 2 * len(pairs))
    directed = set(zip(edges[0].tolist(), edges[1].tolist()))
    for u, i in pairs:
        assert (u, i + 3) in directed and (i + 3, u) in directed
    # Items seen only in validation/test (6, 7, 8, 9) are isolated nodes.
    touched = set(edges.flatten().tolist())
    assert not {3 + 6, 3 + 7, 3 + 8, 3 + 9} & touched


def test_repeated_interaction_is_one_edge_and_adjacency_is_symmetric():
    split = leave_one_out(_dataset([[0, 1, 0, 1, 2, 3], [1, 2, 3, 0]], 4))
    graph = build_graph(split)
    assert sorted(zip(graph.users.tolist(), graph.items.tolist())) == [(0, 0), (0, 1), (1, 1), (1, 2)]

    adj = normalized_adjacency(graph).to_dense()
    assert torch.allclose(adj, adj.T)
    # D^-1/2 A D^-1/2: user 0 (degree 2) to item 0 (degree 1).
    assert adj[0, graph.n_users + 0].item() == pytest.approx(1 / np.sqrt(2 * 1))


def test_item_outside_catalogue_is_a_clear_error():
    split = leave_one_out(_dataset([[0, 1, 2, 3]], 4))
    bad = replace(split, train=[np.array([0, 7])])
    with pytest.raises(DataError, match="user 0 has item id 7"):
        build_graph(bad)


def test_shapes_determinism_and_save_load(tmp_path):
    split = leave_one_out(_blocks())
    cfg = FAST.model_copy(update={"epochs": 10})
    first = train_lightgcn(split, cfg, seed=3)
    again = train_lightgcn(split, cfg, seed=3)
    other = train_lightgcn(split, cfg, seed=4)

    assert first.users.shape == (48, 16) and first.items.shape == (20, 16)
    assert first.users.dtype == np.float32 and first.items.dtype == np.float32
    assert np.array_equal(first.users, again.users) and np.array_equal(first.items, again.items)
    assert not np.allclose(first.items, other.items)
    assert first.info["n_edges"] == sum(len(s) for s in split.train)
    assert [p["epoch"] for p in first.info["curve"] if "valid_recall" in p] == [5, 10]

    first.save(tmp_path / "collab")
    loaded = CollabEmbeddings.load(tmp_path / "collab")
    assert np.array_equal(loaded.items, first.items)
    assert loaded.info["best_epoch"] == first.info["best_epoch"]


def _recall(scores: np.ndarray, split: SplitDataset, k: int) -> float:
    """Reference Recall@k written independently of the module's batched evaluator."""
    hits = 0
    for row, user in enumerate(split.valid.users):
        s = scores[row].astype(np.float64).copy()
        s[split.train[user]] = -np.inf
        hits += split.valid.targets[row] in np.argsort(-s, kind="stable")[:k]
    return hits / len(split.valid)


def test_block_structure_beats_popularity():
    split = leave_one_out(_blocks())
    result = train_lightgcn(split, FAST, seed=0)
    info = result.info

    scores = result.users[split.valid.users] @ result.items.T
    assert _recall(scores, split, 3) == pytest.approx(info["best_valid_recall"])
    counts = split.train_item_counts()
    pop_scores = np.tile(counts - np.arange(20) / 100.0, (len(split.valid), 1))
    assert _recall(pop_scores, split, 3) == pytest.approx(info["pop_valid_recall"])

    # Popularity serves group A nothing from its block; LightGCN has to.
    assert info["best_valid_recall"] >= info["pop_valid_recall"] + 0.15
    group_a = split.valid.users < 16
    assert _recall(scores[group_a], _only(split, group_a), 3) > 0.3
    # Each user's nearest items are those of its own block.
    top = np.argsort(-scores, axis=1)[:, :5]
    assert (top[group_a] < 10).all() and (top[~group_a] >= 10).all()


def _only(split: SplitDataset, keep: np.ndarray) -> SplitDataset:
    valid = split.valid
    histories = [h for h, k in zip(valid.histories, keep) if k]
    return replace(split, valid=EvalExamples(valid.users[keep], histories, valid.targets[keep]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_trains_on_cuda():
    split = leave_one_out(_blocks())
    result = train_lightgcn(split, FAST, seed=0, device="cuda")
    assert result.info["device"] == "cuda"
    assert result.info["peak_cuda_mb"] > 0
    assert result.users.shape == (48, 16) and result.items.dtype == np.float32
    assert result.info["best_valid_recall"] >= result.info["pop_valid_recall"] + 0.15
