"""Semantic ids in and out in the LC-Rec / LETTER index.json format (cemg.tokenizer.index_json)."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cemg.artifacts import read_manifest
from cemg.cli import app
from cemg.config import load_config
from cemg.data.errors import DataError
from cemg.pipeline import run_pipeline
from cemg.tokenizer.build import MODEL_FILE, TokenizerArtifact, make_unique
from cemg.tokenizer.index_json import (
    read_index_entries,
    read_index_json,
    tokenizer_from_index_json,
    write_index_json,
)
from cemg.tokenizer.semantic_ids import SemanticIds

KEYS = ["10", "11", "12", "13", "14"]  # item keys of a five-item dataset, internal ids 0..4


def _write(path: Path, content) -> Path:
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


def _entries(rows: list[list[int]]) -> dict[str, list[str]]:
    return {str(i): [f"<{'abcdefgh'[l]}_{c}>" for l, c in enumerate(row)] for i, row in enumerate(rows)}


# --- writing and reading back ---------------------------------------------------------------------


def test_writes_the_format_lc_rec_and_letter_read(tmp_path):
    ids = SemanticIds(np.array([[1, 2, 0], [1, 3, 0], [4, 2, 7]]), [8, 8, 8])
    path = write_index_json(ids, tmp_path / "demo.index.json")
    assert json.loads(path.read_text()) == {
        "0": ["<a_1>", "<b_2>", "<c_0>"],
        "1": ["<a_1>", "<b_3>", "<c_0>"],
        "2": ["<a_4>", "<b_2>", "<c_7>"],
    }
    keyed = write_index_json(ids, tmp_path / "keyed.json", keys=["x", "y", "z"])
    assert list(json.loads(keyed.read_text())) == ["x", "y", "z"]


@pytest.mark.parametrize("name", ["ids.index.json", "ids.index.json.gz"])
def test_round_trip_keeps_every_code(tmp_path, name):
    rng = np.random.default_rng(0)
    ids, _ = make_unique(rng.integers(0, 6, size=(40, 3)), 6)  # collisions -> a 4th, disambiguating level
    assert ids.levels == 4
    path = write_index_json(ids, tmp_path / name)
    if name.endswith(".gz"):
        assert path.read_bytes()[:2] == b"\x1f\x8b"
        assert write_index_json(ids, tmp_path / "again.gz").read_bytes() == path.read_bytes()  # deterministic
    back, report = read_index_json(path, [f"item-{i}" for i in range(40)], codebook_sizes=ids.codebook_sizes)
    assert np.array_equal(back.codes, ids.codes)
    assert back.codebook_sizes == ids.codebook_sizes
    assert report["collisions"]["colliding_items"] == 0 and not report["collisions"]["extra_level"]
    # Without sizes each level's codebook is its largest code + 1.
    inferred, _ = read_index_json(path, [f"item-{i}" for i in range(40)])
    assert np.array_equal(inferred.codes, ids.codes)
    assert inferred.codebook_sizes == [int(c) + 1 for c in ids.codes.max(axis=0)]


def test_collisions_get_a_disambiguation_level_and_are_counted(tmp_path):
    rows = [[0, 1], [2, 3], [0, 1], [2, 2], [0, 1]]
    ids, report = read_index_json(_write(tmp_path / "c.json", _entries(rows)), KEYS)
    assert ids.levels == 3 and ids.codebook_sizes == [3, 4, 3]
    assert ids.codes[:, 2].tolist() == [0, 0, 1, 0, 2]  # rank within the group, in item order
    assert np.array_equal(ids.codes[:, :2], rows)
    assert report["collisions"] == {"rate_before_fix": 0.6, "colliding_items": 3, "groups": 1,
                                    "max_group_size": 3, "extra_level": True}
    assert len(report["levels"]) == 2 and report["levels"][0]["used_codes"] == 2
    assert report["source"]["entries"] == 5 and report["source"]["keys"] == "position"
    assert len(report["source"]["sha256"]) == 64


def test_key_map_maps_file_keys_onto_item_keys(tmp_path):
    # File key k is our item "1k" (as LETTER's key k is S3-Rec item k + 1); one entry has no item.
    entries = {"4": ["<a_4>"], "0": ["<a_0>"], "2": ["<a_2>"], "1": ["<a_1>"], "3": ["<a_3>"], "9": ["<a_7>"]}
    path = _write(tmp_path / "k.json", entries)
    ids, report = read_index_json(path, KEYS, key_map={str(k): str(10 + k) for k in range(10)})
    assert ids.codes[:, 0].tolist() == [0, 1, 2, 3, 4]
    assert ids.codebook_sizes == [8]  # the file's vocabulary, the unused entry included
    assert report["source"]["keys"] == "key_map"


def test_model_less_artifact_saves_loads_and_says_why_it_has_no_model(tmp_path):
    path = _write(tmp_path / "ids.json", _entries([[0, 1], [1, 0], [1, 1], [0, 0], [2, 0]]))
    artifact = tokenizer_from_index_json(path, KEYS)
    artifact.save(tmp_path / "tok")
    assert not (tmp_path / "tok" / MODEL_FILE).exists()
    loaded = TokenizerArtifact.load(tmp_path / "tok")
    assert loaded.model_state is None and np.array_equal(loaded.semantic_ids.codes, artifact.semantic_ids.codes)
    with pytest.raises(ValueError, match=r"no fusion layer or RQ-VAE.*ids\.json \(tokenizer\.ids_file\)"):
        loaded.model()


# --- malformed files: each error names the file and the entry -------------------------------------


@pytest.mark.parametrize(
    ("content", "keys", "match"),
    [
        ('{"0": ["<a_1>"],\n "1": ["<a_2>"', KEYS, r"line 2: not valid JSON"),
        ("", KEYS, r"file is empty"),
        ('[["<a_1>"]]', KEYS, r"expected a JSON object .* found a list"),
        ("{}", KEYS, r"holds no items"),
        ('{"0": ["<a_1>"], "0": ["<a_2>"]}', KEYS, r"field '0': key '0' appears twice"),
        ({"0": "<a_1>"}, KEYS, r"field '0': expected a non-empty list of tokens"),
        ({"0": []}, KEYS, r"field '0': expected a non-empty list"),
        ({"0": ["<a_1>", "<b_x>"]}, KEYS, r"field '0': token '<b_x>' at level 2 is not of the form '<b_N>'"),
        ({"0": ["a_1"]}, KEYS, r"token 'a_1' at level 1 is not of the form '<a_N>'"),
        ({"0": ["<a_01>"]}, KEYS, r"token '<a_01>'"),
        ({"0": [7]}, KEYS, r"token 7 at level 1"),
        ({"0": ["<b_1>", "<a_2>"]}, KEYS, r"field '0': token '<b_1>' at level 1 should start with '<a_'"),
        ({"0": ["<a_1>", "<b_2>"], "1": ["<a_1>"]}, KEYS,
         r"field '1': 1 tokens, but item '0' has 2: every item needs one token per level"),
        ({"0": ["<a_99999999999>"]}, KEYS, r"code 99999999999 is out of range"),
        ({str(i): ["<a_1>"] for i in range(4)}, KEYS, r"field '4': no entry for item 4 \(item key '14'\)"),
        ({str(i): ["<a_1>"] for i in (0, 1, 2, 3, 7)}, KEYS, r"field '4': no entry for item 4"),
        ({str(i): [f"<a_{i}>"] for i in range(6)}, KEYS, r"field '5': 6 entries for a dataset of 5 items"),
        ({"x": ["<a_1>"]}, KEYS, r"field 'x': key 'x' is not an item index .* needs a key map"),
    ],
)
def test_malformed_files_give_clear_errors(tmp_path, content, keys, match):
    path = _write(tmp_path / "bad.index.json", content)
    with pytest.raises(DataError, match=match) as err:
        read_index_json(path, keys)
    assert str(err.value).startswith(str(path))


def test_errors_of_key_maps_and_codebook_sizes(tmp_path):
    path = _write(tmp_path / "m.json", _entries([[0], [1], [2], [3]]))
    with pytest.raises(DataError, match=r"m\.json: no entry for 1 of the dataset's 5 items, e.g. item key '14'"):
        read_index_json(path, KEYS, key_map={str(k): str(10 + k) for k in range(4)})
    with pytest.raises(DataError, match=r"field '3': keys '0' and '3' both map onto item '10'"):
        read_index_json(path, KEYS[:1], key_map={"0": "10", "3": "10"})
    with pytest.raises(DataError, match=r"field '3': token '<a_3>' lies outside level 1's codebook of 3 codes"):
        read_index_json(path, KEYS[:4], codebook_sizes=[3])
    with pytest.raises(DataError, match=r"1 levels per item, but 2 codebook sizes"):
        read_index_json(path, KEYS[:4], codebook_sizes=[4, 4])
    with pytest.raises(DataError, match=r"missing\.json: file not found"):
        read_index_json(tmp_path / "missing.json", KEYS)
    gz = tmp_path / "broken.json.gz"
    gz.write_bytes(gzip.compress(b'{"0": ["<a_1>"]}')[:-6])
    with pytest.raises(DataError, match=r"broken\.json\.gz: not a valid gzip file"):
        read_index_entries(gz)


# --- the pipeline's tokenizer stage and the commands ------------------------------------------------


def _reading_overrides(tmp_path: Path, ids_file: Path) -> list[str]:
    """A tiny synthetic run whose tokenizer stage reads `ids_file`: no text or image encoder, no LightGCN."""
    return [
        f"run_dir={tmp_path / 'run'}", f"cache_dir={tmp_path / 'cache'}",
        "data.synthetic_users=60", "data.synthetic_items=30", "data.synthetic_categories=3",
        "features.use_text=false", "features.use_image=false", "tokenizer.use_collab=false",
        f"tokenizer.ids_file={ids_file}",
    ]


def _reading_config(tmp_path: Path, ids_file: Path):
    return load_config(None, _reading_overrides(tmp_path, ids_file))


def test_tokenizer_stage_reads_ids_file_and_hashes_its_content(tmp_path):
    rng = np.random.default_rng(1)
    path = write_index_json(SemanticIds(np.stack([np.arange(30) % 7, np.arange(30) // 7], 1), [7, 5]),
                            tmp_path / "ids.json")
    cfg = _reading_config(tmp_path, path)
    first = run_pipeline(cfg, stop_after="tokenizer")
    tok = first.artifacts["tokenizer"]
    assert tok.model_state is None and tok.report["source"]["ids_file"] == str(path)
    assert np.array_equal(tok.semantic_ids.codes, np.stack([np.arange(30) % 7, np.arange(30) // 7], 1))
    assert read_manifest(cfg.run_dir / "tokenizer")["config"]["ids_file"] == str(path)

    assert "tokenizer" in run_pipeline(cfg, stop_after="tokenizer").reused
    # Same path, new content: the stage is rebuilt from the new ids.
    codes = rng.permutation(np.stack([np.arange(30) % 7, np.arange(30) // 7], 1))
    write_index_json(SemanticIds(codes, [7, 5]), path)
    again = run_pipeline(cfg, stop_after="tokenizer")
    assert "tokenizer" not in again.reused and np.array_equal(again.artifacts["tokenizer"].semantic_ids.codes, codes)
    assert again.hashes["tokenizer"] != first.hashes["tokenizer"]


def test_ids_file_errors_stop_the_run_with_the_file_named(tmp_path):
    bad = _write(tmp_path / "short.json", _entries([[0], [1]]))
    with pytest.raises(DataError, match=r"short\.json, field '2': no entry for item 2"):
        run_pipeline(_reading_config(tmp_path, bad), stop_after="tokenizer")
    with pytest.raises(FileNotFoundError, match=r"tokenizer.ids_file: .*nowhere\.json not found"):
        run_pipeline(_reading_config(tmp_path, tmp_path / "nowhere.json"), stop_after="tokenizer")


def test_exported_run_ids_feed_a_run_that_serves_and_reports(tiny_run, tmp_path):
    """`cemg ids export` of a finished run, read back through tokenizer.ids_file: the generator, the
    evaluation, the Python API and the report work on the imported, model-less tokenizer."""
    from cemg.api import Recommender
    from cemg.report import write_report

    out = tmp_path / "tiny.index.json.gz"
    result = CliRunner().invoke(app, ["ids", "export", str(tiny_run), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    original = SemanticIds.load(tiny_run / "tokenizer" / "semantic_ids")
    assert f"wrote {original.n_items:,} items x {original.levels} levels" in result.output
    assert "key 0 = item" in result.output

    run_dir = tmp_path / "imported"
    shutil.copytree(tiny_run, run_dir)  # data, features and collab are reused; the tokenizer is read
    cfg = load_config(run_dir / "config.yaml", [f"run_dir={run_dir}", f"tokenizer.ids_file={out}"])
    run = run_pipeline(cfg)
    assert {"data", "features"} <= set(run.reused) and "tokenizer" not in run.reused
    ids = run.artifacts["tokenizer"].semantic_ids
    assert np.array_equal(ids.codes, original.codes)
    assert not (run_dir / "tokenizer" / MODEL_FILE).exists()
    assert run.artifacts["evaluation"].results["test"].n_users > 0

    rec = Recommender.load(run_dir, device="cpu")
    assert len(rec.recommend([0, 1], k=3)) == 3
    assert rec.catalogue.fusion is None  # nothing to rebuild the fusion weights from
    files = write_report(run_dir, tmp_path / "report", n_examples=1)
    text = files.markdown.read_text(encoding="utf-8")
    assert "Tokenizer: not trained; semantic ids read from" in text and "No fusion layer" in text

    check = CliRunner().invoke(app, ["ids", "check", str(out), "--quiet"])
    assert check.exit_code == 0, check.output
    assert f"{original.n_items:,} entries, {original.levels} levels" in check.output
    assert "collisions: 0 items in 0 groups" in check.output


def test_ids_export_of_a_folder_without_ids_is_a_user_error(tmp_path):
    result = CliRunner().invoke(app, ["ids", "export", str(tmp_path), "--out", str(tmp_path / "x.json")])
    assert result.exit_code != 0 and "no semantic ids" in str(result.exception)


# --- LETTER's published Beauty ids ------------------------------------------------------------------


@pytest.mark.real_data
def test_letter_beauty_ids_map_onto_our_beauty_items(shared_data):
    from collections import defaultdict

    from cemg.data.load import load_dataset

    config = Path(__file__).resolve().parents[2] / "configs" / "beauty.yaml"
    data = load_config(config).data
    repo = config.parent.parent
    data = data.model_copy(update={"path": repo / data.path, "items_path": repo / data.items_path})
    dataset = load_dataset(data)
    path = shared_data / "beauty" / "letter_Beauty.index.json.gz"

    ids, report = read_index_json(path, dataset.items.keys)
    assert ids.n_items == dataset.n_items == 12_101
    assert report["source"]["entries"] == 12_101
    assert ids.levels == 5 and ids.codebook_sizes == [256, 256, 256, 256, 3]
    assert [level["used_codes"] for level in report["levels"]] == [197, 256, 256, 256]
    # SOURCES.md: 12,088 distinct codes for 12,101 items.
    assert report["collisions"] == {"rate_before_fix": pytest.approx(24 / 12_101), "colliding_items": 24,
                                    "groups": 11, "max_group_size": 3, "extra_level": True}
    assert len({tuple(row) for row in ids.codes[:, :4].tolist()}) == 12_088

    # Key k is S3-Rec item k + 1 (SOURCES.md); read by position it is the same, since our S3-Rec
    # reader keeps the file's numbering (internal id i is S3-Rec id i + 1).
    by_key, _ = read_index_json(path, dataset.items.keys, key_map={str(k): str(k + 1) for k in range(12_101)})
    assert np.array_equal(by_key.codes, ids.codes)

    # The mapping is the right one, not merely a complete one: items sharing their first three
    # LETTER codes mostly share a brand (LETTER's ids come from the item text), unlike under a
    # mapping shifted by one item.
    brand = dataset.items.fields["brand"]

    def same_brand_rate(shift: int) -> float:
        groups = defaultdict(list)
        for i, row in enumerate(ids.codes[:, :3].tolist()):
            if 0 <= i + shift < len(brand):
                groups[tuple(row)].append(i + shift)
        pairs = [(a, b) for g in groups.values() for x, a in enumerate(g) for b in g[x + 1:]]
        return sum(brand[a] is not None and brand[a] == brand[b] for a, b in pairs) / len(pairs)

    assert same_brand_rate(0) > 0.5
    assert same_brand_rate(1) < 0.15 and same_brand_rate(-1) < 0.15


def test_catalogue_counts_the_files_levels_not_the_configs(tmp_path):
    from cemg.api import ItemCatalogue

    rows = [[i % 3, 0] for i in range(30)]  # 3 groups of 10 items sharing both codes
    path = write_index_json(SemanticIds(np.array([[*r, i // 3] for i, r in enumerate(rows)]), [3, 1, 10]),
                            tmp_path / "three.json")
    path = _write(path, {k: v[:2] for k, v in json.loads(path.read_text()).items()})  # drop the last level
    cfg = _reading_config(tmp_path, path)  # tokenizer.levels keeps its default, 4
    run_pipeline(cfg, stop_after="tokenizer")
    catalogue = ItemCatalogue.load(cfg.run_dir)
    assert catalogue.semantic_ids.levels == 3 and catalogue.learned_levels == 2
    assert catalogue.explain(0).disambiguation_level


def test_cemg_tokenize_reports_ids_read_from_a_file(tmp_path):
    path = _write(tmp_path / "ids.json", _entries([[i % 4, i // 4] for i in range(28)] + [[0, 0], [1, 0]]))
    args = [arg for o in _reading_overrides(tmp_path, path) for arg in ("--set", o)]
    result = CliRunner().invoke(app, ["tokenize", *args, "--quiet"])
    assert result.exit_code == 0, result.output
    assert f"semantic ids read from {path} (tokenizer.ids_file); nothing trained" in result.output
    assert "level 1: 4/4 codes used" in result.output and "relative latent error" not in result.output
    assert "ids have 3 levels" in result.output  # two items collide with items 0 and 1
