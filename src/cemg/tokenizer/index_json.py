"""Semantic ids in and out in the LC-Rec / LETTER `index.json` format.

The format (written by LC-Rec's and LETTER's `generate_indices.py`, read by their TIGER and LC-Rec
pipelines) is one JSON object mapping an item index to the item's tokens, one per level:

    {"0": ["<a_183>", "<b_70>", "<c_232>", "<d_6>"], "1": ["<a_183>", "<b_122>", ...], ...}

Level l's token is its letter (a, b, c, ...) and the code. The file names no codebook sizes, so
reading takes each level's largest code + 1 unless told otherwise.

Their item order and ours. Key k is the k-th item (0-based) in the dataset's item order. Ours is
the internal item id: items in order of first appearance (cemg.data.filtering.build_dataset), which
keeps an S3-Rec/P5 sequence file's own numbering, shifted to 0-based. LC-Rec and LETTER number
S3-Rec data the same way (key k is S3-Rec item k + 1, ../shared/data/SOURCES.md), so by default key
k is our item k, in both directions: what `write_index_json` writes, `read_index_json` reads back.
A file in another order needs `key_map` (file key -> our item key).

Collisions. A published file can give several items the same codes (LETTER's Beauty file does:
its own collision fix stops after 20 rounds). They are made unique as our tokenizer makes its own
(`make_unique`: one more level numbering the items within each group) and counted in the report.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
import string
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cemg.artifacts import atomic_file, file_digest
from cemg.data.errors import DataError
from cemg.data.readers import read_text
from cemg.tokenizer.build import TokenizerArtifact, level_stats, make_unique
from cemg.tokenizer.semantic_ids import SemanticIds

log = logging.getLogger(__name__)

FORMAT = "index.json (LC-Rec / LETTER)"
LEVEL_LETTERS = string.ascii_lowercase  # level l's tokens are <LEVEL_LETTERS[l]_code>
_TOKEN = re.compile(r"<([a-z])_(0|[1-9][0-9]*)>")
_INDEX_KEY = re.compile(r"0|[1-9][0-9]*")
_MAX_CODE = 2**31 - 1  # codes index a vocabulary; anything larger is a corrupt file, not a codebook


def token(level: int, code: int) -> str:
    return f"<{LEVEL_LETTERS[level]}_{code}>"


def read_index_entries(path: Path | str) -> dict[str, list[int]]:
    """The file's entries as {key: codes}, after checking that every value is a list of level
    tokens in level order (<a_..>, <b_..>, ...) and that all items have the same number of levels."""
    path = Path(path)
    text = read_text(path, "utf-8", None)

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in pairs:
            if key in seen:
                raise DataError(path, f"key {key!r} appears twice", field=key)
            seen[key] = value
        return seen

    try:
        data = json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as err:
        raise DataError(path, f"not valid JSON: {err.msg} (column {err.colno})", line=err.lineno) from None
    if not isinstance(data, dict):
        raise DataError(path, f"expected a JSON object mapping item index -> tokens, found a {type(data).__name__}")
    if not data:
        raise DataError(path, "the object holds no items")

    entries: dict[str, list[int]] = {}
    first_key, levels = None, 0
    for key, tokens in data.items():
        if not isinstance(tokens, list) or not tokens:
            raise DataError(path, f"expected a non-empty list of tokens such as ['<a_12>', '<b_3>'], found {tokens!r}",
                            field=key)
        if first_key is None:
            first_key, levels = key, len(tokens)
            if levels > len(LEVEL_LETTERS):
                raise DataError(path, f"{levels} tokens; the format has letters for {len(LEVEL_LETTERS)} levels "
                                      "at most", field=key)
        elif len(tokens) != levels:
            raise DataError(path, f"{len(tokens)} tokens, but item {first_key!r} has {levels}: every item needs "
                                  "one token per level", field=key)
        codes = []
        for level, tok in enumerate(tokens):
            match = _TOKEN.fullmatch(tok) if isinstance(tok, str) else None
            if match is None:
                raise DataError(path, f"token {tok!r} at level {level + 1} is not of the form "
                                      f"'<{LEVEL_LETTERS[level]}_N>' (N a non-negative integer)", field=key)
            if match.group(1) != LEVEL_LETTERS[level]:
                raise DataError(path, f"token {tok!r} at level {level + 1} should start with "
                                      f"'<{LEVEL_LETTERS[level]}_': tokens must be listed in level order", field=key)
            code = int(match.group(2))
            if code > _MAX_CODE:
                raise DataError(path, f"token {tok!r}: code {code} is out of range", field=key)
            codes.append(code)
        entries[key] = codes
    return entries


def _rows_by_position(path: Path, entries: dict[str, list[int]], item_keys: Sequence[str]) -> list[list[int]]:
    n = len(item_keys)
    for key in entries:
        if not _INDEX_KEY.fullmatch(key):
            raise DataError(path, f"key {key!r} is not an item index (0, 1, 2, ...); a file keyed otherwise "
                                  "needs a key map (file key -> item key)", field=key)
    rows = []
    for i in range(n):
        if str(i) not in entries:
            raise DataError(path, f"no entry for item {i} (item key {item_keys[i]!r}): key k is read as the "
                                  f"dataset's item k, and the dataset has {n} items", field=str(i))
        rows.append(entries[str(i)])
    if len(entries) > n:
        extra = next(k for k in entries if int(k) >= n)
        raise DataError(path, f"{len(entries)} entries for a dataset of {n} items (key {extra!r} has no item): key k "
                              "is read as the dataset's item k, so the file must describe this dataset's items",
                        field=extra)
    return rows


def _rows_by_key(
    path: Path, entries: dict[str, list[int]], item_keys: Sequence[str], key_map: Mapping[str, str]
) -> list[list[int]]:
    ours = {key: i for i, key in enumerate(item_keys)}
    rows: list[list[int] | None] = [None] * len(item_keys)
    source: dict[int, str] = {}
    unused = 0
    for key, codes in entries.items():
        item = key_map.get(key)
        i = None if item is None else ours.get(item)
        if i is None:
            unused += 1
            continue
        if rows[i] is not None:
            raise DataError(path, f"keys {source[i]!r} and {key!r} both map onto item {item_keys[i]!r}", field=key)
        rows[i], source[i] = codes, key
    missing = [i for i, row in enumerate(rows) if row is None]
    if missing:
        raise DataError(path, f"no entry for {len(missing)} of the dataset's {len(item_keys)} items, e.g. item key "
                              f"{item_keys[missing[0]]!r}")
    if unused:
        log.info("%s: %d entries describe no item of the dataset; ignored", path, unused)
    return rows  # type: ignore[return-value]


def read_index_json(
    path: Path | str,
    item_keys: Sequence[str],
    key_map: Mapping[str, str] | None = None,
    codebook_sizes: Sequence[int] | None = None,
) -> tuple[SemanticIds, dict[str, Any]]:
    """Semantic ids for the dataset items `item_keys` (in internal-id order) from an index.json file.

    Key k of the file is item k, unless `key_map` maps the file's keys to item keys (then entries for
    items outside the dataset are ignored). `codebook_sizes` defaults to each level's largest code + 1.
    Items sharing all codes get a disambiguation level (`make_unique`); the second value is a report:
    the source, per-level code use and the collisions found.
    """
    path = Path(path)
    entries = read_index_entries(path)
    if key_map is None:
        rows = _rows_by_position(path, entries, item_keys)
    else:
        rows = _rows_by_key(path, entries, item_keys, key_map)
    codes = np.asarray(rows, dtype=np.int64).reshape(len(rows), -1)  # (n_items, levels)
    levels = codes.shape[1]
    largest = np.max(np.asarray(list(entries.values()), dtype=np.int64), axis=0)
    if codebook_sizes is None:
        sizes = [int(c) + 1 for c in largest]  # over every entry: the vocabulary the file's pipeline had
    else:
        sizes = [int(s) for s in codebook_sizes]
        if len(sizes) != levels:
            raise DataError(path, f"{levels} levels per item, but {len(sizes)} codebook sizes were given ({sizes})")
        for level in range(levels):
            if largest[level] >= sizes[level]:
                key = next(k for k, c in entries.items() if c[level] >= sizes[level])
                raise DataError(path, f"token {token(level, entries[key][level])!r} lies outside level {level + 1}'s "
                                      f"codebook of {sizes[level]} codes", field=key)
    ids, collisions = make_unique(codes, sizes)
    report = {
        "n_items": ids.n_items,
        "source": {
            "ids_file": str(path),
            "sha256": file_digest(path),
            "format": FORMAT,
            "entries": len(entries),
            "keys": "position" if key_map is None else "key_map",
        },
        "levels": level_stats(codes, sizes),
        "collisions": collisions,
        "semantic_ids": {"levels": ids.levels, "codebook_sizes": ids.codebook_sizes},
    }
    log.info(
        "%s: %d items, %d levels, codebook sizes %s; %d items in %d groups share all codes (largest group %d) "
        "-> %d levels", path, ids.n_items, levels, sizes, collisions["colliding_items"], collisions["groups"],
        collisions["max_group_size"], ids.levels,
    )
    return ids, report


def tokenizer_from_index_json(
    path: Path | str, item_keys: Sequence[str], key_map: Mapping[str, str] | None = None
) -> TokenizerArtifact:
    """The tokenizer stage's artifact for published ids (`tokenizer.ids_file`): the ids and their
    report, and no model, since no fusion layer or RQ-VAE was trained."""
    ids, report = read_index_json(path, item_keys, key_map)
    return TokenizerArtifact(ids, report, None)


def write_index_json(ids: SemanticIds, path: Path | str, keys: Sequence[str] | None = None) -> Path:
    """Write `ids` as an index.json file (gzip-compressed when `path` ends in .gz), keyed by item
    index 0..n-1 or by `keys`. A disambiguation level is written as one more level, like any other."""
    path = Path(path)
    if ids.levels > len(LEVEL_LETTERS):
        raise ValueError(f"{ids.levels} levels; the index.json format has letters for {len(LEVEL_LETTERS)} at most")
    keys = [str(i) for i in range(ids.n_items)] if keys is None else [str(k) for k in keys]
    if len(keys) != ids.n_items:
        raise ValueError(f"{len(keys)} keys for {ids.n_items} items")
    if len(set(keys)) != len(keys):
        raise ValueError("item keys are not unique")
    data = {key: [token(level, code) for level, code in enumerate(row)] for key, row in zip(keys, ids.codes.tolist())}
    blob = json.dumps(data).encode("utf-8")
    if path.suffix.lower() == ".gz":
        blob = gzip.compress(blob, mtime=0)  # mtime 0: the same ids give the same bytes
    with atomic_file(path) as fh:
        fh.write(blob)
    log.info("wrote %d items x %d levels to %s", ids.n_items, ids.levels, path)
    return path
