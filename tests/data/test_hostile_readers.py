"""Hostile input for every reader (issue #8): random bytes, huge lines, bad ids, NaN/inf, Unicode
edge cases and wrong column counts. A reader either returns well-formed data or raises DataError
whose message starts with the file's path and names the line or field; nothing else escapes."""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cemg.config import LookupConfig
from cemg.data.errors import DataError
from cemg.data.readers import (
    INTERACTION_COLUMNS,
    has_lone_surrogate,
    read_interaction_table,
    read_item_table,
    read_lookup,
    read_s3rec_sequences,
    read_text,
)

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Characters that break naive readers: BOM, NUL, RTL/LTR marks and overrides, Unicode line and
# paragraph separators (str.splitlines breaks on them), NEL, form feed, no-break and ideographic
# spaces, a combining mark, non-ASCII digits, an emoji outside the BMP.
NASTY = ["\ufeff", "\x00", "\u202e", "\u200f", "\u2028", "\u2029", "\x85", "\x0c", "\x0b", "\x1c",
         "\xa0", "\u3000", "\u0301", "\u0663", "\xb2", "\U0001f600", "\r", '"', "'", "\\"]
nasty_text = st.text(st.one_of(st.sampled_from(NASTY), st.characters(codec="utf-8")), max_size=30)


def outcome(path: Path, call):
    """The reader's result, or None after checking that its DataError names the file."""
    try:
        return call()
    except DataError as err:
        assert str(err).startswith(str(path)), err
        return None


# --- any bytes at all -------------------------------------------------------------------------

SUFFIXES = ["seq.txt", "inter.csv", "inter.tsv", "x.inter", "x.item", "items.jsonl", "t.parquet", "lookup.json"]


@SETTINGS
@given(data=st.binary(max_size=3000), name=st.sampled_from(SUFFIXES), gz=st.booleans(), fallback=st.booleans())
def test_random_bytes_give_data_or_a_data_error(tmp_path, data, name, gz, fallback):
    path = tmp_path / (name + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(data) if gz else data)
    fb = "latin-1" if fallback else None
    if name == "seq.txt":
        frame = outcome(path, lambda: read_s3rec_sequences(path))
    elif name in ("x.item", "items.jsonl"):
        frame = outcome(path, lambda: read_item_table(path, "item_id", ["title"], "image", fallback=fb))
    elif name == "lookup.json":
        frame = outcome(path, lambda: read_lookup(LookupConfig(path=path), fallback=fb))
    else:
        frame = outcome(path, lambda: read_interaction_table(path, recbole=name == "x.inter", fallback=fb))
    if isinstance(frame, pd.DataFrame) and "user" in frame:
        assert list(frame.columns) == INTERACTION_COLUMNS
        assert all(isinstance(k, str) and k for k in frame["user"]) and all(frame["item"].map(bool))


@SETTINGS
@given(junk=st.binary(min_size=1, max_size=200), keep=st.integers(0, 100))
def test_damaged_gzip_is_a_data_error(tmp_path, junk, keep):
    path = tmp_path / "seq.txt.gz"
    whole = gzip.compress(b"1 2 3\n2 3 4\n" * 20)
    path.write_bytes(whole[: 2 + keep] + junk)  # gzip magic, then truncated or followed by garbage
    frame = outcome(path, lambda: read_s3rec_sequences(path))
    assert frame is None or set(frame["user"]) <= {"1", "2"}


# --- S3-Rec sequence files ----------------------------------------------------------------------

ids = st.integers(0, 10**30)  # ids past int64 are still ids (kept as their digits)
sequences = st.lists(st.tuples(ids, st.lists(ids, min_size=1, max_size=6)), min_size=1, max_size=12)
ascii_gap = st.text(" \t\f\v", min_size=1, max_size=3)


@SETTINGS
@given(seqs=sequences, gap=ascii_gap, crlf=st.booleans(), bom=st.booleans(), blank_every=st.integers(0, 4))
def test_s3rec_round_trip_with_odd_whitespace(tmp_path, seqs, gap, crlf, bom, blank_every):
    lines = []
    for n, (user, items) in enumerate(seqs):
        if blank_every and n % blank_every == 0:
            lines.append(gap)
        lines.append(gap.join(str(t) for t in [user, *items]))
    text = ("\r\n" if crlf else "\n").join(lines) + "\n"
    path = tmp_path / "seq.txt"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    frame = read_s3rec_sequences(path)
    assert frame["user"].tolist() == [str(u) for u, items in seqs for _ in items]
    assert frame["item"].tolist() == [str(i) for _, items in seqs for i in items]


