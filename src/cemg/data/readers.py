"""Readers: each turns one on-disk format into raw interactions or an item metadata table.

Raw interactions are a DataFrame with columns
    user (str key), item (str key), timestamp (float, NaN where the source has none),
    order (int64: the row's position in the file, the tie-breaker of a stable chronological sort).
Item metadata is a DataFrame with column `item` (str key), one column per requested text field
(str or None) and `image` (a path or URL, or None) when the source has an image column.

Formats: S3-Rec/P5 sequence files, RecBole atomic files (.inter/.item), generic CSV/TSV/Parquet
tables, JSON lines item files. gzip is detected from the file's magic bytes, whatever its name.
Bad input raises DataError naming the file and the line or field. Two things are skipped rather than
fatal, and are counted and logged: blank lines, and (in lookups) rows whose `where` flag is false.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import math
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cemg.config import LookupConfig
from cemg.data.errors import DataError

log = logging.getLogger(__name__)

INTERACTION_COLUMNS = ["user", "item", "timestamp", "order"]
# RecBole's atomic-file field types (recbole.utils.enum_type.FeatureType).
RECBOLE_TYPES = {"token", "token_seq", "float", "float_seq"}
_GZIP_MAGIC = b"\x1f\x8b"
_FALSE = {"", "0", "false", "f", "no", "n", "none", "nan", "null"}
_ASCII_SPACE = re.compile(r"[ \t\r\f\v]+")


# --- bytes and text ---------------------------------------------------------------------------


def base_suffix(path: Path) -> str:
    """The format suffix with a trailing .gz removed: `a.jsonl.gz` -> `.jsonl`."""
    path = Path(path)
    if path.suffix.lower() == ".gz":
        path = path.with_suffix("")
    return path.suffix.lower()


def read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when it starts with the gzip magic bytes."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise DataError(path, f"not a valid gzip file ({err})") from None
    if not raw.strip():
        raise DataError(path, "file is empty")
    return raw


def read_text(path: Path, encoding: str = "utf-8", fallback: str | None = None) -> str:
    """Decode the file with `encoding`; if that fails, with `fallback` (logged) or raise DataError
    naming the first undecodable line."""
    raw = read_bytes(path)
    codec = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    try:
        return raw.decode(codec)
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        if fallback is None:
            raise DataError(
                path, f"not valid {encoding} text (byte {raw[err.start:err.start + 1]!r}); set "
                "data.fallback_encoding to read it anyway", line=line,
            ) from None
        log.warning("%s: not valid %s from line %d on; decoding the file as %s", path, encoding, line, fallback)
        try:
            return raw.decode(fallback)
        except UnicodeDecodeError as err2:
            line = raw.count(b"\n", 0, err2.start) + 1
            raise DataError(path, f"not valid {encoding} or {fallback} text", line=line) from None


def physical_lines(text: str) -> list[str]:
    """The file's lines as an editor numbers them. str.splitlines() also breaks at U+2028, U+0085,
    form feeds and other separators that may sit inside a JSON string or an id, which would split
    one record in two and shift every later line number."""
    lines = text.split("\n")
    if lines[-1] == "":  # the terminator of the last line, not a line of its own
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def has_lone_surrogate(text: str) -> bool:
    """True for strings that cannot be written as UTF-8: JSON's `\\ud800` escapes decode to such
    halves of a UTF-16 pair, which later crash any encoder, file write or hash of the text."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _log_blank(path: Path, blank: int) -> None:
    if blank:
        log.info("%s: skipped %d blank line(s)", path, blank)


# --- delimited tables -------------------------------------------------------------------------


@dataclass
class _Rows:
    """A delimited file read as strings: header, one list per column, and each row's line number."""

    path: Path
    header: list[str]
    columns: dict[str, list[str]]
    lines: list[int]

    def require(self, name: str, what: str = "column") -> list[str]:
        if name not in self.columns:
            raise DataError(self.path, f"missing required {what}; the header has {self.header}", field=name)
        return self.columns[name]


def _delimiter_for(path: Path, delimiter: str | None) -> str:
    if delimiter is not None:
        return delimiter
    return "\t" if base_suffix(path) in (".tsv", ".tab", ".inter", ".item", ".user") else ","


