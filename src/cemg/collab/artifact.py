"""`CollabEmbeddings`: LightGCN user and item embeddings of dimension d."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class CollabEmbeddings:
    users: np.ndarray  # (n_users, d) float32
    items: np.ndarray  # (n_items, d) float32
    info: dict = field(default_factory=dict)  # training curve, best epoch, validation recall
    # (n_items,) training interactions per item: how much the graph told LightGCN about each item
    # (the tokenizer's collab calibration needs it). None in artifacts written before it was kept.
    item_counts: np.ndarray | None = None

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        extra = {} if self.item_counts is None else {"item_counts": self.item_counts}
        np.savez(folder / "collab.npz", users=self.users, items=self.items, **extra)
        (folder / "collab.json").write_text(json.dumps(self.info, indent=2, default=str), encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> CollabEmbeddings:
        folder = Path(folder)
        arrays = np.load(folder / "collab.npz")
        info = json.loads((folder / "collab.json").read_text(encoding="utf-8"))
        counts = arrays["item_counts"] if "item_counts" in arrays.files else None
        return cls(arrays["users"], arrays["items"], info, counts)
