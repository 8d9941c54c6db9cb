"""Hostile input through the data stage's entry point (issue #8): load_dataset on every file format
with mangled files, and the guarantees around it: a failing rerun leaves the last good artifact
as it was, and the CLI prints one line naming the file instead of a traceback."""

from __future__ import annotations

import gzip
import json
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cemg.config import CEMGConfig, DataConfig, LookupConfig
from cemg.data.dataset import InteractionDataset
from cemg.data.errors import DataError
from cemg.data.load import load_dataset

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

GOOD = {
    "s3rec": ("seq.txt", "1 1 2 3\n2 2 3 1\n3 3 1 2\n"),
    "recbole": ("x.inter", "user_id:token\titem_id:token\ttimestamp:float\n"
                           "u1\ti1\t1\nu1\ti2\t2\nu2\ti2\t1\nu2\ti1\t3\n"),
    "table": ("x.csv", "user,item,timestamp\nu1,i1,1\nu1,i2,2\nu2,i2,1\nu2,i1,3\n"),
}
ITEMS = {
    "s3rec": ("items.jsonl", "\n".join(json.dumps({"item_id": i, "title": f"t{i}", "image": f"{i}.jpg"})
                                       for i in (1, 2, 3)) + "\n"),
    "recbole": ("x.item", "item_id:token\ttitle:token_seq\ni1\tone\ni2\ttwo\n"),
    "table": ("items.csv", "item,title\ni1,one\ni2,two\n"),
}


def _check(ds: InteractionDataset) -> None:
    """What every later stage relies on."""
    assert ds.n_users == len(set(ds.user_keys)) and len(ds.items.keys) == len(set(ds.items.keys))
    for seq in ds.sequences:
        assert seq.dtype == np.int64 and len(seq) and seq.min() >= 0 and seq.max() < ds.n_items
    for values in ds.items.fields.values():
        assert all(v is None or (isinstance(v, str) and v.encode("utf-8")) for v in values)


mutation = st.one_of(
    st.tuples(st.just("replace"), st.binary(max_size=400)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.sampled_from(
        ["\x00", "\ufeff", "\u2028", "\u202e", "\x85", "\t", ",", '"', "\n", "\r", "-1", "NaN", "inf", "1e999",
         "\ud800", "\\ud800", "{", "[" * 3000, "x" * 100_000, "\t\t\t\n", "\\"])),
    st.tuples(st.just("truncate"), st.integers(0, 10**6)),
)


def _mutate(text: str, how: tuple) -> bytes:
    if how[0] == "replace":
        return how[1]
    if how[0] == "truncate":
        return text.encode()[: how[1] % (len(text) + 1)]
    at = how[1] % (len(text) + 1)
    return (text[:at] + how[2] + text[at:]).encode("utf-8", "surrogatepass")


@SETTINGS
@given(fmt=st.sampled_from(sorted(GOOD)), target=st.sampled_from(["interactions", "items"]), how=mutation,
       gz=st.booleans(), fallback=st.booleans())
def test_load_dataset_on_mangled_files(tmp_path, fmt, target, how, gz, fallback):
    inter_name, inter_text = GOOD[fmt]
    items_name, items_text = ITEMS[fmt]
    inter, items = tmp_path / inter_name, tmp_path / items_name
    inter.write_text(inter_text, encoding="utf-8")
    items.write_text(items_text, encoding="utf-8")
    broken = inter if target == "interactions" else items
    data = _mutate(inter_text if target == "interactions" else items_text, how)
    broken.write_bytes(gzip.compress(data) if gz else data)
    cfg = DataConfig(format=fmt, path=inter, items_path=items, text_fields=["title"], min_core=0,
                     fallback_encoding="latin-1" if fallback else None)
    try:
        ds = load_dataset(cfg)
    except DataError as err:
        assert str(err).startswith((str(inter), str(items))), err
        return
    _check(ds)


@SETTINGS
@given(refs=st.dictionaries(st.sampled_from(["1", "2", "3", "9", "", "\ud800"]),
                            st.one_of(st.none(), st.integers(), st.floats(), st.text(max_size=20),
                                      st.sampled_from(["../../etc/passwd", "/abs.jpg", "a\x00.jpg", "\\ud800"])),
                            max_size=5),
       template=st.sampled_from(["{}", "posters/{value}.jpg", "{value[0]}", "{value.x}", "{0}{1}"]))
def test_image_map_of_any_json(tmp_path, refs, template):
    seq = tmp_path / "seq.txt"
    seq.write_text(GOOD["s3rec"][1], encoding="utf-8")
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps(refs), encoding="utf-8")
    cfg = DataConfig(format="s3rec", path=seq, min_core=0, text_fields=[],
                     image_map=LookupConfig(path=mapping, template=template), image_root=tmp_path)
    try:
        ds = load_dataset(cfg)
    except DataError as err:
        assert str(err).startswith(str(mapping)), err
        return
    _check(ds)
    assert all(r is None or isinstance(r, str) for r in ds.items.image_refs)


# --- no lost or half-written artifact -----------------------------------------------------------


def _built_s3rec_run(tmp_path):
    """A run whose data stage is built from a good S3-Rec file: (the file, the config)."""
    from cemg.pipeline import run_pipeline

    seq = tmp_path / "seq.txt"
    seq.write_text(GOOD["s3rec"][1], encoding="utf-8")
    cfg = CEMGConfig(run_dir=tmp_path / "run", cache_dir=tmp_path / "cache",
                     data=DataConfig(format="s3rec", path=seq, min_core=0, text_fields=[]))
    run_pipeline(cfg, stop_after="data")
    return seq, cfg


def test_failing_rerun_keeps_the_last_good_data_artifact(tmp_path):
    from cemg.pipeline import run_pipeline

    seq, cfg = _built_s3rec_run(tmp_path)
    folder = tmp_path / "run" / "data"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    seq.write_bytes(b"1 1 2\n2 \xff\xfe 3\n" + b"\x00" * 50)  # changed size: the stage must rebuild
    with pytest.raises(DataError, match="seq.txt, line 2"):
        run_pipeline(cfg, stop_after="data")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")) == []
    assert InteractionDataset.load(folder).user_keys == ["1", "2", "3"]


def test_the_data_stage_follows_the_file_content_not_its_mtime(tmp_path):
    import os

    from cemg.pipeline import run_pipeline

    seq, cfg = _built_s3rec_run(tmp_path)
    manifest = tmp_path / "run" / "data" / "manifest.json"
    built = manifest.read_text()
    os.utime(seq, ns=(10**18, 10**18))  # a restored copy: same bytes, new mtime
    run_pipeline(cfg, stop_after="data")
    assert manifest.read_text() == built
    seq.write_text(GOOD["s3rec"][1].replace("1", "4", 1), encoding="utf-8")  # same size, new content
    os.utime(seq, ns=(10**18, 10**18))
    assert run_pipeline(cfg, stop_after="data").hashes["data"] != json.loads(built)["inputs_hash"]


def test_cli_reports_bad_input_in_one_line(tmp_path, monkeypatch, capsys):
    from cemg import cli

    seq = tmp_path / "seq.txt"
    seq.write_text("1 1 2\n2 3 \u20282\n", encoding="utf-8")
    monkeypatch.setattr(sys, "argv", ["cemg", "data", "stats", "-q", "-s", "data.format=s3rec",
                                      "-s", f"data.path={seq}", "-s", "data.min_core=0"])
    with pytest.raises(SystemExit) as done:
        cli.main()
    err = capsys.readouterr().err
    assert done.value.code == 2
    assert "Traceback" not in err and "seq.txt" in err and "line 2" in err