def _read_delimited(path: Path, delimiter: str, encoding: str, fallback: str | None, typed: bool) -> _Rows:
    """Read with the csv module rather than pandas: it reports the line of a row with the wrong
    number of fields (pandas silently pads short rows with NaN), and its quoting matches what
    RecBole's reader accepts (the Amazon .item files quote fields that contain tabs)."""
    text = read_text(path, encoding, fallback)
    csv.field_size_limit(2**31 - 1)  # item descriptions can exceed the 128 KiB default
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    rows: list[list[str]] = []
    lines: list[int] = []
    blank = 0
    try:
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                blank += 1
                continue
            if header is None:
                header = _parse_header(path, row, reader.line_num, typed)
                continue
            if len(row) != len(header):
                raise DataError(path, f"expected {len(header)} fields, found {len(row)}", line=reader.line_num)
            rows.append(row)
            lines.append(reader.line_num)
    except csv.Error as err:
        raise DataError(path, f"malformed delimited text ({err})", line=reader.line_num) from None
    if header is None:
        raise DataError(path, "file is empty")
    if not rows:
        raise DataError(path, "has a header but no rows")
    _log_blank(path, blank)
    columns = {name: [r[j] for r in rows] for j, name in enumerate(header)}
    return _Rows(path, header, columns, lines)


def _parse_header(path: Path, row: list[str], line: int, typed: bool) -> list[str]:
    names = []
    for cell in row:
        cell = cell.strip()
        if typed:
            # RecBole atomic headers are `name:type`, e.g. `item_id:token`, `movie_title:token_seq`.
            name, sep, kind = cell.partition(":")
            if not sep:
                raise DataError(path, "RecBole header fields must look like name:type", line=line, field=cell)
            if kind not in RECBOLE_TYPES:
                raise DataError(path, f"unknown RecBole type {kind!r}; expected one of {sorted(RECBOLE_TYPES)}",
                                line=line, field=cell)
            cell = name
        if not cell:
            raise DataError(path, "empty column name in the header", line=line)
        if cell in names:
            raise DataError(path, "duplicate column in the header", line=line, field=cell)
        names.append(cell)
    return names


def _read_parquet(path: Path) -> pd.DataFrame:
    if not Path(path).is_file():
        raise DataError(path, "file not found")
    try:
        frame = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several unrelated types for a bad file
        raise DataError(path, f"not a readable Parquet file ({err})") from None
    if frame.empty:
        raise DataError(path, "file is empty")
    return frame


def _key_strings(path: Path, values: pd.Series, name: str) -> list[str]:
    """Keys as strings; integer-valued floats (Parquet int columns with nulls) lose their `.0`."""
    missing = values.isna().to_numpy()
    if missing.any():
        row = int(np.flatnonzero(missing)[0])
        raise DataError(path, f"missing value in row {row}", field=name)
    if pd.api.types.is_float_dtype(values):
        infinite = ~np.isfinite(values.to_numpy(dtype=np.float64))
        if infinite.any():
            row = int(np.flatnonzero(infinite)[0])
            raise DataError(path, f"non-finite key {values.iloc[row]!r} in row {row}", field=name)
        # beyond 2**53 floats no longer hold every integer, and int64 casts would overflow
        if bool((values == values.round()).all()) and bool((values.abs() < 2**53).all()):
            values = values.astype("int64")
    return values.astype(str).tolist()


def _parse_times(path: Path, raw: list, lines: list[int] | None, name: str) -> np.ndarray:
    """Timestamps as float seconds; blanks become NaN, anything else non-numeric is an error."""
    text = pd.Series(raw, dtype=object).astype(str).str.strip()
    blank = pd.Series(raw, dtype=object).isna() | text.isin(["", "nan", "NaN", "None"])
    times = pd.to_numeric(text.where(~blank, None), errors="coerce")
    values = times.to_numpy(dtype=np.float64)
    # inf (or 1e400) would sort after every real time and pass for one; NaN is reserved for "no time".
    bad = ((times.isna() & ~blank).to_numpy()) | np.isinf(values)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        what = "a finite number" if np.isinf(values[i]) else "a number"
        if lines is None:
            raise DataError(path, f"row {i}: timestamp {raw[i]!r} is not {what}", field=name)
        raise DataError(path, f"timestamp {raw[i]!r} is not {what}", line=lines[i], field=name)
    return values


