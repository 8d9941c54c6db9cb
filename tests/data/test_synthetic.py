"""The embedded demo generator: deterministic, the right sizes, missing modalities as configured,
and signals a model can learn (category from text and image; next item from the last one)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cemg.config import ConfigError, DataConfig
from cemg.data.split import leave_one_out
from cemg.data.synthetic import STAMP_FILE, generate_dataset, generate_demo
from cemg.evaluation.metrics import summarize, target_ranks
from cemg.evaluation.protocol import prior_items

SEED = 7


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo_images")
    dataset, latents = generate_demo(DataConfig(), SEED, folder)
    return dataset, latents, folder


def _image_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def test_same_seed_gives_identical_output_and_another_seed_differs(demo, tmp_path):
    dataset, _, folder = demo
    again = generate_dataset(DataConfig(), SEED, tmp_path / "again")
    assert all(np.array_equal(a, b) for a, b in zip(dataset.sequences, again.sequences, strict=True))
    assert dataset.items.fields == again.items.fields
    assert dataset.items.image_refs == again.items.image_refs
    assert _image_bytes(folder) == _image_bytes(tmp_path / "again")

    other = generate_dataset(DataConfig(), SEED + 1, tmp_path / "other")
    assert any(not np.array_equal(a, b) for a, b in zip(dataset.sequences, other.sequences))
    assert dataset.items.fields["title"] != other.items.fields["title"]
    shared = set(_image_bytes(folder)) & set(_image_bytes(tmp_path / "other"))
    assert any((folder / n).read_bytes() != (tmp_path / "other" / n).read_bytes() for n in shared)


def test_sizes_keys_and_sequences(demo):
    dataset, _, folder = demo
    cfg = DataConfig()
    assert dataset.name == "demo"
    assert (dataset.n_users, dataset.n_items) == (cfg.synthetic_users, cfg.synthetic_items)
    assert dataset.user_keys[:2] == ["u0001", "u0002"] and dataset.user_keys[-1] == "u0600"
    assert dataset.items.keys[:2] == ["i0001", "i0002"] and dataset.items.keys[-1] == "i0300"
    assert dataset.image_root == folder
    lengths = np.array([len(s) for s in dataset.sequences])
    assert lengths.min() >= 5 and lengths.max() <= 30
    for seq in dataset.sequences:
        assert seq.dtype == np.int64 and seq.min() >= 0 and seq.max() < dataset.n_items
        assert len(np.unique(seq)) == len(seq), "an item repeats inside a sequence"
    # 5-core filtering should keep nearly the whole catalogue.
    counts = np.bincount(np.concatenate(dataset.sequences), minlength=dataset.n_items)
    assert (counts >= 5).mean() >= 0.95


def test_images_decode_and_missing_modalities_follow_the_config(demo):
    dataset, _, folder = demo
    cfg = DataConfig()
    refs = dataset.items.image_refs
    missing_image = [i for i, r in enumerate(refs) if r is None]
    assert len(missing_image) == round(cfg.synthetic_missing_image * dataset.n_items)
    for i, ref in enumerate(refs):
        if ref is None:
            assert not (folder / f"{dataset.items.keys[i]}.png").exists()
            continue
        assert ref == f"{dataset.items.keys[i]}.png"
        with Image.open(folder / ref) as img:
            assert img.format == "PNG" and img.mode == "RGB" and img.size == (64, 64)
    no_text = [i for i in range(dataset.n_items) if dataset.items.text(i, ["title", "brand", "categories"]) == ""]
    assert len(no_text) == round(cfg.synthetic_missing_text * dataset.n_items)
    assert not set(no_text) & set(missing_image), "an item lost both content modalities"
    assert all(dataset.items.fields["title"][i] for i in range(dataset.n_items) if i not in no_text)


# A bigram feature present in one class only has zero spread there; harmless for centroids.
@pytest.mark.filterwarnings("ignore:self.within_class_std_dev_")
def test_category_is_recoverable_from_title_text(demo):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.neighbors import NearestCentroid

    dataset, latents, _ = demo
    # Titles only: the categories field names the category outright, the title must earn it.
    have = [i for i, t in enumerate(dataset.items.fields["title"]) if t]
    titles = [dataset.items.fields["title"][i] for i in have]
    labels = latents.item_category[have]
    x = TfidfVectorizer(ngram_range=(1, 2)).fit_transform(titles).toarray()
    half = len(have) // 2
    model = NearestCentroid().fit(x[:half], labels[:half])
    accuracy = (model.predict(x[half:]) == labels[half:]).mean()
    assert accuracy > 0.8, accuracy  # chance is 1/12


def test_category_is_recoverable_from_mean_image_colour(demo):
    from sklearn.neighbors import NearestCentroid

    dataset, latents, folder = demo
    have = [i for i, r in enumerate(dataset.items.image_refs) if r]
    colours = np.stack(
        [np.asarray(Image.open(folder / dataset.items.image_refs[i]), np.float64).mean(axis=(0, 1)) for i in have]
    )
    labels = latents.item_category[have]
    half = len(have) // 2
    model = NearestCentroid().fit(colours[:half], labels[:half])
    accuracy = (model.predict(colours[half:]) == labels[half:]).mean()
    assert accuracy > 0.6, accuracy  # chance is 1/12


def _hr10(split, scores_for, part: str = "valid") -> float:
    examples = split.part(part)
    counts = split.train_item_counts().astype(np.float64)
    top = []
    for history, exclude in zip(examples.histories, prior_items(split, part)):
        scores = scores_for(history) + 1e-6 * counts  # popularity breaks ties
        scores[exclude] = -np.inf
        top.append(np.argsort(-scores, kind="stable")[:10])
    return summarize(target_ranks(np.asarray(top), examples.targets), [10])["HR@10"]


def test_last_item_predicts_the_next_better_than_popularity(demo):
    dataset = demo[0]
    split = leave_one_out(dataset, max_history=20)
    n = dataset.n_items
    bigram = np.zeros((n, n))
    for seq in split.train:
        np.add.at(bigram, (seq[:-1], seq[1:]), 1.0)
    pop_hr = _hr10(split, lambda h: np.zeros(n))
    bigram_hr = _hr10(split, lambda h: bigram[h[-1]].copy())
    print(f"valid HR@10: popularity {pop_hr:.3f}, bigram {bigram_hr:.3f}")
    assert bigram_hr > 2 * pop_hr and bigram_hr - pop_hr > 0.15


def test_users_who_share_items_share_the_next_item(demo):
    """The collaborative signal alone (user-level co-occurrence, no order) beats popularity."""
    dataset = demo[0]
    split = leave_one_out(dataset, max_history=20)
    n = dataset.n_items
    together = np.zeros((n, n))
    for seq in split.train:
        items = np.unique(seq)
        together[np.ix_(items, items)] += 1.0
    np.fill_diagonal(together, 0.0)
    pop_hr = _hr10(split, lambda h: np.zeros(n))
    cooc_hr = _hr10(split, lambda h: together[h].sum(axis=0))
    assert cooc_hr > pop_hr + 0.05, (cooc_hr, pop_hr)


def test_rerun_reuses_images_and_a_new_generation_rewrites_them(tmp_path):
    cfg = DataConfig(synthetic_users=40, synthetic_items=60, synthetic_categories=4)
    folder = tmp_path / "img"
    generate_dataset(cfg, 3, folder)
    before = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.png")}
    original = _image_bytes(folder)

    generate_dataset(cfg, 3, folder)
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.png")} == before

    gone = next(iter(before))
    (folder / gone).unlink()
    generate_dataset(cfg, 3, folder)
    assert _image_bytes(folder) == original  # the missing one is redrawn, identically

    stranger = folder / "notes.png"
    stranger.write_bytes(b"not ours")
    stamp = json.loads((folder / STAMP_FILE).read_text())
    other = generate_dataset(cfg, 4, folder)
    assert json.loads((folder / STAMP_FILE).read_text())["generation_hash"] != stamp["generation_hash"]
    assert {p.name for p in folder.glob("i*.png")} == {r for r in other.items.image_refs if r}
    assert stranger.exists()
    rewritten = _image_bytes(folder)
    assert any(rewritten[n] != original[n] for n in set(rewritten) & set(original))
    assert not list(folder.glob(".*tmp*")), "temporary files were left behind"


def test_more_categories_than_the_written_vocabulary(tmp_path):
    cfg = DataConfig(synthetic_users=50, synthetic_items=100, synthetic_categories=20)
    dataset, latents = generate_demo(cfg, 0, tmp_path)
    assert set(latents.item_category.tolist()) == set(range(20))
    assert len(set(latents.category_names)) == 20
    assert np.allclose(latents.category_transitions.sum(axis=1), 1.0)
    assert all(len(s) >= 5 for s in dataset.sequences)


def test_user_count_does_not_change_the_catalogue(demo, tmp_path):
    dataset = demo[0]
    fewer = generate_dataset(DataConfig(synthetic_users=50), SEED, tmp_path)
    assert fewer.items.fields == dataset.items.fields


@pytest.mark.parametrize(
    "override, field",
    [
        ({"synthetic_items": 10}, "synthetic_items"),
        ({"synthetic_users": 0}, "synthetic_users"),
        ({"synthetic_missing_image": 1.0}, "synthetic_missing_image"),
    ],
)
def test_bad_sizes_name_the_field(override, field, tmp_path):
    with pytest.raises(ConfigError, match=field):
        generate_dataset(DataConfig(**override), 0, tmp_path)

