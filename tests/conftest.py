"""Shared test fixtures. Tests that read the real data in ../shared/data skip where it is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _few_threads():
    # Two cores shared by many tests: one intra-op thread keeps small models fast and timings sane.
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "SOURCES.md").is_file():
        pytest.skip(f"real data not found at {SHARED_DATA} (only the project's CI and developers have it)")
    return SHARED_DATA


# A whole pipeline run on a tiny synthetic catalogue, built once per test session for the tests of
# what uses a finished run (cemg.api, cemg.serve, cemg.report). Most of its ~30 s is loading the
# text and image encoders; the training stages take about a second.
TINY_RUN_OVERRIDES = [
    "data.synthetic_users=80", "data.synthetic_items=40", "data.synthetic_categories=4",
    "features.dim=8", "collab.dim=8", "collab.epochs=2", "collab.eval_every=1",
    "tokenizer.levels=2", "tokenizer.codebook_size=8", "tokenizer.epochs=3", "tokenizer.batch_size=64",
    "tokenizer.hidden_dims=[32]", "tokenizer.latent_dim=8",
    "generator.causal.epochs=2", "generator.causal.hidden=16", "generator.beams=10",
]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    import torch

    from cemg.config import load_config
    from cemg.pipeline import run_pipeline

    root = tmp_path_factory.mktemp("tiny-run")
    cfg = load_config(
        Path(__file__).resolve().parents[1] / "src" / "cemg" / "configs" / "demo.yaml",
        [f"run_dir={root / 'run'}", f"cache_dir={root / 'cache'}", *TINY_RUN_OVERRIDES],
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_pipeline(cfg)
    finally:
        torch.set_num_threads(threads)
    return cfg.run_dir