# Negative, fractional, signed, hex, non-ASCII digits, ids glued by Unicode separators or spaces
# (U+2028, NEL, no-break space), NUL, RTL override, a BOM in the middle of the file.
BAD_IDS = ["-1", "1.5", "1e3", "+3", "0x1f", "\u0663", "\xb2", "\uff11", "1\u20282", "1\x852", "1\xa02",
           "1\x002", "\u202e12", "nan", "inf", "\ufeff1"]


@SETTINGS
@given(seqs=sequences, bad=st.sampled_from(BAD_IDS), where=st.integers(0, 10**6), pos=st.integers(0, 10**6))
def test_s3rec_bad_id_is_reported_on_its_own_line(tmp_path, seqs, bad, where, pos):
    lines = [" ".join(str(t) for t in [u, *items]) for u, items in seqs]
    row = where % len(lines)
    tokens = lines[row].split(" ")
    col = pos % len(tokens)
    if bad == "\ufeff1" and (row, col) == (0, 0):
        row = col = 1 if len(lines) > 1 else 0  # at the very start a BOM is the file's encoding mark
        if row == 0:
            return
        tokens = lines[row].split(" ")
    tokens[col] = bad
    lines[row] = " ".join(tokens)
    path = tmp_path / "seq.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        read_s3rec_sequences(path)
    assert err.value.line == row + 1, err.value
    assert err.value.field == ("user" if col == 0 else f"item {col}")


@SETTINGS
@given(seqs=sequences, where=st.integers(0, 10**6))
def test_s3rec_user_without_items(tmp_path, seqs, where):
    lines = [" ".join(str(t) for t in [u, *items]) for u, items in seqs]
    row = where % len(lines)
    lines[row] = lines[row].split(" ")[0]
    path = tmp_path / "seq.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match="no items") as err:
        read_s3rec_sequences(path)
    assert err.value.line == row + 1


def test_s3rec_unicode_separators_do_not_split_a_line(tmp_path):
    # str.splitlines() would read this as two users on line 1 and report line 2's error as line 3.
    path = tmp_path / "seq.txt"
    path.write_text("1 2\u20283 4\n5 x\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"line 1, field 'item 1'"):
        read_s3rec_sequences(path)


def test_s3rec_huge_line(tmp_path):
    path = tmp_path / "seq.txt"
    path.write_text("7 " + " ".join(str(i) for i in range(200_000)) + "\n", encoding="utf-8")  # ~1.3 MB line
    frame = read_s3rec_sequences(path)
    assert len(frame) == 200_000 and frame["item"].iloc[-1] == "199999"


# --- delimited interaction tables ---------------------------------------------------------------

key = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), min_size=0, max_size=12)
times = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(10**20), 10**20))


@SETTINGS
@given(rows=st.lists(st.tuples(key, key, times), min_size=1, max_size=15), delim=st.sampled_from([",", "\t", ";"]))
def test_csv_interactions_keep_any_key_and_reject_bad_values(tmp_path, rows, delim):
    """Written with the csv module, so quotes, delimiters, NUL, BOM-like and RTL characters inside
    keys are legal: each key comes back stripped, or the first empty key / infinite time is named."""
    out = io.StringIO(newline="")
    writer = csv.writer(out, delimiter=delim)
    writer.writerow(["user", "item", "timestamp"])
    writer.writerows([u, i, repr(t) if isinstance(t, float) else t] for u, i, t in rows)
    path = tmp_path / "inter.csv"
    path.write_text(out.getvalue(), encoding="utf-8")
    # the reader checks every user, then every item, then every time
    expected_field = next(
        (name for name, bad in (("user", [not u.strip() for u, _, _ in rows]),
                                ("item", [not i.strip() for _, i, _ in rows]),
                                ("timestamp", [isinstance(t, float) and math.isinf(t) for _, _, t in rows]))
         if any(bad)),
        None,
    )
    if expected_field is not None:
        with pytest.raises(DataError) as err:
            read_interaction_table(path, delimiter=delim)
        assert str(err.value).startswith(str(path)) and err.value.field == expected_field
        return
    frame = read_interaction_table(path, delimiter=delim)
    assert frame["user"].tolist() == [u.strip() for u, _, _ in rows]
    assert frame["item"].tolist() == [i.strip() for _, i, _ in rows]
    expected = np.array([float(t) for _, _, t in rows])
    np.testing.assert_array_equal(frame["timestamp"].to_numpy(), expected)


