"""Readers for each format on tiny files written in the test, and the errors bad input gives."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cemg.config import DataConfig, LookupConfig
from cemg.data.errors import DataError
from cemg.data.load import load_dataset, synthetic_digest
from cemg.data.readers import (
    read_interaction_table,
    read_item_table,
    read_lookup,
    read_s3rec_sequences,
    read_text,
)


def write(path: Path, text: str, *, gz: bool = False, encoding: str = "utf-8") -> Path:
    data = text.encode(encoding)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


SEQUENCES = "1 1 2 3\n2 2 4\n\n3 3 1 4 2\n"
ITEMS_JSONL = "\n".join(
    json.dumps(r)
    for r in [
        {"item_id": 1, "title": "Lipstick", "brand": "OPI", "categories": ["Beauty", "Makeup"], "image": "a.jpg"},
        {"item_id": 2, "title": "Shampoo", "brand": None, "categories": ["Beauty", "Hair"]},
        {"item_id": 3, "title": "", "brand": "Dove", "categories": []},
    ]
)


# --- S3-Rec sequences -------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_s3rec_sequences_keep_file_order_and_skip_blank_lines(tmp_path, caplog, gz):
    path = write(tmp_path / ("seq.txt.gz" if gz else "seq.txt"), SEQUENCES, gz=gz)
    with caplog.at_level(logging.INFO):
        frame = read_s3rec_sequences(path)
    assert list(frame.columns) == ["user", "item", "timestamp", "order"]
    assert frame["user"].tolist() == ["1"] * 3 + ["2"] * 2 + ["3"] * 4
    assert frame["item"].tolist() == ["1", "2", "3", "2", "4", "3", "1", "4", "2"]
    assert frame["timestamp"].isna().all()
    assert frame["order"].tolist() == list(range(9))
    assert "skipped 1 blank line" in caplog.text


def test_gzip_is_detected_by_content_not_name(tmp_path):
    path = tmp_path / "seq.txt"  # gzip bytes under a plain name
    path.write_bytes(gzip.compress(SEQUENCES.encode()))
    assert len(read_s3rec_sequences(path)) == 9


# --- item tables ------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_jsonl_items_join_lists_and_blank_to_none(tmp_path, gz):
    path = write(tmp_path / ("items.jsonl.gz" if gz else "items.jsonl"), ITEMS_JSONL, gz=gz)
    items = read_item_table(path, "item_id", ["title", "brand", "categories"], "image")
    assert items["item"].tolist() == ["1", "2", "3"]
    assert items["categories"].tolist() == ["Beauty, Makeup", "Beauty, Hair", None]
    assert items["title"].tolist() == ["Lipstick", "Shampoo", None]
    assert items["brand"].tolist() == ["OPI", None, "Dove"]
    assert items["image"].tolist() == ["a.jpg", None, None]


def test_recbole_item_file_with_csv_quoting(tmp_path):
    # The Amazon RecBole .item files quote fields holding tabs or quotes.
    text = 'item_id:token\ttitle:token\tcategories:token_seq\nB01\t"Tab\tinside"\t\'Beauty\', \'Face\'\nB02\tPlain\t\n'
    items = read_item_table(write(tmp_path / "x.item", text), "item_id", ["title", "categories"])
    assert items["title"].tolist() == ["Tab\tinside", "Plain"]
    assert items["categories"].tolist() == ["'Beauty', 'Face'", None]
    assert "image" not in items.columns


def test_latin1_item_file_falls_back_with_a_warning(tmp_path, caplog):
    path = write(tmp_path / "m.item", "item_id:token\tmovie_title:token_seq\n1\tAmélie\n", encoding="latin-1")
    with caplog.at_level(logging.WARNING):
        items = read_item_table(path, "item_id", ["movie_title"], fallback="latin-1")
    assert items["movie_title"].tolist() == ["Amélie"]
    assert "latin-1" in caplog.text and "m.item" in caplog.text


def test_parquet_items_and_interactions(tmp_path):
    pd.DataFrame({"uid": [10, 10, 11], "iid": [1, 2, 1], "ts": [5.0, 3.0, 1.0]}).to_parquet(tmp_path / "i.parquet")
    pd.DataFrame({"iid": [1, 2], "name": ["a", "b"], "img": ["http://x/1.jpg", None]}).to_parquet(
        tmp_path / "items.parquet"
    )
    frame = read_interaction_table(tmp_path / "i.parquet", "uid", "iid", "ts")
    assert frame["user"].tolist() == ["10", "10", "11"]
    assert frame["timestamp"].tolist() == [5.0, 3.0, 1.0]
    items = read_item_table(tmp_path / "items.parquet", "iid", ["name"], "img")
    assert items["item"].tolist() == ["1", "2"] and items["image"].tolist() == ["http://x/1.jpg", None]


def test_csv_interactions_without_a_time_column_use_file_order(tmp_path):
    frame = read_interaction_table(write(tmp_path / "i.csv", "user,item\nu1,a\nu1,b\n"))
    assert frame["timestamp"].isna().all() and frame["order"].tolist() == [0, 1]


def test_lookup_table_with_flag_and_template(tmp_path):
    path = write(tmp_path / "map.tsv", "k\tv\tok\n1\t10\t1\n2\t20\t0\n3\t\t1\n")
    spec = LookupConfig(path=path, key="k", value="v", where="ok", template="img/{}.jpg")
    assert read_lookup(spec) == {"1": "img/10.jpg"}


def test_lookup_json_field(tmp_path):
    path = write(tmp_path / "datamaps.json", json.dumps({"item2id": {"B01": "1", "B02": "2"}}))
    assert read_lookup(LookupConfig(path=path, field="item2id")) == {"B01": "1", "B02": "2"}


# --- load_dataset for each format -------------------------------------------------------------


def test_load_s3rec_with_jsonl_items(tmp_path):
    seq = write(tmp_path / "seq.txt", SEQUENCES)
    items = write(tmp_path / "items.jsonl", ITEMS_JSONL)
    data = DataConfig(format="s3rec", path=seq, items_path=items, min_core=0, image_root=tmp_path)
    ds = load_dataset(data)
    assert ds.user_keys == ["1", "2", "3"]
    assert ds.items.keys == ["1", "2", "3", "4"]  # S3-Rec numbering kept (0-based)
    assert [s.tolist() for s in ds.sequences] == [[0, 1, 2], [1, 3], [2, 0, 3, 1]]
    assert ds.items.fields["title"] == ["Lipstick", "Shampoo", None, None]  # item 4 has no metadata
    assert ds.items.image_refs == ["a.jpg", None, None, None]
    assert ds.image_root == tmp_path


def test_load_s3rec_with_recbole_items_through_a_key_map(tmp_path):
    # The Amazon RecBole .item is keyed by ASIN; P5's datamaps.json maps ASIN -> S3-Rec id.
    seq = write(tmp_path / "seq.txt", "1 1 2\n2 2 1\n")
    item = write(tmp_path / "a.item", "item_id:token\ttitle:token\nB02\tSecond\nB01\tFirst\nB09\tUnused\n")
    maps = write(tmp_path / "datamaps.json", json.dumps({"item2id": {"B01": "1", "B02": "2"}}))
    data = DataConfig(format="s3rec", path=seq, items_path=item, text_fields=["title"], min_core=0,
                      item_key_map=LookupConfig(path=maps, field="item2id"))
    ds = load_dataset(data)
    assert ds.items.keys == ["1", "2"] and ds.items.fields["title"] == ["First", "Second"]


def test_load_recbole_sorts_by_time_and_finds_the_item_file(tmp_path):
    inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "\n".join(
        ["7\t100\t3\t30", "7\t200\t4\t10", "8\t200\t5\t20", "7\t300\t1\t10", "8\t300\t2\t5"]
    )
    write(tmp_path / "toy.inter.gz", inter, gz=True)
    write(tmp_path / "toy.item", "item_id:token\tmovie_title:token_seq\tclass:token_seq\n"
          "100\tToy Story\tAnimation Comedy\n200\tHeat\tAction\n300\tFargo\tCrime\n")
    write(tmp_path / "posters.tsv", "item\tmovie\thas\n100\t1\t1\n200\t2\t0\n")
    data = DataConfig(
        format="recbole", path=tmp_path / "toy.inter.gz", text_fields=["movie_title", "class"], min_core=0,
        image_map=LookupConfig(path=tmp_path / "posters.tsv", key="item", value="movie", where="has",
                               template="MovieImages/{}.jpg"),
    )
    ds = load_dataset(data)
    # user 7: t=10 (200, then 300 by file order), t=30 (100); user 8: 300 (t=5), 200 (t=20)
    assert ds.items.keys == ["200", "300", "100"]
    assert [s.tolist() for s in ds.sequences] == [[0, 1, 2], [1, 0]]
    assert ds.items.fields["class"] == ["Action", "Crime", "Animation Comedy"]
    assert ds.items.image_refs == [None, None, "MovieImages/1.jpg"]


def test_load_table_with_configured_column_names(tmp_path):
    write(tmp_path / "i.csv", "who,what,when\nu1,a,2\nu1,b,1\nu2,a,3\n")
    write(tmp_path / "items.csv", "what,name,picture\na,Apple,img/a.png\nb,Bread,\n")
    data = DataConfig(format="table", path=tmp_path / "i.csv", items_path=tmp_path / "items.csv",
                      user_column="who", item_column="what", time_column="when", text_fields=["name"],
                      image_column="picture", min_core=0)
    ds = load_dataset(data)
    assert ds.items.keys == ["b", "a"] and ds.items.image_refs == [None, "img/a.png"]
    assert [s.tolist() for s in ds.sequences] == [[0, 1], [1]]


def test_load_applies_k_core(tmp_path):
    seq = write(tmp_path / "seq.txt", "1 1 2\n2 1 2\n3 1 3\n")
    ds = load_dataset(DataConfig(format="s3rec", path=seq, min_core=2))
    assert ds.user_keys == ["1", "2"] and ds.items.keys == ["1", "2"]


def test_synthetic_dispatch_hashes_settings_and_seed(tmp_path, monkeypatch):
    import sys
    import types

    calls = {}

    def fake_generate(cfg, seed, image_dir):
        calls["args"] = (cfg, seed, image_dir)
        return "dataset"

    module = types.ModuleType("cemg.data.synthetic")
    module.generate_dataset = fake_generate
    monkeypatch.setitem(sys.modules, "cemg.data.synthetic", module)
    data = DataConfig(format="synthetic")
    assert load_dataset(data, seed=3, cache_dir=tmp_path) == "dataset"
    assert calls["args"][2] == tmp_path / "synthetic" / synthetic_digest(data, 3)
    assert synthetic_digest(data, 3) != synthetic_digest(data, 4)
    assert synthetic_digest(data, 3) != synthetic_digest(DataConfig(format="synthetic", synthetic_items=50), 3)
    assert synthetic_digest(data, 3) == synthetic_digest(DataConfig(format="synthetic", min_core=2), 3)


# --- bad input --------------------------------------------------------------------------------


def _error(call) -> str:
    with pytest.raises(DataError) as info:
        call()
    return str(info.value)


def test_sequence_file_with_a_non_integer_id(tmp_path):
    path = write(tmp_path / "seq.txt", "1 1 2\n2 3 x4\n")
    message = _error(lambda: read_s3rec_sequences(path))
    assert "seq.txt" in message and "line 2" in message and "'item 2'" in message and "'x4'" in message


def test_sequence_line_with_a_user_but_no_items(tmp_path):
    path = write(tmp_path / "seq.txt", "1 1 2\n2\n")
    assert "line 2" in _error(lambda: read_s3rec_sequences(path))


def test_wrong_number_of_fields(tmp_path):
    path = write(tmp_path / "bad.inter", "user_id:token\titem_id:token\n1\t2\n1\t2\t3\n")
    message = _error(lambda: read_interaction_table(path, "user_id", "item_id", recbole=True))
    assert "bad.inter" in message and "line 3" in message and "expected 2 fields, found 3" in message


def test_missing_required_column(tmp_path):
    path = write(tmp_path / "i.csv", "user,product\nu,a\n")
    message = _error(lambda: read_interaction_table(path))
    assert "i.csv" in message and "field 'item'" in message


def test_explicit_time_column_must_exist(tmp_path):
    path = write(tmp_path / "i.csv", "user,item\nu,a\n")
    assert "field 'when'" in _error(lambda: read_interaction_table(path, time_column="when", time_required=True))


def test_bad_timestamp(tmp_path):
    path = write(tmp_path / "i.csv", "user,item,timestamp\nu,a,1\nu,b,yesterday\n")
    message = _error(lambda: read_interaction_table(path))
    assert "line 3" in message and "field 'timestamp'" in message


def test_recbole_header_without_type(tmp_path):
    path = write(tmp_path / "x.inter", "user_id\titem_id:token\n1\t2\n")
    message = _error(lambda: read_interaction_table(path, "user_id", "item_id", recbole=True))
    assert "x.inter" in message and "line 1" in message and "field 'user_id'" in message


def test_unknown_text_field(tmp_path):
    path = write(tmp_path / "items.jsonl", ITEMS_JSONL)
    message = _error(lambda: read_item_table(path, "item_id", ["title", "description"]))
    assert "items.jsonl" in message and "field 'description'" in message


def test_duplicate_item_ids(tmp_path):
    path = write(tmp_path / "items.csv", "item,title\na,A\nb,B\na,C\n")
    message = _error(lambda: read_item_table(path, "item", ["title"]))
    assert "items.csv" in message and "line 4" in message and "field 'item'" in message and "line 2" in message


def test_jsonl_record_without_key_and_invalid_json(tmp_path):
    path = write(tmp_path / "items.jsonl", '{"item_id": 1}\n{"title": "x"}\n')
    assert "line 2" in _error(lambda: read_item_table(path, "item_id", []))
    path = write(tmp_path / "items.jsonl", '{"item_id": 1}\n{"item_id": 2,\n')
    message = _error(lambda: read_item_table(path, "item_id", []))
    assert "items.jsonl" in message and "line 2" in message and "not valid JSON" in message


def test_non_utf8_without_fallback(tmp_path):
    path = write(tmp_path / "m.item", "item_id:token\ttitle:token\n1\tok\n2\tCaf\xe9\n", encoding="latin-1")
    message = _error(lambda: read_item_table(path, "item_id", ["title"], fallback=None))
    assert "m.item" in message and "line 3" in message and "utf-8" in message


def test_empty_files(tmp_path):
    for name in ("seq.txt", "items.jsonl", "i.csv"):
        write(tmp_path / name, "\n  \n")
    assert "seq.txt: file is empty" in _error(lambda: read_s3rec_sequences(tmp_path / "seq.txt"))
    assert "items.jsonl: file is empty" in _error(lambda: read_item_table(tmp_path / "items.jsonl", "k", []))
    assert "i.csv: file is empty" in _error(lambda: read_interaction_table(tmp_path / "i.csv"))
    write(tmp_path / "header_only.csv", "user,item\n")
    assert "no rows" in _error(lambda: read_interaction_table(tmp_path / "header_only.csv"))


def test_truncated_gzip_and_missing_file(tmp_path):
    path = tmp_path / "seq.txt.gz"
    path.write_bytes(gzip.compress(SEQUENCES.encode() * 50)[:40])
    assert "seq.txt.gz: not a valid gzip file" in _error(lambda: read_text(path))
    assert "nope.txt: file not found" in _error(lambda: read_s3rec_sequences(tmp_path / "nope.txt"))


def test_duplicate_keys_after_a_key_map(tmp_path):
    seq = write(tmp_path / "seq.txt", "1 1 2\n")
    item = write(tmp_path / "a.item", "item_id:token\ttitle:token\nB01\tA\nB02\tB\n")
    maps = write(tmp_path / "m.json", json.dumps({"item2id": {"B01": "1", "B02": "1"}}))
    data = DataConfig(format="s3rec", path=seq, items_path=item, text_fields=["title"], min_core=0,
                      item_key_map=LookupConfig(path=maps, field="item2id"))
    message = _error(lambda: load_dataset(data))
    assert "m.json" in message and "'1'" in message


def test_everything_filtered_out_is_an_error(tmp_path):
    seq = write(tmp_path / "seq.txt", "1 1 2\n2 3 4\n")
    assert "no interactions are left after 5-core" in _error(
        lambda: load_dataset(DataConfig(format="s3rec", path=seq))
    )


def test_missing_path_for_a_file_format():
    assert "data.path" in _error(lambda: load_dataset(DataConfig(format="recbole")))


def test_text_value_cases():
    from cemg.data.readers import text_value

    assert text_value(["a", None, ["b", "c"], ""]) == "a, b, c"
    assert text_value(float("nan")) is None and text_value("  ") is None
    assert text_value(1995) == "1995" and text_value(np.array(["x", "y"])) == "x, y"


def test_explicit_image_column_must_exist_but_the_default_is_optional(tmp_path):
    write(tmp_path / "i.csv", "user,item\nu,a\n")
    write(tmp_path / "items.csv", "item,title\na,A\n")
    data = DataConfig(format="table", path=tmp_path / "i.csv", items_path=tmp_path / "items.csv",
                      text_fields=["title"], min_core=0)
    assert load_dataset(data).items.image_refs is None
    explicit = DataConfig(**data.model_dump(exclude_unset=True), image_column="poster")
    message = _error(lambda: load_dataset(explicit))
    assert "items.csv" in message and "field 'poster'" in message


def test_item_table_in_another_key_space_is_an_error(tmp_path):
    seq = write(tmp_path / "seq.txt", "1 1 2\n")
    item = write(tmp_path / "a.item", "item_id:token\ttitle:token\nB01\tA\n")
    message = _error(lambda: load_dataset(DataConfig(format="s3rec", path=seq, items_path=item,
                                                     text_fields=["title"], min_core=0)))
    assert "a.item" in message and "data.item_key_map" in message


def test_lookup_template_forms(tmp_path):
    path = write(tmp_path / "map.csv", "k,v\n1,10\n")
    assert read_lookup(LookupConfig(path=path, key="k", value="v", template="p/{value}.png")) == {"1": "p/10.png"}
    message = _error(lambda: read_lookup(LookupConfig(path=path, key="k", value="v", template="{movie}")))
    assert "map.csv" in message and "field 'template'" in message
