"""The protocol on a four-user dataset whose every rank is worked out by hand below."""

import json
import math

import numpy as np
import pytest

from cemg.config import EvalConfig
from cemg.data.dataset import InteractionDataset, ItemTable
from cemg.data.split import leave_one_out
from cemg.evaluation.metrics import NOT_RANKED
from cemg.evaluation.protocol import EvalResult, RunEvaluation, evaluate, paired_test, prior_items

# user 0: train [0 1 2], valid target 3, test target 4
# user 1: train [1],     valid target 2, test target 5
# user 2: [2 0] is too short to evaluate; it only trains
# user 3: train [3 0],   valid target 1, test target 5
SEQUENCES = [[0, 1, 2, 3, 4], [1, 2, 5], [2, 0], [3, 0, 1, 5]]
# training counts: item 0: 3, item 1: 2, item 2: 2, item 3: 1, items 4 and 5: 0


class AscendingIds:
    """Recommends items 0, 1, 2, ... in id order, skipping `exclude`; records what it was given."""

    def __init__(self, n_items: int):
        self.n_items = n_items
        self.calls: list[tuple[list, list | None]] = []

    def recommend(self, histories, k, exclude=None):
        self.calls.append(([h.tolist() for h in histories], None if exclude is None else [e.tolist() for e in exclude]))
        out = np.full((len(histories), k), -1, dtype=np.int64)
        for row in range(len(histories)):
            banned = set() if exclude is None else set(exclude[row].tolist())
            kept = [i for i in range(self.n_items) if i not in banned][:k]
            out[row, : len(kept)] = kept
        return out


@pytest.fixture
def split():
    dataset = InteractionDataset(
        "tiny", [f"u{i}" for i in range(4)], [np.array(s, np.int64) for s in SEQUENCES],
        ItemTable(keys=[f"i{i}" for i in range(6)]),
    )
    return leave_one_out(dataset, max_history=2)


def test_masking_removes_the_whole_prior_sequence(split):
    model = AscendingIds(6)
    result = evaluate(model, split, "test", EvalConfig(ks=[1, 5]))
    # u0 sees [4 5] -> target 4 at 0; u1 sees [0 3 4 5] -> 5 at 3; u3 sees [2 4 5] -> 5 at 2
    assert result.users.tolist() == [0, 1, 3]
    assert result.ranks.tolist() == [0, 3, 2]
    histories, exclude = model.calls[0]
    assert histories == [[2, 3], [1, 2], [0, 1]]  # capped at max_history = 2
    assert exclude == [[0, 1, 2, 3], [1, 2], [3, 0, 1]]  # uncapped
    assert result.metrics["HR@1"] == pytest.approx(1 / 3)
    assert result.metrics["NDCG@5"] == pytest.approx((1 + 1 / math.log2(5) + 1 / math.log2(4)) / 3)


def test_validation_never_masks_its_own_target(split):
    model = AscendingIds(6)
    result = evaluate(model, split, "valid", EvalConfig(ks=[5]))
    # u0 sees [3 4 5] -> 3 at 0; u1 sees [0 2 3 ...] -> 2 at 1; u3 sees [1 2 4 5] -> 1 at 0
    assert result.ranks.tolist() == [0, 1, 0]
    assert model.calls[0][1] == [[0, 1, 2], [1], [3, 0]]
    assert [p.tolist() for p in prior_items(split, "valid")] == [[0, 1, 2], [1], [3, 0]]


def test_without_masking_history_items_take_the_top_ranks(split):
    model = AscendingIds(6)
    result = evaluate(model, split, "test", EvalConfig(ks=[5], mask_history=False))
    assert model.calls[0][1] is None
    assert result.ranks.tolist() == [4, NOT_RANKED, NOT_RANKED]  # k = 5 lists are [0 1 2 3 4]


