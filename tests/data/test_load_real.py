"""The real datasets in ../shared/data load with the numbers the paper and SOURCES.md state."""

from __future__ import annotations

import tarfile
import time
from pathlib import Path

import pytest

from cemg.config import LookupConfig, load_config
from cemg.data.load import load_dataset
from cemg.data.readers import read_lookup

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
pytestmark = pytest.mark.real_data


def _data(name: str, shared: Path, **changes):
    # Config paths are relative to the repository root; tests may run from anywhere.
    data = load_config(CONFIGS / f"{name}.yaml").data
    repo = CONFIGS.parent
    fix = {k: (repo / v if v is not None and not Path(v).is_absolute() else v)
           for k, v in (("path", data.path), ("items_path", data.items_path), ("image_root", data.image_root))}
    if data.image_map is not None:
        fix["image_map"] = data.image_map.model_copy(update={"path": repo / data.image_map.path})
    return data.model_copy(update={**fix, **changes})


def test_beauty_matches_table_1(shared_data):
    start = time.perf_counter()
    ds = load_dataset(_data("beauty", shared_data))
    seconds = time.perf_counter() - start
    stats = ds.stats()
    assert (stats["users"], stats["items"], stats["interactions"]) == (22_363, 12_101, 198_502)
    assert f"{stats['avg_length']:.1f}" == "8.9" and f"{stats['sparsity'] * 100:.2f}" == "99.93"
    assert seconds < 10, f"loading Beauty took {seconds:.1f} s"
    # S3-Rec numbers items by first appearance, so internal id i is S3-Rec id i + 1.
    assert ds.items.keys[:3] == ["1", "2", "3"] and ds.items.keys[-1] == "12101"
    assert ds.items.fields["brand"][0] == "OPI"
    assert ds.items.fields["categories"][0] == "Beauty, Makeup, Nails, Nail Polish"
    assert ds.items.image_refs is None  # Beauty has no images offline (SOURCES.md, known gaps)


def test_beauty_with_recbole_items_through_datamaps(shared_data):
    beauty = shared_data / "beauty"
    data = _data(
        "beauty", shared_data,
        items_path=beauty / "Amazon_Beauty.item.gz",
        text_fields=["title", "brand", "categories"],
        item_key_map=LookupConfig(path=beauty / "datamaps.json.gz", field="item2id"),
    )
    ds = load_dataset(data)
    titles = ds.items.fields["title"]
    # SOURCES.md: the .item covers exactly the 12,101 ASINs; 7 titles and 2,098 brands are empty.
    assert sum(t is None for t in titles) == 7
    assert sum(b is None for b in ds.items.fields["brand"]) == 2_098
    assert titles[0] == "OPI Nail Lacquer, Simmer and Shimmer, 0.5-Fluid Ounce"


def test_ml100k_posters(shared_data):
    data = _data("ml100k", shared_data)
    # SOURCES.md: 1,633 of the 1,682 ML-100K items have a poster before any filtering.
    assert len(read_lookup(data.image_map)) == 1_633
    ds = load_dataset(data)
    stats = ds.stats()
    assert (stats["users"], stats["items"], stats["interactions"]) == (943, 1_349, 99_287)
    refs = [r for r in ds.items.image_refs if r is not None]
    assert len(refs) == 1_322  # of the 1,349 items left by 5-core filtering
    with tarfile.open(data.image_root) as tar:
        names = set(tar.getnames())
    assert all(r in names for r in refs)
    assert ds.items.text(0, data.text_fields).startswith("movie_title: ")
