import math

import numpy as np
import pytest

from cemg.evaluation.metrics import NOT_RANKED, hit_rate, ndcg, per_user_metrics, summarize, target_ranks


def test_target_ranks_finds_zero_based_position_or_not_ranked():
    topk = np.array([[3, 1, 2], [5, 6, 7], [9, 4, -1], [-1, -1, -1]])
    targets = np.array([1, 4, 9, 0])
    ranks = target_ranks(topk, targets)
    assert ranks.tolist() == [1, NOT_RANKED, 0, NOT_RANKED]
    assert ranks.dtype == np.int64


def test_target_ranks_uses_first_occurrence():
    assert target_ranks(np.array([[8, 2, 2]]), np.array([2])).tolist() == [1]


def test_hit_rate_counts_ranks_strictly_below_k():
    ranks = np.array([0, 4, 5, 9, NOT_RANKED])
    assert hit_rate(ranks, 5).tolist() == [1, 1, 0, 0, 0]
    assert hit_rate(ranks, 10).tolist() == [1, 1, 1, 1, 0]


def test_ndcg_is_inverse_log2_of_rank_plus_two_inside_k():
    ranks = np.array([0, 1, 4, 5, NOT_RANKED])
    got = ndcg(ranks, 5)
    assert got == pytest.approx([1.0, 1 / math.log2(3), 1 / math.log2(6), 0.0, 0.0])
    assert ndcg(ranks, 10)[3] == pytest.approx(1 / math.log2(7))


def test_summarize_averages_over_users_by_hand():
    ranks = np.array([0, 2, 7, NOT_RANKED])
    got = summarize(ranks, [5, 10])
    assert got["HR@5"] == pytest.approx(2 / 4)
    assert got["HR@10"] == pytest.approx(3 / 4)
    assert got["NDCG@5"] == pytest.approx((1 + 0.5) / 4)  # rank 2 -> 1/log2(4) = 0.5
    assert got["NDCG@10"] == pytest.approx((1 + 0.5 + 1 / math.log2(9)) / 4)
    assert list(per_user_metrics(ranks, [5])) == ["HR@5", "NDCG@5"]


def test_summarize_of_no_users_is_zero():
    assert summarize(np.zeros(0, np.int64), [10]) == {"HR@10": 0.0, "NDCG@10": 0.0}