def _interaction_frame(users: list[str], items: list[str], times: np.ndarray | None) -> pd.DataFrame:
    n = len(users)
    return pd.DataFrame(
        {
            "user": pd.Series(users, dtype=object),
            "item": pd.Series(items, dtype=object),
            "timestamp": np.full(n, np.nan) if times is None else times,
            "order": np.arange(n, dtype=np.int64),
        }
    )


# --- interactions -----------------------------------------------------------------------------


def read_s3rec_sequences(path: Path) -> pd.DataFrame:
    """An S3-Rec/P5 sequence file: `user item item ...` per line, oldest item first; ids are
    non-negative integers (kept as their strings). The file has no timestamps: its order is the time."""
    path = Path(path)
    text = read_text(path, "utf-8", None)  # only ASCII digits are valid, so no fallback applies
    users: list[str] = []
    items: list[str] = []
    blank = 0
    for lineno, line in enumerate(physical_lines(text), 1):
        # ASCII whitespace only: Unicode spaces (U+00A0, U+2028, ...) inside a token make it an
        # invalid id rather than silently splitting it into two ids.
        parts = _ASCII_SPACE.split(line.strip(" \t\r\f\v"))
        if parts == [""]:
            blank += 1
            continue
        if len(parts) < 2:
            raise DataError(path, "expected `user item [item ...]`, found a user with no items", line=lineno)
        for col, token in enumerate(parts):
            if not (token.isascii() and token.isdigit()):
                field = "user" if col == 0 else f"item {col}"
                raise DataError(path, f"id {token!r} is not a non-negative integer", line=lineno, field=field)
        users.extend([parts[0]] * (len(parts) - 1))
        items.extend(parts[1:])
    if not users:
        raise DataError(path, "file is empty")
    _log_blank(path, blank)
    return _interaction_frame(users, items, None)


def read_interaction_table(
    path: Path,
    user_column: str = "user",
    item_column: str = "item",
    time_column: str | None = "timestamp",
    *,
    time_required: bool = False,
    recbole: bool = False,
    delimiter: str | None = None,
    encoding: str = "utf-8",
    fallback: str | None = None,
) -> pd.DataFrame:
    """Interactions from a CSV/TSV/Parquet table or a RecBole `.inter` file (`recbole=True`: typed
    `name:type` header, tab-separated). Without a time column (absent and not `time_required`)
    timestamps are NaN and file order is the chronology."""
    path = Path(path)
    if base_suffix(path) == ".parquet":
        frame = _read_parquet(path)
        for name in (user_column, item_column):
            if name not in frame.columns:
                raise DataError(path, f"missing required column; the table has {list(frame.columns)}", field=name)
        users = _key_strings(path, frame[user_column], user_column)
        items = _key_strings(path, frame[item_column], item_column)
        times = None
        if time_column and time_column in frame.columns:
            times = _parse_times(path, frame[time_column].tolist(), None, time_column)
        elif time_column and time_required:
            raise DataError(path, f"missing required column; the table has {list(frame.columns)}", field=time_column)
        return _interaction_frame(users, items, times)

    rows = _read_delimited(path, _delimiter_for(path, delimiter), encoding, fallback, typed=recbole)
    users = rows.require(user_column)
    items = rows.require(item_column)
    for name, values in ((user_column, users), (item_column, items)):
        for value, line in zip(values, rows.lines):
            if not value.strip():
                raise DataError(path, "empty id", line=line, field=name)
    times = None
    if time_column and (time_column in rows.columns or time_required):
        times = _parse_times(path, rows.require(time_column), rows.lines, time_column)
    return _interaction_frame([u.strip() for u in users], [i.strip() for i in items], times)


# --- item metadata ----------------------------------------------------------------------------


def text_value(value: Any) -> str | None:
    """A metadata value as text: lists (e.g. Amazon categories) joined with ', ', blanks -> None."""
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (list, tuple, np.ndarray)):
        parts = [t for t in (text_value(v) for v in value) if t]
        return ", ".join(parts) or None
    text = str(value).strip()
    return text or None