@SETTINGS
@given(n_rows=st.integers(1, 20), bad_row=st.integers(0, 10**6), width=st.integers(1, 8), recbole=st.booleans())
def test_wrong_column_count_names_the_line(tmp_path, n_rows, bad_row, width, recbole):
    header = ["user_id:token", "item_id:token", "timestamp:float"] if recbole else ["user", "item", "timestamp"]
    rows = [[f"u{n}", f"i{n}", str(n)] for n in range(n_rows)]
    target = bad_row % n_rows
    if width == 3:
        width = 4
    rows[target] = [f"x{k}" for k in range(width)]
    path = tmp_path / ("data.inter" if recbole else "data.tsv")
    path.write_text("\n".join("\t".join(r) for r in [header, *rows]) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=f"expected 3 fields, found {width}") as err:
        read_interaction_table(path, *(("user_id", "item_id") if recbole else ()), recbole=recbole)
    assert err.value.line == target + 2


def test_huge_csv_field_is_read(tmp_path):
    path = tmp_path / "items.csv"
    path.write_text("item,title\n1," + "x" * 5_000_000 + "\n", encoding="utf-8")
    items = read_item_table(path, "item", ["title"])
    assert len(items["title"].iloc[0]) == 5_000_000


@pytest.mark.parametrize("bad", ["inf", "-inf", "1e400", "Infinity"])
def test_infinite_timestamp_names_line_and_field(tmp_path, bad):
    path = tmp_path / "t.csv"
    path.write_text(f"user,item,timestamp\na,b,1\na,c,{bad}\n", encoding="utf-8")
    with pytest.raises(DataError, match="not a finite number") as err:
        read_interaction_table(path)
    assert (err.value.line, err.value.field) == (3, "timestamp")


# --- Parquet ------------------------------------------------------------------------------------


@SETTINGS
@given(keys=st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=8))
def test_parquet_float_keys(tmp_path, keys):
    path = tmp_path / "t.parquet"
    pd.DataFrame({"user": keys, "item": ["a"] * len(keys)}).to_parquet(path)
    frame = outcome(path, lambda: read_interaction_table(path))
    ok = all(math.isfinite(k) for k in keys)
    assert (frame is not None) == ok
    if ok:
        assert all(isinstance(u, str) and u for u in frame["user"])
        if all(k == round(k) and abs(k) < 2**53 for k in keys):
            assert frame["user"].tolist() == [str(int(k)) for k in keys]


# --- JSON lines item tables ---------------------------------------------------------------------

good_key = st.one_of(st.integers(-(10**20), 10**20), st.text(st.characters(codec="utf-8"), min_size=1, max_size=8)
                     .filter(lambda s: s.strip()))


@SETTINGS
@given(records=st.lists(st.tuples(good_key, nasty_text, st.one_of(st.none(), nasty_text)), min_size=1, max_size=10,
                        unique_by=lambda r: r[0].strip() if isinstance(r[0], str) else str(r[0])),
       ascii_only=st.booleans())
def test_jsonl_round_trip_with_unicode_edges(tmp_path, records, ascii_only):
    """U+2028, NEL, BOM, NUL and RTL marks inside JSON strings are legal JSON and must come back intact."""
    if len({r[0].strip() if isinstance(r[0], str) else str(r[0]) for r in records}) < len(records):
        return  # "1" and 1 are the same key
    lines = [json.dumps({"item_id": k, "title": t, "image": img}, ensure_ascii=ascii_only) for k, t, img in records]
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    items = read_item_table(path, "item_id", ["title"], "image")
    assert items["item"].tolist() == [k.strip() if isinstance(k, str) else str(k) for k, _, _ in records]
    assert items["title"].tolist() == [t.strip() or None for _, t, _ in records]
    assert items["image"].tolist() == [(i or "").strip() or None for _, _, i in records]


