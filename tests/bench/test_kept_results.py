"""bench/kept_results.py: finished seeds kept in the repository are read back, unchanged, once their
run folders are gone, and an unchanged result is not rewritten."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cemg.evaluation.protocol import EvalResult

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def kept_results(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCH))
    import kept_results

    monkeypatch.setattr(kept_results, "KEPT", tmp_path / "kept")
    return kept_results


def _result(part: str, ranks: list[int], seconds: float = 1.0) -> EvalResult:
    ranks = np.asarray(ranks, dtype=np.int64)
    hits = float(np.mean((ranks >= 0) & (ranks < 10)))
    return EvalResult(part=part, metrics={"HR@10": hits}, cold_start={"HR@10": 0.0}, n_users=len(ranks), n_cold=1,
                      users=np.arange(len(ranks)), ranks=ranks, seconds=seconds,
                      cold=np.array([True] + [False] * (len(ranks) - 1)))


def test_a_seed_without_its_run_is_read_back_from_the_kept_copy(kept_results):
    seed42 = {"valid": _result("valid", [0, 3, -1, 12]), "test": _result("test", [1, -1, -1, 4])}
    got = kept_results.with_kept("toys", "semantic", (42, 43), {42: seed42}, "cemg run ...", {42: "abc"})
    assert list(got) == [42]
    source = json.loads((kept_results.kept_folder("toys", "semantic", 42) / "source.json").read_text())
    assert source == {"command": "cemg run ...", "seed": 42, "evaluation_inputs_hash": "abc"}

    seed43 = {"valid": _result("valid", [5, 5, 5, 5]), "test": _result("test", [-1, 2, 2, -1])}
    got = kept_results.with_kept("toys", "semantic", (42, 43), {43: seed43}, "cemg run ...")
    assert sorted(got) == [42, 43]
    back = got[42]["test"]
    assert back.metrics == seed42["test"].metrics and np.array_equal(back.ranks, seed42["test"].ranks)
    assert np.array_equal(back.cold, seed42["test"].cold) and back.part == "test"


def test_an_unchanged_result_is_not_rewritten_and_a_changed_one_is(kept_results):
    first = {"valid": _result("valid", [0, 1]), "test": _result("test", [1, -1])}
    kept_results.keep("toys", "no_text", {42: first}, "cmd", {})
    summary = kept_results.kept_folder("toys", "no_text", 42) / "test.json"
    before = summary.read_bytes()
    # the same ranks, timed differently: kept as it was
    kept_results.keep("toys", "no_text", {42: {"valid": _result("valid", [0, 1], 9.0),
                                                "test": _result("test", [1, -1], 9.0)}}, "cmd", {})
    assert summary.read_bytes() == before
    kept_results.keep("toys", "no_text", {42: {"valid": _result("valid", [0, 1]),
                                                "test": _result("test", [-1, -1])}}, "cmd", {})
    assert kept_results.kept("toys", "no_text", [42])[42]["test"].metrics["HR@10"] == 0.0


def test_seeds_of_an_earlier_table_come_back_as_metrics_only(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import dataset_tables
    from cemg.evaluation.seeds import NO_PER_USER

    def stats(values):
        return {k: {"mean": float(np.mean(values)), "std": None, "per_seed": values} for k in dataset_tables.KS}

    row = {"command": "cemg run A", "seeds": [42, 43], "n_test_users": 100, "n_cold_start_users": 7,
           **{f"{part}_{subset}": stats([0.1, 0.2] if part == "test" else [0.3, 0.4])
              for part in ("valid", "test") for subset in ("all", "cold_start")}}
    got = dataset_tables.seeds_from_earlier(row, "cemg run A", [43, 44])
    assert list(got) == [43]
    assert got[43]["test"].metrics["NDCG@10"] == 0.2 and got[43]["valid"].cold_start["HR@5"] == 0.4
    assert got[43]["test"].extra[NO_PER_USER] and got[43]["test"].n_cold == 7
    assert dataset_tables.seeds_from_earlier(row, "cemg run B", [43]) == {}  # another command: not the same row
    # a row whose command has since changed (an override made a changed default explicit) keeps them
    assert list(dataset_tables.seeds_from_earlier(row, "cemg run B", [43], same_as=("cemg run A",))) == [43]


def test_the_fusion_reference_is_the_table_row_with_the_same_overrides(monkeypatch, tmp_path):
    """bench/fusion_variants.py borrows the attention's seeds from the table row run with the same
    --set overrides, whatever its run_dir, and from no other row."""
    monkeypatch.syspath_prepend(str(BENCH))
    import dataset_tables
    import fusion_variants

    def stats(value):
        return {k: {"mean": value, "std": None, "per_seed": [value]} for k in dataset_tables.KS}

    def row(command, value):
        return {"command": command, "seeds": [42], "n_test_users": 10, "n_cold_start_users": 2,
                **{f"{part}_{subset}": stats(value) for part in ("valid", "test") for subset in ("all", "cold_start")}}

    config = str(BENCH.parent / "configs" / "toys.yaml")  # read for the default run_dir
    base = f"cemg run --config {config} --seeds 42 --quiet"
    results = tmp_path / "bench" / "results"
    results.mkdir(parents=True)
    (results / "toys_tables.json").write_text(json.dumps({"rows": {
        "semantic": row(base, 0.1),
        "semantic_no_cold": row(base + " --set generator.content_prior.cold_weight=0 --set run_dir=runs/toys-no-cold", 0.2),
    }}))
    monkeypatch.setattr(fusion_variants, "ROOT", tmp_path)
    monkeypatch.setattr(fusion_variants, "kept", lambda *a: {})

    got, command = fusion_variants.reference_from_table("toys", config, [42], ["generator.content_prior.cold_weight=0"])
    assert command.endswith("--set run_dir=runs/toys-no-cold") and got[42]["test"].metrics["HR@10"] == 0.2
    got, command = fusion_variants.reference_from_table("toys", config, [42], [])
    assert command == base and got[42]["test"].metrics["HR@10"] == 0.1
    assert fusion_variants.reference_from_table("toys", config, [42], ["tokenizer.use_image=false"]) == ({}, None)
