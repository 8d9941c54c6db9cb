"""docs/own-data.md: its config and sample rows work as written, on tiny generated shop files.

The test runs in a temporary folder laid out as the guide describes (data/my-shop/...), so the
guide's relative paths are used unchanged.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from cemg.config import load_config
from cemg.pipeline import run_pipeline

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "own-data.md"


def _guide_config() -> dict:
    text = GUIDE.read_text(encoding="utf-8")
    return yaml.safe_load(re.search(r"```yaml\n(.*?)```", text, re.S).group(1))


def _guide_sample(name: str) -> list[str]:
    """The sample lines the guide shows under `data/my-shop/<name>` (without the `...`)."""
    text = GUIDE.read_text(encoding="utf-8")
    block = re.search(rf"    data/my-shop/{re.escape(name)}\n((?:        .*\n)+)", text).group(1)
    return [line.strip() for line in block.splitlines() if line.strip() != "..."]


@pytest.fixture
def shop(tmp_path, monkeypatch) -> Path:
    """~40 customers, 24 products with texts, 20 of them with a picture, in the guide's layout."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data" / "my-shop"
    (root / "images").mkdir(parents=True)
    inter = _guide_sample("interactions.csv")
    items = _guide_sample("items.csv")
    assert inter[0] == "user,item,timestamp" and items[0].startswith("item,title,brand,categories,image")
    skus = [f"sku-{i:03d}" for i in range(1, 25)]
    shown = {line.split(",")[0] for line in items[1:]}
    for i, sku in enumerate(skus):
        if sku not in shown:
            image = f"images/{sku}.jpg" if i % 6 else ""  # every sixth product has no picture
            kind = rng.choice(["Cream", "Gel", "Soap"])
            items.append(f'{sku},Product {i} {kind},Brand{i % 3},"Beauty, Line {i % 4}",{image}')
    for line in items[1:]:
        ref = line.rsplit(",", 1)[1]
        if ref:
            Image.new("RGB", (24, 24), tuple(int(c) for c in rng.integers(0, 255, 3))).save(root / ref)
    t = 1714557600
    for user in range(40):
        for sku in rng.choice(skus, size=int(rng.integers(6, 10)), replace=False):
            t += int(rng.integers(60, 86400))
            inter.append(f"c-{1000 + user},{sku},{t}")
    (root / "interactions.csv").write_text("\n".join(inter) + "\n", encoding="utf-8")
    (root / "items.csv").write_text("\n".join(items) + "\n", encoding="utf-8")
    (tmp_path / "my-shop.yaml").write_text(yaml.safe_dump(_guide_config()), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_guide_config_reads_the_guide_layout(shop):
    cfg = load_config("my-shop.yaml")
    assert cfg.data.format == "table" and cfg.features.dim == cfg.collab.dim
    dataset = run_pipeline(cfg, stop_after="data").artifacts["data"]
    assert dataset.n_users == 40 and dataset.n_items == 24
    items = dataset.items
    sku2 = items.keys.index("sku-002")
    assert items.title(sku2) == "Rose Hand Cream 50 ml"
    assert items.fields["categories"][sku2] == "Beauty, Skin Care, Hands"  # the quoted comma stays inside
    assert items.image_refs[sku2] == "images/sku-002.jpg"
    assert sum(ref is None for ref in items.image_refs) == 3  # sku-001, sku-007, sku-019 have no picture
    assert (Path("runs/my-shop") / "config.yaml").is_file()

    from cemg.features.image import read_image_bytes

    got = {item: data for item, data, _ in read_image_bytes(items.image_refs, dataset.image_root)}
    assert len(got) == 21 and all(data for data in got.values())


def test_guide_data_stats_command(shop):
    from cemg.cli import app

    result = CliRunner().invoke(app, ["data", "stats", "--config", "my-shop.yaml", "-q"])
    assert result.exit_code == 0, result.output
    assert re.search(r"#users\s+40\b", result.output) and re.search(r"#items\s+24\b", result.output)


def test_guide_config_runs_end_to_end(shop):
    """The whole pipeline on the guide's config, shrunk only where 24 items force it (PCA d <= items).
    Alone this takes ~40 s (importing and loading the encoders); after the session's tiny run, ~6 s."""
    cfg = load_config("my-shop.yaml", [
        "features.dim=8", "collab.dim=8", "collab.epochs=2", "tokenizer.codebook_size=8", "tokenizer.epochs=3",
        "tokenizer.hidden_dims=[16]", "tokenizer.latent_dim=8", "generator.causal.epochs=2",
        "generator.causal.hidden=16",
    ])
    result = run_pipeline(cfg)
    assert set(result.artifacts["evaluation"].results) == {"valid", "test"}

    from cemg.api import Recommender

    rows = Recommender.load("runs/my-shop", device="cpu").recommend(["sku-013", "sku-002"], k=5)
    assert len(rows) == 5 and all(r.key.startswith("sku-") and r.title for r in rows)
