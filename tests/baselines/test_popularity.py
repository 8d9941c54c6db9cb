import numpy as np

from cemg.baselines import Popularity, train_baseline
from cemg.config import CEMGConfig
from cemg.data.dataset import InteractionDataset, ItemTable
from cemg.data.split import leave_one_out


def test_ranks_by_training_count_with_ties_to_lower_id():
    model = Popularity(np.array([2, 5, 0, 5, 1]))
    got = model.recommend([np.array([0]), np.array([], np.int64)], k=4)
    assert got.tolist() == [[1, 3, 0, 4], [1, 3, 0, 4]]


def test_exclude_is_respected_and_short_lists_are_padded():
    model = Popularity(np.array([2, 5, 0, 5, 1]))
    got = model.recommend([np.array([1]), np.array([3])], k=4, exclude=[np.array([1, 3]), np.array([0, 1, 2, 3])])
    assert got.tolist() == [[0, 4, 2, -1], [4, -1, -1, -1]]


def test_counts_come_from_the_training_part_only():
    # item 2 is every user's validation target and item 3 every test target: neither may count
    seqs = [np.array([0, 1, 2, 3]), np.array([1, 2, 3]), np.array([0, 1, 0, 2, 3])]
    dataset = InteractionDataset("t", ["a", "b", "c"], seqs, ItemTable(keys=list("wxyz")))
    model, report = train_baseline("pop", leave_one_out(dataset), CEMGConfig())
    assert report is None
    assert model.counts.tolist() == [3, 3, 0, 0]
    assert model.recommend([np.array([0])], k=4).tolist() == [[0, 1, 2, 3]]
