"""The same command gives the same run, bit for bit, under 2 threads at the demo's size.

Two pipeline runs of the demo config (600 users, 300 items: `cemg demo`'s data, settings and code
paths) in separate run folders must write byte-identical array files at every stage (features,
LightGCN embeddings, RQ-VAE weights, semantic ids, generator weights, per-user evaluation ranks)
and the same metrics. Two intra-op threads, because the nondeterminism this guards against lives in
multi-threaded CPU kernels: the backward of tensor indexing (`x[idx]`, index_put_ with accumulate)
adds repeated rows from both threads at once above ~32k elements (bench/index_backward_race.py).
It made every 2-thread run differ, first in LightGCN (`out[users]`), then in the semantic
generator's node-vector gathers, while 1-thread runs agreed; both now use index_select. An earlier
version of this test, on a 60-user graph with one thread, never saw it.

The second run reads the encoder outputs from the first's vector cache: loading the text and image
encoders twice would double the test's time, and the cache is keyed by content.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cemg.config import load_config
from cemg.pipeline import run_pipeline
from cemg.reproducibility import compare_runs

DEMO = Path(__file__).resolve().parents[1] / "src" / "cemg" / "configs" / "demo.yaml"
# `cemg demo`'s config as it is (~35 s a run on 2 shared cores), saving checkpoints at every epoch
# (checkpoint_seconds=0) so the saving path runs too: a save must not change what training does.
SETTINGS = ["checkpoint_seconds=0"]


@pytest.fixture
def two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def _run(run_dir: Path, cache_dir: Path):
    return run_pipeline(load_config(DEMO, [*SETTINGS, f"run_dir={run_dir}", f"cache_dir={cache_dir}"]))


def test_two_demo_runs_are_bit_identical(tmp_path, two_threads):
    a = _run(tmp_path / "a", tmp_path / "cache")
    b = _run(tmp_path / "b", tmp_path / "cache")
    assert a.hashes == b.hashes and not b.reused

    same = compare_runs(a.run_dir, b.run_dir)
    assert same.same, same.summary()
    expected = {"collab/collab.npz", "tokenizer/semantic_ids/codes.npy", "evaluation/test.per_user.npz"}
    assert expected <= set(same.identical), same.identical  # the comparison saw every stage
    for part in ("valid", "test"):
        metrics = [json.loads((run / "evaluation" / f"{part}.json").read_text())["metrics"]
                   for run in (a.run_dir, b.run_dir)]
        assert metrics[0] == metrics[1]
    # Checkpoints were written every epoch (checkpoint_seconds=0) and removed with the artifacts.
    assert not (a.run_dir / "checkpoints").exists()
