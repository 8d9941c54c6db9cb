"""The data stage's entry point: config -> InteractionDataset (read, k-core filter, index)."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import pandas as pd

from cemg.config import DataConfig
from cemg.data.dataset import InteractionDataset
from cemg.data.errors import DataError
from cemg.data.filtering import build_dataset, k_core
from cemg.data.readers import (
    read_interaction_table,
    read_item_table,
    read_lookup,
    read_s3rec_sequences,
)

log = logging.getLogger(__name__)

# Column conventions per format when the config leaves them unset.
_RECBOLE = {"user": "user_id", "item": "item_id", "time": "timestamp", "item_key": "item_id"}
_TABLE = {"user": "user", "item": "item", "time": "timestamp", "item_key": None}  # key = item column
_S3REC_ITEM_KEY = "item_id"  # items.jsonl written by cemg's download and in shared/data


def synthetic_digest(data: DataConfig, seed: int) -> str:
    """A short hash of every synthetic_* setting and the seed: names the demo's image folder."""
    settings = {k: v for k, v in data.model_dump().items() if k.startswith("synthetic_")}
    settings["seed"] = seed
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def load_dataset(data: DataConfig, seed: int = 0, cache_dir: Path = Path("cache")) -> InteractionDataset:
    """Read the configured dataset, apply `data.min_core`-core filtering and index it.

    `seed` and `cache_dir` matter only to the synthetic demo (its generator draws and writes images).
    """
    if data.format == "synthetic":
        from cemg.data.synthetic import generate_dataset  # heavier (draws images); only when asked

        return generate_dataset(data, seed, image_dir=Path(cache_dir) / "synthetic" / synthetic_digest(data, seed))

    if data.path is None:
        raise DataError("config", f"data.path is required for format {data.format!r}", field="data.path")
    start = time.perf_counter()
    interactions = read_interactions(data)
    items = read_items(data)
    if items is not None and not items["item"].isin(set(interactions["item"])).any():
        raise DataError(
            _items_path(data) or "items", f"no item key matches an item of {data.path} (e.g. "
            f"{items['item'].iloc[0]!r} vs {interactions['item'].iloc[0]!r}); set data.item_key or data.item_key_map",
        )
    image_refs = None
    if data.image_map is not None:
        image_refs = read_lookup(data.image_map, data.encoding, data.fallback_encoding)
        log.info("%s: %d image references from %s", data.name, len(image_refs), data.image_map.path)
    read_s = time.perf_counter() - start

    kept = k_core(interactions, data.min_core)
    if kept.empty:
        raise DataError(data.path, f"no interactions are left after {data.min_core}-core filtering")
    dataset = build_dataset(data.name, kept, items, data.text_fields, image_refs, data.image_root)
    s = dataset.stats()
    log.info(
        "loaded %s: %d users, %d items, %d interactions (read %.1f s, total %.1f s) from %s",
        data.name, s["users"], s["items"], s["interactions"], read_s, time.perf_counter() - start, data.path,
    )
    return dataset


def read_interactions(data: DataConfig) -> pd.DataFrame:
    """Raw interactions (user, item, timestamp, order) of the configured file, before filtering."""
    assert data.path is not None
    if data.format == "s3rec":
        return read_s3rec_sequences(data.path)
    names = _RECBOLE if data.format == "recbole" else _TABLE
    return read_interaction_table(
        data.path,
        user_column=data.user_column or names["user"],
        item_column=data.item_column or names["item"],
        time_column=data.time_column or names["time"],
        time_required=data.time_column is not None,
        recbole=data.format == "recbole",
        delimiter=data.delimiter,
        encoding=data.encoding,
        fallback=data.fallback_encoding,
    )


def _items_path(data: DataConfig) -> Path | None:
    if data.items_path is not None:
        return data.items_path
    if data.format == "recbole" and data.path is not None:
        # RecBole convention: <name>.item sits beside <name>.inter.
        stem = data.path.name.split(".inter")[0]
        for candidate in (data.path.with_name(f"{stem}.item"), data.path.with_name(f"{stem}.item.gz")):
            if candidate.is_file():
                log.info("using item file %s beside %s", candidate, data.path)
                return candidate
    return None


def read_items(data: DataConfig) -> pd.DataFrame | None:
    """The item metadata table keyed like the interactions, or None when none is configured."""
    path = _items_path(data)
    if path is None:
        return None
    items = read_item_rows(data, path)
    if data.item_key_map is not None:
        items = _rekey(items, path, data)
    return items


def item_key_column(data: DataConfig) -> str:
    """The item table's key column: data.item_key, else the format's convention."""
    if data.item_key is not None:
        return data.item_key
    if data.format == "table":
        return data.item_column or _TABLE["item"]
    if data.format == "recbole":
        return data.item_column or _RECBOLE["item_key"]
    return _S3REC_ITEM_KEY


def read_item_rows(data: DataConfig, path: Path, images_optional: bool = False) -> pd.DataFrame:
    """An item table at `path` read with the configured key, text fields, image column and encoding
    (no key mapping): the dataset's own table, or items added to a trained run (cemg.added_items,
    where a table without images is fine: `images_optional`)."""
    return read_item_table(
        path,
        item_key_column(data),
        data.text_fields,
        data.image_column,
        # the default column is optional; one the config names explicitly must exist
        image_required=(not images_optional and data.image_column is not None
                        and "image_column" in data.model_fields_set),
        delimiter=data.delimiter,
        encoding=data.encoding,
        fallback=data.fallback_encoding,
    )


def _rekey(items: pd.DataFrame, path: Path, data: DataConfig) -> pd.DataFrame:
    """Move item-table keys into the interactions' key space (e.g. ASIN -> S3-Rec id)."""
    assert data.item_key_map is not None
    mapping = read_lookup(data.item_key_map, data.encoding, data.fallback_encoding)
    mapped = items["item"].map(mapping)
    unmapped = int(mapped.isna().sum())
    if unmapped:
        log.info("%s: %d of %d item rows have no key in %s; dropped", path, unmapped, len(items),
                 data.item_key_map.path)
    items = items.assign(item=mapped).loc[mapped.notna()]
    dup = items["item"].duplicated()
    if dup.any():
        key = items["item"][dup].iloc[0]
        raise DataError(data.item_key_map.path, f"two item rows of {path} map onto the same key {key!r}",
                        field=data.item_key_map.value or data.item_key_map.field)
    return items.reset_index(drop=True)
