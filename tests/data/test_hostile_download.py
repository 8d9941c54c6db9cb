"""Hostile content in what `cemg data download` fetches (issue #8): the format checks, the Python-
literal metadata archive, datamaps.json and the items file written from them. Transport is faked
(tests/data/test_download.py covers sockets, resume and retries): only the bytes are hostile here."""

from __future__ import annotations

import gzip
import io
import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cemg.data import download as dl
from cemg.data.download import DownloadError, Sources, download_amazon
from cemg.data.readers import read_item_table

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(data=st.binary(max_size=2000), gz=st.booleans())
def test_format_checks_answer_for_any_bytes(tmp_path, data, gz):
    path = tmp_path / "blob"
    path.write_bytes(gzip.compress(data) if gz else data)
    for check in (dl.check_gzip, dl.check_image, dl.check_datamaps, dl.check_sequences):
        problem = check(path)
        assert problem is None or (isinstance(problem, str) and problem)


def test_deeply_nested_datamaps_is_a_problem_not_a_crash(tmp_path):
    path = tmp_path / "datamaps.json"
    path.write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    assert "nested too deeply" in dl.check_datamaps(path)


# --- the metadata archive: one Python literal per line ------------------------------------------

WANTED = {"W1", "W2"}
literal_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=8,
)
meta_line = st.one_of(
    # an ordinary record of a wanted or unwanted ASIN, with odd values
    st.builds(lambda asin, v: repr({"asin": asin, "title": v}), st.sampled_from(["W1", "W2", "X9"]), literal_values),
    # the wanted ASIN only inside another field, the record's own asin hostile
    st.builds(lambda own: repr({"note": "'asin': 'W1'", "asin": own}),
              st.sampled_from(["../../evil", "/etc/x", "W1/../../y", "X9", ""])),
    st.just("{[1]: \"'asin': 'W1'\"}"),  # unhashable key
    st.just("(\"'asin': 'W2'\", 1)"),  # a tuple, not a dict
    st.just("{'asin': 'W1', " + "[" * 5000 + "]" * 5000 + "}"),  # nested beyond the parser
    st.just("{'asin': 'W1', 'x': __import__('os')}"),  # code, not a literal
    st.just("  {'asin': 'W2'}"),  # indented
    st.builds(lambda s: f"{{'asin': 'W1', 't': {s!r}}}", st.text(st.characters(categories=["Cs"]), max_size=3)),
    st.text(max_size=40).map(lambda t: t.replace("\n", " ") + " 'asin': 'W1' "),
)


@SETTINGS
@given(lines=st.lists(meta_line, min_size=1, max_size=6), latin1=st.booleans())
def test_meta_archive_keeps_only_wanted_records_or_names_the_line(tmp_path, lines, latin1):
    text = "\n".join(lines) + "\n"
    raw = text.encode("utf-8", "surrogatepass")
    if latin1:
        raw += "{'asin': 'W2', 'title': 'caf\xe9'}\n".encode("latin-1")  # not UTF-8
    path = tmp_path / "meta_X.json.gz"
    path.write_bytes(gzip.compress(raw))
    try:
        meta = dl._read_meta(path, WANTED)
    except DownloadError as err:
        assert str(err).startswith(str(path)) and err.line is not None and 1 <= err.line <= len(lines) + 1
        return
    assert set(meta) <= WANTED
    assert all(isinstance(r, dict) and r["asin"] == asin for asin, r in meta.items())


def test_corrupt_meta_archive_is_a_download_error(tmp_path):
    path = tmp_path / "meta_X.json.gz"
    path.write_bytes(gzip.compress(b"{'asin': 'W1'}\n" * 1000)[:60])
    with pytest.raises(DownloadError, match="not readable gzip"):
        dl._read_meta(path, WANTED)


# --- datamaps.json ------------------------------------------------------------------------------

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=12)),
    lambda inner: st.one_of(st.lists(inner, max_size=2), st.dictionaries(st.text(max_size=3), inner, max_size=2)),
    max_leaves=5,
)


@SETTINGS
@given(asins=st.lists(st.one_of(json_values, st.sampled_from(["../a", "a/b", "..", "B000X", "7806397051", "A\x00"])),
                      min_size=1, max_size=5))