def read_item_table(
    path: Path,
    key: str,
    text_fields: list[str],
    image_column: str | None = None,
    *,
    image_required: bool = False,
    delimiter: str | None = None,
    encoding: str = "utf-8",
    fallback: str | None = None,
) -> pd.DataFrame:
    """Item metadata from JSON lines (.jsonl/.json), a RecBole `.item` file, CSV/TSV or Parquet.

    Returns columns `item`, each of `text_fields`, and `image` when `image_column` is present in the
    file (optional unless `image_required`: a dataset without images simply has none). A requested
    text field absent from the file, a missing key, or a duplicate key raise DataError.
    """
    path = Path(path)
    suffix = base_suffix(path)
    if suffix in (".jsonl", ".json", ".ndjson"):
        columns, lines, present = _read_json_lines(path, key, text_fields, image_column, encoding, fallback)
    elif suffix == ".parquet":
        frame = _read_parquet(path)
        present = set(frame.columns)
        if key not in present:
            raise DataError(path, f"missing item key column; the table has {list(frame.columns)}", field=key)
        columns = {name: frame[name].tolist() for name in [key, *text_fields, image_column] if name in present}
        columns[key] = _key_strings(path, frame[key], key)
        lines = None
    else:
        rows = _read_delimited(path, _delimiter_for(path, delimiter), encoding, fallback, typed=suffix == ".item")
        rows.require(key, "item key column")
        present = set(rows.columns)
        columns = {name: rows.columns[name] for name in [key, *text_fields, image_column] if name in present}
        columns[key] = [k.strip() for k in columns[key]]
        lines = rows.lines

    for name in text_fields:
        if name not in present:
            raise DataError(path, f"text field not found in the item table (it has {sorted(present)})", field=name)
    if image_required and image_column not in present:
        raise DataError(path, f"image column not found in the item table (it has {sorted(present)})",
                        field=image_column)
    keys = columns[key]
    seen: dict[str, int] = {}
    unit = "row" if lines is None else "line"
    for i, k in enumerate(keys):
        where = i if lines is None else lines[i]
        if not k:
            raise DataError(path, f"empty item key ({unit} {where})", line=None if lines is None else where, field=key)
        if k in seen:
            raise DataError(path, f"duplicate item key {k!r} ({unit} {where}; first at {unit} {seen[k]})",
                            line=None if lines is None else where, field=key)
        seen[k] = where
    out = {"item": pd.Series(keys, dtype=object)}
    for name in text_fields:
        out[name] = pd.Series([text_value(v) for v in columns[name]], dtype=object)
    if image_column is not None and image_column in present:
        out["image"] = pd.Series([text_value(v) for v in columns[image_column]], dtype=object)
    elif image_column is not None:
        log.info("%s: no %r column; items have no images from this table", path, image_column)
    for name, column in out.items():
        for i, value in enumerate(column):
            if value is not None and has_lone_surrogate(value):
                where = i if lines is None else lines[i]
                raise DataError(path, f"invalid Unicode: a lone UTF-16 surrogate ({unit} {where})",
                                line=None if lines is None else where, field=key if name == "item" else name)
    return pd.DataFrame(out)


def _read_json_lines(
    path: Path, key: str, text_fields: list[str], image_column: str | None, encoding: str, fallback: str | None
) -> tuple[dict[str, list], list[int], set[str]]:
    text = read_text(path, encoding, fallback)
    wanted = [key, *text_fields, *([image_column] if image_column else [])]
    columns: dict[str, list] = {name: [] for name in wanted}
    lines: list[int] = []
    present: set[str] = set()
    blank = 0
    for lineno, line in enumerate(physical_lines(text), 1):
        if not line.strip():
            blank += 1
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(path, f"not valid JSON ({err.msg} at column {err.colno})", line=lineno) from None
        except RecursionError:
            raise DataError(path, "JSON nested too deeply to read", line=lineno) from None
        if not isinstance(record, dict):
            raise DataError(path, f"expected a JSON object, found {type(record).__name__}", line=lineno)
        if record.get(key) is None:
            raise DataError(path, "record has no item key", line=lineno, field=key)
        present.update(record)
        for name in wanted:
            columns[name].append(record.get(name))
        lines.append(lineno)
    if not lines:
        raise DataError(path, "file is empty")
    _log_blank(path, blank)
    columns[key] = [_json_key(path, k, line, key) for k, line in zip(columns[key], lines)]
    return columns, lines, present


