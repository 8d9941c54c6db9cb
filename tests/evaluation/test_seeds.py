"""Spread over seeds and the comparison of two configurations, on per-user ranks built in the test."""

from __future__ import annotations

import numpy as np
import pytest

from cemg.evaluation.metrics import NOT_RANKED, summarize
from cemg.evaluation.protocol import EvalResult
from cemg.evaluation.seeds import compare_seeds, spread

KS = [1, 10]


def result(ranks, users=None, cold=None, part="test") -> EvalResult:
    ranks = np.asarray(ranks, dtype=np.int64)
    users = np.arange(len(ranks)) if users is None else np.asarray(users)
    cold_mask = np.zeros(len(ranks), bool) if cold is None else np.asarray(cold)
    return EvalResult(part, summarize(ranks, KS), summarize(ranks[cold_mask], KS), len(ranks), int(cold_mask.sum()),
                      users, ranks, 0.0, cold=None if cold is None else cold_mask)


def runs(rank_lists: dict[int, list[int]], **kw) -> dict[int, dict[str, EvalResult]]:
    return {seed: {"test": result(ranks, **kw)} for seed, ranks in rank_lists.items()}


def test_spread_gives_mean_sample_std_and_every_seed():
    # HR@1 per seed: 2/4, 1/4, 3/4 -> mean 0.5, sample std 0.25
    per_seed = runs({1: [0, 0, 5, NOT_RANKED], 2: [0, 3, 5, 9], 3: [0, 0, 0, 9]},
                    cold=[True, False, False, True])
    out = spread(per_seed)["test"]
    hr1 = out["all"]["HR@1"]
    assert hr1["mean"] == pytest.approx(0.5) and hr1["std"] == pytest.approx(0.25)
    assert hr1["per_seed"] == {"1": 0.5, "2": 0.25, "3": 0.75}
    # cold users are 0 and 3: HR@10 per seed 1/2 (one unranked), 1, 1
    assert out["cold_start"]["HR@10"]["per_seed"] == {"1": 0.5, "2": 1.0, "3": 1.0}
    assert out["n_users"] == 4 and out["n_cold_start_users"] == 2


def test_one_seed_has_no_std():
    assert spread(runs({7: [0, 1, 2]}))["test"]["all"]["NDCG@10"]["std"] is None


def _better_and_worse(n_seeds: int, rng: np.random.Generator, n_users: int = 400):
    # B hits at rank 0 for 40% of users more than A does, in every seed: a real difference.
    a, b = {}, {}
    for seed in range(n_seeds):
        base = rng.integers(0, 30, n_users)
        a[seed] = np.where(rng.random(n_users) < 0.2, 0, base)
        b[seed] = np.where(rng.random(n_users) < 0.6, 0, base)
    return runs(a), runs(b)


def test_a_consistent_difference_is_found_across_seeds_and_users():
    a, b = _better_and_worse(5, np.random.default_rng(0))
    c = compare_seeds(a, b, "HR@1")
    assert c.significant and c.label == "B better" and c.difference < -0.3
    assert c.seed_test["kind"] == "paired t-test over seeds" and c.seed_test["n_seeds"] == 5
    assert c.seed_test["pvalue"] < 0.001 and c.user_test["t_pvalue"] < 0.001
    assert c.verdict.startswith("B is better than A on test HR@1")
    assert c.to_dict()["per_seed_a"].keys() == {"0", "1", "2", "3", "4"}


def test_identical_runs_are_within_noise_and_three_seeds_are_called_few():
    a, _ = _better_and_worse(3, np.random.default_rng(1))
    c = compare_seeds(a, a, "NDCG@10")
    assert not c.significant and c.label == "within noise"
    assert c.seed_test["pvalue"] == 1.0 and c.user_test["t_pvalue"] == 1.0
    assert c.verdict.startswith("Within noise")
    assert any("only 3 seeds" in note and "not shown to be equal" in note for note in c.notes)


