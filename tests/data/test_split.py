"""Chronological leave-one-out split: last = test, second-to-last = valid, histories capped."""

from __future__ import annotations

import numpy as np
import pytest

from cemg.data.dataset import InteractionDataset, ItemTable
from cemg.data.split import leave_one_out


def dataset(sequences: list[list[int]], n_items: int) -> InteractionDataset:
    return InteractionDataset(
        "toy",
        [f"u{i}" for i in range(len(sequences))],
        [np.asarray(s, np.int64) for s in sequences],
        ItemTable(keys=[str(i) for i in range(n_items)]),
    )


def test_last_is_test_second_to_last_is_valid():
    split = leave_one_out(dataset([[0, 1, 2, 3, 4], [5, 6, 7]], 8))
    assert [t.tolist() for t in split.train] == [[0, 1, 2], [5]]
    assert split.valid.users.tolist() == [0, 1] and split.valid.targets.tolist() == [3, 6]
    assert [h.tolist() for h in split.valid.histories] == [[0, 1, 2], [5]]
    assert split.test.targets.tolist() == [4, 7]
    assert [h.tolist() for h in split.test.histories] == [[0, 1, 2, 3], [5, 6]]


def test_histories_keep_only_the_last_max_history_items():
    split = leave_one_out(dataset([list(range(10))], 10), max_history=3)
    assert split.max_history == 3
    assert split.test.histories[0].tolist() == [6, 7, 8] and split.test.targets.tolist() == [9]
    assert split.valid.histories[0].tolist() == [5, 6, 7] and split.valid.targets.tolist() == [8]
    assert split.train[0].tolist() == list(range(8))  # training sequences are not capped


def test_short_users_only_train():
    split = leave_one_out(dataset([[0, 1], [2, 3, 0]], 4))
    assert split.train[0].tolist() == [0, 1] and split.train[1].tolist() == [2]
    assert split.test.users.tolist() == [1] and len(split.valid) == 1


def test_train_item_counts_and_parts():
    split = leave_one_out(dataset([[0, 1, 1, 2, 3], [1, 0, 2]], 5))
    assert split.train_item_counts().tolist() == [1, 3, 0, 0, 0]
    assert split.part("valid") is split.valid and split.part("test") is split.test
    with pytest.raises(ValueError, match="unknown split part"):
        split.part("train")


def test_no_target_leaks_into_its_history():
    rng = np.random.default_rng(0)
    seqs = [rng.permutation(30)[: rng.integers(3, 30)].tolist() for _ in range(20)]
    split = leave_one_out(dataset(seqs, 30), max_history=5)
    for part, offset in ((split.valid, 2), (split.test, 1)):
        for user, history, target in zip(part.users, part.histories, part.targets):
            seq = seqs[user]
            assert target == seq[len(seq) - offset]
            assert history.tolist() == seq[: len(seq) - offset][-5:]