DEFECTS = {
    "nan key": ('{"item_id": NaN, "title": "x"}', "item_id"),
    "inf key": ('{"item_id": -Infinity, "title": "x"}', "item_id"),
    "bool key": ('{"item_id": true, "title": "x"}', "item_id"),
    "list key": ('{"item_id": [1, 2], "title": "x"}', "item_id"),
    "object key": ('{"item_id": {"a": 1}, "title": "x"}', "item_id"),
    "fractional key": ('{"item_id": 1.5, "title": "x"}', "item_id"),
    "null key": ('{"item_id": null, "title": "x"}', "item_id"),
    "blank key": ('{"item_id": "  ", "title": "x"}', "item_id"),
    "surrogate key": ('{"item_id": "a\\ud800", "title": "x"}', "item_id"),
    "surrogate title": ('{"item_id": "zz", "title": "\\udfff"}', "title"),
    "surrogate image": ('{"item_id": "zz", "title": "x", "image": "\\ud800.jpg"}', "image"),
    "not an object": ('[1, 2, 3]', None),
    "broken json": ('{"item_id": 5, "title": "x"', None),
    "deep nesting": ('{"item_id": 5, "title": ' + "[" * 50_000 + "]" * 50_000 + "}", None),
    "split by U+2028": ('{"item_id": 5,\u2028"title"', None),
}


@SETTINGS
@given(n=st.integers(1, 8), at=st.integers(0, 10**6), defect=st.sampled_from(sorted(DEFECTS)), blank=st.booleans())
def test_jsonl_defect_is_named_by_line_and_field(tmp_path, n, at, defect, blank):
    lines = [json.dumps({"item_id": k + 1, "title": f"t{k}", "image": None}) for k in range(n)]
    if blank:
        lines.insert(0, "   ")
    row = at % (len(lines) + 1)
    text, field = DEFECTS[defect]
    lines.insert(row, text)
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        read_item_table(path, "item_id", ["title"], "image")
    assert str(err.value).startswith(str(path))
    assert err.value.line == row + 1, err.value
    if field is not None:
        assert err.value.field == field


# --- lookups ------------------------------------------------------------------------------------

# JSON text may carry lone surrogates as \\ud800 escapes: json.dumps writes them, json.loads reads them.
surrogate_text = st.text(st.one_of(st.characters(codec="utf-8"), st.characters(categories=["Cs"])), max_size=6)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.floats(), st.integers(), nasty_text, surrogate_text),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.one_of(nasty_text, surrogate_text), inner, max_size=3)),
    max_leaves=12,
)


@SETTINGS
@given(value=json_values, template=st.one_of(st.just("{}"), st.just("img/{value}.jpg"), nasty_text),
       field=st.one_of(st.none(), st.just("id2item")))
def test_json_lookup_of_any_json(tmp_path, value, template, field):
    path = tmp_path / "map.json"
    path.write_text(json.dumps(value), encoding="utf-8")
    result = outcome(path, lambda: read_lookup(LookupConfig(path=path, template=template, field=field)))
    if result is not None:
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in result.items())
        assert not any(has_lone_surrogate(k) or has_lone_surrogate(v) for k, v in result.items())


@pytest.mark.parametrize("template", ["{value.real.x}", "{value[0][1]}", "{0[x]}", "{", "{2}", "{value!z}"])
def test_bad_lookup_template_names_the_field(tmp_path, template):
    path = tmp_path / "map.json"
    path.write_text('{"a": 1}', encoding="utf-8")
    with pytest.raises(DataError) as err:
        read_lookup(LookupConfig(path=path, template=template))
    assert err.value.field == "template"


def test_bom_and_rtl_in_headers_and_keys(tmp_path):
    path = tmp_path / "inter.csv"
    path.write_bytes("\ufeffuser,item,timestamp\n\u202eabc,\u200fdef,1\n".encode("utf-8"))
    frame = read_interaction_table(path)
    assert frame["user"].tolist() == ["\u202eabc"] and frame["item"].tolist() == ["\u200fdef"]
    assert read_text(path).startswith("user")  # the BOM is not part of the first column's name
