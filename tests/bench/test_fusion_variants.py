"""bench/fusion_variants.py: variant folders start from the base run, and finished seeds are collected
and compared with the paper's attention."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # the script imports its neighbour baselines_beauty
    spec = importlib.util.spec_from_file_location("fusion_variants", BENCH / "fusion_variants.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_variants_start_from_the_base_run_and_are_compared_with_attention(bench, tiny_run, tmp_path, monkeypatch,
                                                                          capsys):
    from cemg.config import load_config
    from cemg.pipeline import run_pipeline

    work = tmp_path / "work"
    attention, mean = bench.variant_dir(work, tiny_run, "attention"), bench.variant_dir(work, tiny_run, "mean")
    bench.copy_stages(tiny_run, attention, "attention")
    bench.copy_stages(tiny_run, mean, "mean")
    # the default variant takes the base run's trained stages too; the others only the shared ones
    assert sorted(p.name for p in attention.iterdir()) == ["collab", "data", "evaluation", "features", "generator",
                                                          "tokenizer"]
    assert sorted(p.name for p in mean.iterdir()) == ["collab", "data", "features"]
    config = str(Path(tiny_run) / "config.yaml")
    seed = load_config(config).seed
    hashes = {}
    for variant, run in (("attention", attention), ("mean", mean)):
        cmd = bench.cemg_command(config, [seed], variant, run, [])
        overrides = [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "--set"]
        hashes[variant] = run_pipeline(load_config(config, overrides)).hashes
    base = {stage: json.loads((tiny_run / stage / "manifest.json").read_text())["inputs_hash"]
            for stage in ("features", "tokenizer")}
    assert hashes["attention"]["features"] == hashes["mean"]["features"] == base["features"]
    assert hashes["attention"]["tokenizer"] == base["tokenizer"] != hashes["mean"]["tokenizer"]

    out = tmp_path / "fusion.json"
    kept = tmp_path / "kept"
    monkeypatch.setattr(sys.modules["kept_results"], "KEPT", kept)  # never the repository's bench/results
    monkeypatch.setattr(sys, "argv", ["fusion_variants.py", "--config", config, "--seeds", str(seed), "--base",
                                      str(tiny_run), "--work", str(work), "--out", str(out), "--no-train"])
    bench.main()
    saved = json.loads(out.read_text())
    assert list(saved["rows"]) == ["attention", "mean"] and saved["rows"]["mean"]["seeds"] == [seed]
    assert "tokenizer.fusion=mean" in saved["rows"]["mean"]["command"] and saved["machine"]
    assert set(saved["rows"]["attention"]["spread"]["test"]["all"]) >= {"HR@5", "HR@10", "NDCG@5", "NDCG@10"}
    assert "attention vs mean, NDCG@10 (cold start)" in saved["comparisons"]
    assert "| mean (a_v = a_t = 1/2) | 1 |" in capsys.readouterr().out

    # each finished seed is kept, and read back once its run folder is gone
    dataset = load_config(config).data.name
    assert (kept / f"fusion_{dataset}" / "mean" / f"seed-{seed}" / "test.per_user.npz").is_file()
    shutil.rmtree(mean)
    bench.main()
    again = json.loads(out.read_text())
    assert again["rows"]["mean"]["spread"] == saved["rows"]["mean"]["spread"]
    assert again["comparisons"] == saved["comparisons"]
