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

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / "collab.npz", users=self.users, items=self.items)
        (folder / "collab.json").write_text(json.dumps(self.info, indent=2, default=str), encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> CollabEmbeddings:
        folder = Path(folder)
        arrays = np.load(folder / "collab.npz")
        info = json.loads((folder / "collab.json").read_text(encoding="utf-8"))
        return cls(arrays["users"], arrays["items"], info)
