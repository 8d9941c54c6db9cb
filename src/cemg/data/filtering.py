"""k-core filtering and building the InteractionDataset from raw interactions (paper 5.1)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from cemg.data.dataset import InteractionDataset, ItemTable

log = logging.getLogger(__name__)


def k_core(interactions: pd.DataFrame, k: int) -> pd.DataFrame:
    """Keep the interactions of users and items that have at least `k` each, dropping again until
    no user or item falls below `k` (dropping an item can push a user under the bar and back).
    `k` <= 1 returns the input unchanged. Repeated user-item pairs count once per interaction."""
    if k <= 1 or interactions.empty:
        return interactions
    users, _ = pd.factorize(interactions["user"], sort=False)
    items, _ = pd.factorize(interactions["item"], sort=False)
    keep = np.ones(len(interactions), dtype=bool)
    rounds = 0
    while True:
        user_counts = np.bincount(users[keep], minlength=users.max() + 1)
        item_counts = np.bincount(items[keep], minlength=items.max() + 1)
        drop = keep & ((user_counts[users] < k) | (item_counts[items] < k))
        if not drop.any():
            break
        keep &= ~drop
        rounds += 1
    log.info(
        "%d-core: %d round(s) of removal; kept %d of %d interactions, %d of %d users, %d of %d items",
        k, rounds, int(keep.sum()), len(keep),
        len(np.unique(users[keep])), users.max() + 1, len(np.unique(items[keep])), items.max() + 1,
    )
    return interactions.loc[keep]


def build_dataset(
    name: str,
    interactions: pd.DataFrame,
    items: pd.DataFrame | None = None,
    text_fields: list[str] | None = None,
    image_refs: Mapping[str, str] | None = None,
    image_root: Path | None = None,
) -> InteractionDataset:
    """The dataset of `interactions` (columns user, item, timestamp, order).

    Users are numbered 0.. in order of first appearance in the file; each user's items are sorted
    by (timestamp, file order), NaN timestamps last; items are numbered in order of first
    appearance in those sequences, users taken in order (so an S3-Rec file keeps its numbering,
    shifted to 0-based). `items` (column `item` + text fields + optional `image`) is aligned with
    the kept items: items it lacks are kept with None metadata, rows for absent items are dropped.
    `image_refs` (item key -> ref), when given, replaces the table's image column.
    """
    if interactions.empty:
        raise ValueError(f"dataset {name!r} has no interactions")
    text_fields = list(text_fields or [])
    frame = interactions.sort_values("order", kind="stable")
    user_ids, user_keys = pd.factorize(frame["user"], sort=False)
    frame = frame.assign(_user=user_ids).sort_values(
        ["_user", "timestamp", "order"], kind="stable", na_position="last"
    )
    item_ids, item_keys = pd.factorize(frame["item"], sort=False)
    lengths = np.bincount(frame["_user"].to_numpy(), minlength=len(user_keys))
    sequences = np.split(item_ids.astype(np.int64), np.cumsum(lengths)[:-1])
    keys = [str(k) for k in item_keys]

    fields: dict[str, list[str | None]] = {}
    refs: list[str | None] | None = None
    if items is not None:
        meta = items.set_index("item").reindex(keys)
        found = items["item"].isin(set(keys))
        missing = int(len(keys) - found.sum())
        if missing:
            lacking = set(keys) - set(items["item"])
            n_inter = int(frame["item"].isin(lacking).sum())
            log.warning("%s: %d of %d items (%d interactions) have no metadata; kept with empty fields",
                        name, missing, len(keys), n_inter)
        if len(items) > found.sum():
            log.info("%s: %d metadata rows describe items with no kept interactions; dropped",
                     name, int(len(items) - found.sum()))
        for field in text_fields:
            fields[field] = [None if pd.isna(v) else v for v in meta[field].tolist()]
        if "image" in meta.columns:
            refs = [None if pd.isna(v) else v for v in meta["image"].tolist()]
    elif text_fields:
        log.warning("%s: no item metadata; items have no text", name)
    if image_refs is not None:
        refs = [image_refs.get(k) for k in keys]
    if refs is not None:
        log.info("%s: %d of %d items have an image reference", name, sum(r is not None for r in refs), len(keys))

    table = ItemTable(keys=keys, fields=fields, image_refs=refs)
    return InteractionDataset(name, [str(u) for u in user_keys], list(sequences), table, image_root)