def _json_key(path: Path, value: Any, line: int, name: str) -> str:
    """A JSON item key as text. Only strings and integers (or integral floats, as pandas writes
    them) are keys: `NaN`, `Infinity` (which Python's json accepts), booleans, lists and objects
    would otherwise become keys such as 'nan' or "[1, 2]" that match nothing."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    raise DataError(path, f"item key must be a string or an integer, found {json.dumps(value)[:40]}",
                    line=line, field=name)


# --- lookups ----------------------------------------------------------------------------------


def read_lookup(spec: LookupConfig, encoding: str = "utf-8", fallback: str | None = None) -> dict[str, str]:
    """A key -> `template.format(value)` map from a table (columns `key`, `value`, optional `where`
    flag) or a JSON object (optionally the sub-object `field`, e.g. P5 datamaps' `item2id`)."""
    path = Path(spec.path)
    if base_suffix(path) == ".json":
        return _read_json_lookup(spec, encoding, fallback)
    for option in ("key", "value"):
        if getattr(spec, option) is None:
            raise DataError(path, f"a table lookup needs `{option}` (the column name)", field=option)
    if base_suffix(path) == ".parquet":
        frame = _read_parquet(path)
        columns = {c: [text_value(v) or "" for v in frame[c].tolist()] for c in frame.columns}
        rows = _Rows(path, list(frame.columns), columns, list(range(len(frame))))
        lines_are_rows = True
    else:
        rows = _read_delimited(path, _delimiter_for(path, None), encoding, fallback, typed=False)
        lines_are_rows = False
    keys = rows.require(spec.key)
    values = rows.require(spec.value)
    flags = rows.require(spec.where) if spec.where else None
    out: dict[str, str] = {}
    skipped = 0
    for i, (k, v) in enumerate(zip(keys, values)):
        k, v = k.strip(), v.strip()
        if (flags is not None and flags[i].strip().lower() in _FALSE) or not v:
            skipped += 1
            continue
        if k in out:
            raise DataError(path, f"duplicate key {k!r}", line=None if lines_are_rows else rows.lines[i], field=spec.key)
        out[k] = _apply_template(spec, v)
    if skipped:
        log.info("%s: %d of %d rows have no value%s; their keys map to nothing", path, skipped, len(keys),
                 f" or a false {spec.where!r}" if spec.where else "")
    return out


def _read_json_lookup(spec: LookupConfig, encoding: str, fallback: str | None) -> dict[str, str]:
    path = Path(spec.path)
    try:
        data = json.loads(read_text(path, encoding, fallback))
    except json.JSONDecodeError as err:
        raise DataError(path, f"not valid JSON ({err.msg})", line=err.lineno) from None
    except RecursionError:
        raise DataError(path, "JSON nested too deeply to read") from None
    if spec.field is not None:
        if not isinstance(data, dict) or spec.field not in data:
            raise DataError(path, "JSON lookup object not found", field=spec.field)
        data = data[spec.field]
    if not isinstance(data, dict):
        raise DataError(path, "a JSON lookup must be an object of key: value", field=spec.field)
    out = {str(k): _apply_template(spec, v) for k, v in data.items() if text_value(v) is not None}
    for k, v in out.items():
        if has_lone_surrogate(k) or has_lone_surrogate(v):
            raise DataError(path, f"invalid Unicode: a lone UTF-16 surrogate in the entry {k!r}", field=spec.field)
    return out


def _apply_template(spec: LookupConfig, value: Any) -> str:
    """`{}` or `{value}` in the template stands for the looked-up value."""
    try:
        return spec.template.format(value, value=value)
    except (KeyError, IndexError, ValueError, AttributeError, TypeError) as err:
        raise DataError(spec.path, f"bad lookup template {spec.template!r} ({err!r}); use {{}} or {{value}}",
                        field="template") from None
