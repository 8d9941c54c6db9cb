"""The same seed and inputs give the same run on CPU: two pipeline runs in separate run folders
produce identical features (after PCA), LightGCN embeddings, semantic ids, generator weights and
metrics. The second run reads the encoder outputs from the first's vector cache: loading the text
and image encoders twice would double the test's time, and the cache is keyed by content."""

from __future__ import annotations

import numpy as np
import torch

from cemg.config import load_config
from cemg.pipeline import run_pipeline

TINY = [
    "data.synthetic_items=40", "data.synthetic_users=60", "data.synthetic_categories=4",
    "features.dim=8", "collab.dim=8", "collab.epochs=4", "collab.eval_every=2",
    "tokenizer.levels=2", "tokenizer.codebook_size=8", "tokenizer.latent_dim=4", "tokenizer.hidden_dims=[16]",
    "tokenizer.epochs=4", "tokenizer.batch_size=16",
    "generator.backbone=causal", "generator.causal_epochs=3", "generator.causal_hidden=16",
    "generator.causal_layers=1", "generator.batch_size=16", "generator.valid_users=null", "generator.beams=5",
    "checkpoint_seconds=0",
]


def _run(run_dir, cache_dir):
    return run_pipeline(load_config(None, [*TINY, f"run_dir={run_dir}", f"cache_dir={cache_dir}"]))


def test_same_seed_same_run(tmp_path):
    a, b = _run(tmp_path / "a", tmp_path / "cache"), _run(tmp_path / "b", tmp_path / "cache")
    assert a.hashes == b.hashes and not b.reused
    fa, fb = a.artifacts["features"], b.artifacts["features"]
    assert np.array_equal(fa.text, fb.text) and np.array_equal(fa.image, fb.image)
    assert np.array_equal(a.artifacts["collab"].items, b.artifacts["collab"].items)
    assert np.array_equal(a.artifacts["tokenizer"].semantic_ids.codes, b.artifacts["tokenizer"].semantic_ids.codes)
    sa, sb = a.artifacts["generator"].model.state_dict(), b.artifacts["generator"].model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    for part in ("valid", "test"):
        ra, rb = a.artifacts["evaluation"].results[part], b.artifacts["evaluation"].results[part]
        assert ra.metrics == rb.metrics and np.array_equal(ra.ranks, rb.ranks)
    # Checkpoints were written every epoch (checkpoint_seconds=0) and removed with the artifacts.
    assert not (tmp_path / "a" / "checkpoints").exists()
