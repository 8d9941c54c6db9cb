"""Seeds end to end on a copy of the session's tiny run: `run_seeds` shares data, features and
LightGCN and re-runs the tokenizer, generator and evaluation per seed; seeds.json; the API, the
report and `cemg compare` on the result.

The copy's own seed (the config's) is already built, so only the other seed trains here: a few
seconds on top of the shared tiny run."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cemg.api import Recommender, compare_runs
from cemg.cli import app
from cemg.evaluation.protocol import RunEvaluation
from cemg.pipeline import run_pipeline, run_seeds
from cemg.report import collect, write_report
from cemg.run_folder import SEEDED_STAGES, SHARED_STAGES, STAGES, RunFolder, read_seeds, seed_evaluations
from cemg.tokenizer.build import TokenizerArtifact


@pytest.fixture(scope="module")
def seeded(tiny_run, tmp_path_factory):
    """(run folder, config, its seed, the other seed, what run_seeds returned)."""
    from cemg.api import load_run_config

    root = tmp_path_factory.mktemp("seeded") / "run"
    shutil.copytree(tiny_run, root)
    cfg = load_run_config(root)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = run_seeds(cfg, [cfg.seed, cfg.seed + 1])
    finally:
        torch.set_num_threads(threads)
    return root, cfg, cfg.seed, cfg.seed + 1, result


def test_shared_stages_are_built_once_and_seeded_ones_per_seed(seeded):
    root, cfg, own, other, result = seeded
    # The config's seed is the tiny run itself: nothing to rebuild.
    assert sorted(result.runs[own].reused) == sorted(STAGES)
    assert result.runs[own].folder == RunFolder(root)
    # The other seed reuses the shared stages from the top of the run folder and trains the rest.
    assert set(result.runs[other].reused) == set(SHARED_STAGES)
    assert sorted((root / "seeds" / str(other)).iterdir()) == [root / "seeds" / str(other) / s for s in sorted(SEEDED_STAGES)]
    for stage in SHARED_STAGES:
        assert result.runs[own].hashes[stage] == result.runs[other].hashes[stage]
    for stage in SEEDED_STAGES:
        assert result.runs[own].hashes[stage] != result.runs[other].hashes[stage]
    # Re-seeded: the other seed's tokenizer starts from other weights.
    a = TokenizerArtifact.load(root / "tokenizer").model_state["state_dict"]
    b = TokenizerArtifact.load(root / "seeds" / str(other) / "tokenizer").model_state["state_dict"]
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())
    assert not (root / "checkpoints").exists()


def test_seeds_json_holds_mean_std_and_every_seed(seeded):
    root, _, own, other, result = seeded
    record = json.loads((root / "seeds.json").read_text())
    assert record == result.record and record["seeds"] == [own, other] and record["config_seed"] == own
    for part in ("valid", "test"):
        evaluations = {s: RunEvaluation.load(RunFolder.of_seed(root, s, own).stage("evaluation")).results[part]
                       for s in (own, other)}
        for subset, attr in (("all", "metrics"), ("cold_start", "cold_start")):
            for metric, entry in record["results"][part][subset].items():
                values = [getattr(evaluations[s], attr)[metric] for s in (own, other)]
                assert entry["per_seed"] == {str(own): values[0], str(other): values[1]}
                assert entry["mean"] == pytest.approx(np.mean(values))
                assert entry["std"] == pytest.approx(np.std(values, ddof=1))
        assert record["results"][part]["n_users"] == evaluations[own].n_users
    # Where each seed's per-user ranks are, relative to the run folder.
    assert record["runs"][str(own)]["folder"] == "."
    ranks = np.load(root / record["runs"][str(other)]["per_user_ranks"]["test"])
    assert record["runs"][str(other)]["per_user_ranks"]["test"] == f"seeds/{other}/evaluation/test.per_user.npz"
    assert np.array_equal(ranks["ranks"], seed_evaluations(root)[other].results["test"].ranks)


def test_a_seeded_run_is_cached_and_resumes_like_a_plain_run(seeded):
    root, cfg, own, other, _ = seeded
    again = run_seeds(cfg, [own, other])
    assert all(sorted(run.reused) == sorted(STAGES) for run in again.runs.values())
    # A lost seeded stage is rebuilt for that seed alone; what it reads is reused.
    shutil.rmtree(root / "seeds" / str(other) / "generator")
    resumed = run_pipeline(cfg, seed=other)
    assert "generator" not in resumed.reused
    assert {"data", "features", "collab", "tokenizer"} <= set(resumed.reused)
    assert (root / "seeds" / str(other) / "generator" / "manifest.json").is_file()
    # A plain run of the config is still the config's seed at the top, untouched by the seeds.
    assert sorted(run_pipeline(cfg).reused) == sorted(STAGES)


def test_the_api_loads_any_seed_and_names_a_missing_one(seeded):
    root, _, own, other, _ = seeded
    default, chosen = Recommender.load(root, device="cpu"), Recommender.load(root, device="cpu", seed=other)
    assert default.evaluation["test"].metrics == seed_evaluations(root)[own].results["test"].metrics
    assert chosen.evaluation["test"].metrics == seed_evaluations(root)[other].results["test"].metrics
    with pytest.raises(FileNotFoundError, match=f"no seed 999 in this run \\(it has {own}, {other}\\)"):
        Recommender.load(root, device="cpu", seed=999)


def test_a_run_whose_seeds_all_differ_from_the_config_shows_the_first(seeded, tmp_path):
    root, _, own, other, _ = seeded
    run = tmp_path / "run"
    shutil.copytree(root, run)
    for stage in SEEDED_STAGES:
        shutil.rmtree(run / stage)
    record = read_seeds(run)
    record["seeds"], record["runs"] = [other], {str(other): record["runs"][str(other)]}
    (run / "seeds.json").write_text(json.dumps(record))
    assert RunFolder.open(run) == RunFolder(run, other)
    assert collect(run, n_examples=0).seed_shown == other


def test_the_report_shows_the_spread(seeded, tmp_path):
    root, _, own, other, _ = seeded
    md = write_report(root, tmp_path / "report", n_examples=1, k=3).markdown.read_text(encoding="utf-8")
    results = md.split("## Results")[1].split("## Example")[0]
    assert f"Over 2 seeds ({own}, {other})" in results and f"show seed {own}" in results
    test = read_seeds(root)["results"]["test"]
    ndcg = test["all"]["NDCG@10"]
    row = next(line for line in results.splitlines() if line.startswith("| test, all users | "))
    assert f"{ndcg['mean']:.4f} ± {ndcg['std']:.4f}" in row
    row = next(line for line in results.splitlines() if line.startswith(f"| seed {other}, test, all users |"))
    assert f"{ndcg['per_seed'][str(other)]:.4f}" in row


def test_compare_of_a_run_with_itself_is_within_noise(seeded):
    root, *_ = seeded
    c = compare_runs(root, root)
    assert not c.significant and c.seed_test["n_seeds"] == 2 and c.seed_test["pvalue"] == 1.0
    assert c.verdict.startswith("Within noise") and any("only 2 seeds" in note for note in c.notes)


def test_cli_run_with_seeds_and_compare(seeded, tmp_path):
    root, cfg, own, other, _ = seeded
    runner = CliRunner()
    out = runner.invoke(app, ["run", "--config", str(root / "config.yaml"), "--set", f"run_dir={root}",
                              "--seeds", f"{own},{other}", "-q"])
    assert out.exit_code == 0, out.output
    assert f"over seeds {own}, {other}: mean ± std" in out.output
    assert "generator: semantic mode, causal-" in out.output  # which model the numbers are from
    assert f"seed {other}: stages: data" in out.output and "(reused)" in out.output
    # B: a plain run (one seed) of the same config: the seed-level test needs two seeds in each.
    plain = tmp_path / "plain"
    shutil.copytree(root, plain, ignore=shutil.ignore_patterns("seeds", "seeds.json"))
    out = runner.invoke(app, ["compare", str(root), str(plain), "--json", str(tmp_path / "c.json"), "-q"])
    assert out.exit_code == 0, out.output
    assert "NDCG@10 (cold)" in out.output and "Untested across seeds" in out.output
    saved = json.loads((tmp_path / "c.json").read_text())
    assert len(saved["comparisons"]) == 2 * len(read_seeds(root)["results"]["test"]["all"])
    assert saved["comparisons"][0]["per_seed_b"] == {str(own): saved["comparisons"][0]["mean_b"]}


def test_cli_names_bad_seeds(seeded):
    root, *_ = seeded
    out = CliRunner().invoke(app, ["run", "--config", str(root / "config.yaml"), "--set", f"run_dir={root}",
                                   "--seeds", "42,x", "-q"])
    assert out.exit_code != 0 and "'x' is not an integer" in str(out.exception or out.output)
    out = CliRunner().invoke(app, ["run", "--config", str(root / "config.yaml"), "--set", f"run_dir={root}",
                                   "--seeds", "1,2", "--until", "collab", "-q"])
    assert out.exit_code != 0 and "seeds change only the tokenizer" in str(out.exception or out.output)
