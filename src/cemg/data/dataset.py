"""The one in-memory dataset type every stage reads: user sequences plus item metadata."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class ItemTable:
    """Item metadata, row i describing internal item id i.

    `fields` maps a text field name (title, brand, categories, ...) to one value per item; a value
    is None where the item lacks that field. `image_refs` holds a path (relative to the dataset's
    image root), a URL, or None for an item without an image: missing modalities are explicit.
    """

    keys: list[str]
    fields: dict[str, list[str | None]] = field(default_factory=dict)
    image_refs: list[str | None] | None = None

    def __post_init__(self) -> None:
        n = len(self.keys)
        for name, values in self.fields.items():
            if len(values) != n:
                raise ValueError(f"item field {name!r} has {len(values)} values for {n} items")
        if self.image_refs is not None and len(self.image_refs) != n:
            raise ValueError(f"image_refs has {len(self.image_refs)} values for {n} items")

    def __len__(self) -> int:
        return len(self.keys)

    def text(self, item: int, fields: list[str]) -> str:
        """The item's text built from `fields` in order, as `field: value` parts; '' if none."""
        parts = []
        for name in fields:
            value = self.fields.get(name, [None] * len(self))[item]
            if value:
                parts.append(f"{name}: {value}")
        return "; ".join(parts)

    def title(self, item: int) -> str:
        for name in ("title", "movie_title", "name"):
            values = self.fields.get(name)
            if values and values[item]:
                return str(values[item])
        return self.keys[item]

    def subset(self, keep: np.ndarray) -> ItemTable:
        """Rows `keep` (internal ids, in that order) as a new table."""
        idx = [int(i) for i in keep]
        return ItemTable(
            keys=[self.keys[i] for i in idx],
            fields={k: [v[i] for i in idx] for k, v in self.fields.items()},
            image_refs=None if self.image_refs is None else [self.image_refs[i] for i in idx],
        )


@dataclass(frozen=True)
class InteractionDataset:
    """Users' chronological item sequences (internal ids 0..n_items-1) and the item table."""

    name: str
    user_keys: list[str]
    sequences: list[np.ndarray]  # per user: int64 item ids, oldest first
    items: ItemTable
    image_root: Path | None = None

    def __post_init__(self) -> None:
        if len(self.user_keys) != len(self.sequences):
            raise ValueError("user_keys and sequences differ in length")

    @property
    def n_users(self) -> int:
        return len(self.user_keys)

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def n_interactions(self) -> int:
        return int(sum(len(s) for s in self.sequences))

    def stats(self) -> dict[str, float]:
        """The paper's Table 1 columns."""
        n_inter = self.n_interactions
        return {
            "users": self.n_users,
            "items": self.n_items,
            "interactions": n_inter,
            "avg_length": n_inter / max(self.n_users, 1),
            "sparsity": 1.0 - n_inter / max(self.n_users * self.n_items, 1),
        }

    def save(self, folder: Path) -> None:
        """Write to `folder` (callers make it atomic, see cemg.artifacts)."""
        folder.mkdir(parents=True, exist_ok=True)
        lengths = np.array([len(s) for s in self.sequences], dtype=np.int64)
        flat = np.concatenate(self.sequences) if self.sequences else np.zeros(0, np.int64)
        np.savez_compressed(folder / "sequences.npz", lengths=lengths, items=flat)
        meta = {
            "name": self.name,
            "user_keys": self.user_keys,
            "item_keys": self.items.keys,
            "fields": self.items.fields,
            "image_refs": self.items.image_refs,
            "image_root": None if self.image_root is None else str(self.image_root),
        }
        (folder / "meta.json").write_text(json.dumps(meta), encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> InteractionDataset:
        arrays = np.load(folder / "sequences.npz")
        bounds = np.cumsum(arrays["lengths"])[:-1]
        sequences = np.split(arrays["items"].astype(np.int64), bounds) if len(arrays["lengths"]) else []
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        items = ItemTable(keys=meta["item_keys"], fields=meta["fields"], image_refs=meta["image_refs"])
        root = Path(meta["image_root"]) if meta.get("image_root") else None
        return cls(meta["name"], meta["user_keys"], list(sequences), items, root)