def test_a_seed_level_fluke_is_within_noise_even_when_users_disagree():
    # A differs from B by chance in opposite directions per seed: across users each seed alone looks
    # significant, across seeds the mean difference is not.
    rng = np.random.default_rng(2)
    base = {s: rng.integers(0, 30, 500) for s in range(4)}
    shift = {0: 0.5, 1: 0.1, 2: 0.45, 3: 0.05}
    a = runs({s: np.where(rng.random(500) < shift[s], 0, base[s]) for s in range(4)})
    b = runs({s: np.where(rng.random(500) < 0.275, 0, base[s]) for s in range(4)})
    c = compare_seeds(a, b, "HR@1")
    assert not c.significant and c.seed_test["pvalue"] > 0.05
    assert any("smaller than one standard deviation" in note for note in c.notes)


def test_one_seed_per_run_is_tested_across_users_only_and_says_so():
    a, b = _better_and_worse(1, np.random.default_rng(3))
    c = compare_seeds(a, b, "HR@1")
    assert c.seed_test is None and c.user_test is not None and c.significant
    assert "Untested across seeds" in c.verdict
    assert any("at least 2 seeds" in note for note in c.notes)


def test_runs_without_common_seeds_are_compared_unpaired():
    a, b = _better_and_worse(3, np.random.default_rng(4))
    b = {seed + 10: r for seed, r in b.items()}
    c = compare_seeds(a, b, "HR@1")
    assert c.seed_test["kind"].startswith("Welch") and c.significant


def test_users_are_paired_by_id_not_by_position():
    rng = np.random.default_rng(5)
    a_ranks = rng.integers(0, 20, 50)
    b_ranks = np.where(rng.random(50) < 0.5, 0, a_ranks)
    order = rng.permutation(50)
    a = {1: {"test": result(a_ranks)}}
    b = {1: {"test": result(b_ranks)}}
    b_shuffled = {1: {"test": result(b_ranks[order], users=np.arange(50)[order])}}
    assert compare_seeds(a, b, "NDCG@10").user_test == compare_seeds(a, b_shuffled, "NDCG@10").user_test


def test_the_cold_subset_needs_per_user_flags():
    flags = [True, False] * 20
    a = runs({1: list(range(40)), 2: list(range(3, 43))}, cold=flags)
    b = runs({1: [0] * 40, 2: [1] * 20 + [30] * 20}, cold=flags)
    c = compare_seeds(a, b, "HR@10", subset="cold_start")
    assert c.user_test["n_users"] == 20
    old = runs({1: list(range(40)), 2: list(range(40))})  # saved before the flags were kept
    c = compare_seeds(old, old, "HR@10", subset="cold_start")
    assert c.user_test is None and any("older version" in note for note in c.notes)


def test_unknown_metric_or_part_is_named():
    a = runs({1: [0, 1]})
    with pytest.raises(ValueError, match="no metric 'HR@20'"):
        compare_seeds(a, a, "HR@20")
    with pytest.raises(ValueError, match="no 'valid' results"):
        compare_seeds(a, a, "HR@1", part="valid")


def test_seeds_that_keep_metrics_only_count_across_seeds_not_users():
    from cemg.evaluation.seeds import NO_PER_USER

    a, b = _better_and_worse(3, np.random.default_rng(3))
    full = compare_seeds(a, b, "HR@1")
    bare = a[2]["test"]
    a[2]["test"] = EvalResult("test", bare.metrics, bare.cold_start, bare.n_users, bare.n_cold,
                              np.empty(0, np.int64), np.empty(0, np.int64), 0.0, extra={NO_PER_USER: True})
    c = compare_seeds(a, b, "HR@1")
    assert c.seed_test == full.seed_test and c.difference == full.difference and c.significant
    # across users: only the seeds both runs hold ranks for, each side averaged over the same seeds
    assert c.user_test == compare_seeds({s: a[s] for s in (0, 1)}, {s: b[s] for s in (0, 1)}, "HR@1").user_test
    assert any("uses seeds [0, 1] only: seeds [2] of A keep their metrics only" in note for note in c.notes)
    # one seed with ranks on each side, but not the same seed: no test across users
    lone = compare_seeds({2: a[2]}, {1: b[1]}, "HR@1")
    assert lone.user_test is None and any("no other seed is common" in note for note in lone.notes)