def test_cold_start_subset_uses_training_counts_inclusively(split):
    model = AscendingIds(6)
    # valid targets 3, 2, 1 have 1, 2, 2 training interactions
    only_rarest = evaluate(model, split, "valid", EvalConfig(ks=[5], cold_start_max_train=1))
    assert only_rarest.n_cold == 1
    assert only_rarest.cold_start["HR@5"] == 1.0 and only_rarest.cold_start["NDCG@5"] == 1.0
    with_two = evaluate(model, split, "valid", EvalConfig(ks=[5], cold_start_max_train=2))
    assert with_two.n_cold == 3
    assert with_two.cold_start == with_two.metrics
    none = evaluate(model, split, "valid", EvalConfig(ks=[5], cold_start_max_train=0))
    assert none.n_cold == 0 and none.cold_start == {"HR@5": 0.0, "NDCG@5": 0.0}


def test_batches_are_concatenated_in_user_order(split):
    whole = evaluate(AscendingIds(6), split, "test", EvalConfig(ks=[5]))
    model = AscendingIds(6)
    batched = evaluate(model, split, "test", EvalConfig(ks=[5]), batch_size=2)
    assert len(model.calls) == 2
    assert batched.ranks.tolist() == whole.ranks.tolist()


def test_per_user_ranks_round_trip_through_save(split, tmp_path):
    result = evaluate(AscendingIds(6), split, "test", EvalConfig(ks=[5], mask_history=False))
    result.save(tmp_path / "run", "test")
    saved = np.load(tmp_path / "run" / "test.per_user.npz")
    assert saved["users"].tolist() == [0, 1, 3]
    assert saved["ranks"].tolist() == [4, NOT_RANKED, NOT_RANKED]
    summary = json.loads((tmp_path / "run" / "test.json").read_text())
    assert summary["metrics"]["HR@5"] == pytest.approx(1 / 3)
    assert summary["n_users"] == 3 and summary["part"] == "test"


def test_cold_start_flags_are_saved_with_the_ranks_and_old_files_still_load(split, tmp_path):
    # valid targets 3, 2, 1 have 1, 2, 2 training interactions: only the first is cold at <= 1
    result = evaluate(AscendingIds(6), split, "valid", EvalConfig(ks=[5], cold_start_max_train=1))
    result.save(tmp_path, "valid")
    loaded = EvalResult.load(tmp_path, "valid")
    assert loaded.cold.tolist() == [True, False, False] and loaded.n_cold == 1
    np.savez(tmp_path / "valid.per_user.npz", users=result.users, ranks=result.ranks)  # as older versions wrote
    assert EvalResult.load(tmp_path, "valid").cold is None


def test_run_evaluation_names_the_folder_it_cannot_read(tmp_path):
    with pytest.raises(FileNotFoundError, match="no valid.json, test.json"):
        RunEvaluation.load(tmp_path)


def test_paired_test_by_hand():
    # NDCG@10: A = [1, 1]; B = [1/log2(4), 0] = [0.5, 0]; differences 0.5 and 1
    got = paired_test(np.array([0, 0]), np.array([2, NOT_RANKED]), "NDCG@10")
    assert got["mean_a"] == pytest.approx(1.0) and got["mean_b"] == pytest.approx(0.25)
    # t = mean / (sd / sqrt(2)) = 0.75 / 0.25 = 3 on 1 degree of freedom (a Cauchy distribution)
    assert got["t_pvalue"] == pytest.approx(1 - 2 * math.atan(3) / math.pi)
    # exact signed-rank test, both differences positive: 2 of the 4 sign patterns are as extreme
    assert got["wilcoxon_pvalue"] == pytest.approx(0.5)


def test_paired_test_of_identical_runs_and_mismatched_users():
    same = paired_test(np.array([0, 3, NOT_RANKED]), np.array([0, 3, NOT_RANKED]), "HR@5")
    assert same["t_pvalue"] == 1.0 and same["wilcoxon_pvalue"] == 1.0
    with pytest.raises(ValueError, match="same users"):
        paired_test(np.array([0, 1]), np.array([0]))