def test_datamaps_values_must_be_asins(tmp_path, asins):
    path = tmp_path / "datamaps.json"
    path.write_text(json.dumps({"id2item": {str(i + 1): a for i, a in enumerate(asins)}}), encoding="utf-8")
    try:
        mapped = dl._asins(path, list(range(1, len(asins) + 1)))
    except DownloadError as err:
        assert err.field == "id2item" and str(err).startswith(str(path))
        return
    for asin in mapped.values():
        assert isinstance(asin, str) and "/" not in asin and ".." not in asin and "\x00" not in asin


def test_sequence_ids_past_int64(tmp_path):
    path = tmp_path / "X.txt"
    path.write_text("1 99999999999999999999999 3\n", encoding="utf-8")
    assert dl._sequence_items(path) == [3, 99999999999999999999999]


# --- end to end, transport faked ----------------------------------------------------------------


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (4, 4), (9, 99, 199)).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture
def fake_web(monkeypatch):
    """Fetcher.fetch serving a dict of URL -> bytes, with the real verification step."""
    files: dict[str, bytes] = {}

    def fetch(self, url, dest, sha256=None, check=None, progress=True):
        if url not in files:
            raise dl.NotFoundError(url, "HTTP 404")
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")
        part.write_bytes(files[url])
        problem = dl._problem(part, sha256, check)
        if problem is not None:
            part.unlink()
            raise dl.CorruptError(url, problem)
        part.replace(dest)
        return dest

    monkeypatch.setattr(dl.Fetcher, "fetch", fetch)
    return files


def _publish(files: dict[str, bytes], id2item: dict, meta_lines: list[str]) -> Sources:
    base = "http://mirror.test"
    files[f"{base}/s3rec/Toy.txt"] = b"1 1 2\n2 2 1\n"
    files[f"{base}/maps/datamaps.json"] = json.dumps({"id2item": id2item}).encode()
    files[f"{base}/meta/meta_Toy.json.gz"] = gzip.compress("\n".join(meta_lines).encode("utf-8", "surrogatepass"))
    files[f"{base}/img/a.png"] = _png()
    return Sources(f"{base}/s3rec", f"{base}/meta", f"{base}/maps/datamaps.json")


def _files_under(root: Path) -> set[Path]:
    return {Path(d) / f for d, _, fs in os.walk(root) for f in fs}


@pytest.mark.parametrize("asin", ["../../evil", "/tmp/evil", "a/b", "..", "x\x00y"])
def test_hostile_asin_in_datamaps_writes_nothing_outside(fake_web, tmp_path, asin):
    sources = _publish(fake_web, {"1": "A1", "2": asin},
                       [repr({"asin": a, "title": "t", "imUrl": "http://mirror.test/img/a.png"}) for a in ("A1", asin)])
    before = _files_under(tmp_path)
    with pytest.raises(DownloadError, match="not an ASIN") as err:
        download_amazon("Toy", tmp_path / "out", sources, digests={}, workers=1, backoff=0)
    assert err.value.field == "id2item"
    assert {p for p in _files_under(tmp_path) - before if not p.is_relative_to(tmp_path / "out")} == set()


def test_asin_smuggled_through_another_field_is_ignored(fake_web, tmp_path):
    # The regex pre-filter sees 'A2' inside `note`; the record's own asin must not become a file name.
    smuggled = repr({"note": "'asin': 'A2'", "asin": "../../evil", "imUrl": "http://mirror.test/img/a.png"})
    good = repr({"asin": "A1", "title": "Robot \ud83d\ude00 half \ud800", "imUrl": "http://mirror.test/img/a.png"})
    sources = _publish(fake_web, {"1": "A1", "2": "A2"}, [good, smuggled])
    out = tmp_path / "deep" / "out"
    report = download_amazon("Toy", out, sources, digests={}, workers=1, backoff=0)
    assert report.items_with_metadata == 1 and report.images_ok == 1
    assert sorted(p.name for p in (out / "images").iterdir()) == ["A1.png"]
    assert not (tmp_path / "evil.png").exists() and not (tmp_path / "deep" / "evil.png").exists()
    # The items file is valid UTF-8 JSON lines: the surrogate pair became one emoji, the lone half U+FFFD.
    items = read_item_table(out / "items.jsonl.gz", "item_id", ["title"], "image")
    assert items["title"].tolist() == ["Robot \U0001f600 half \ufffd", None]
