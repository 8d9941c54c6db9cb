"""`ItemFeatures`: per-item text and image vectors in a common dimension d, with explicit masks."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class ItemFeatures:
    """Row i describes item i. A modality that was not encoded at all is None; an item that lacks
    it (no image, empty text) has mask False and a zero row that nothing downstream may use."""

    n_items: int
    text: np.ndarray | None = None  # (n_items, d) float32
    text_mask: np.ndarray | None = None  # (n_items,) bool
    image: np.ndarray | None = None  # (n_items, d) float32
    image_mask: np.ndarray | None = None  # (n_items,) bool
    info: dict = field(default_factory=dict)  # encoder names, raw dims, explained variance, counts

    def __post_init__(self) -> None:
        for name in ("text", "image"):
            values, mask = getattr(self, name), getattr(self, f"{name}_mask")
            if (values is None) != (mask is None):
                raise ValueError(f"{name} and {name}_mask must both be set or both be None")
            if values is not None and (values.shape[0] != self.n_items or mask.shape != (self.n_items,)):
                raise ValueError(f"{name} features do not cover {self.n_items} items")

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {
            name: value
            for name in ("text", "text_mask", "image", "image_mask")
            if (value := getattr(self, name)) is not None
        }
        np.savez(folder / "features.npz", **arrays)
        (folder / "features.json").write_text(
            json.dumps({"n_items": self.n_items, "info": self.info}, indent=2, default=str), encoding="utf-8"
        )

    @classmethod
    def load(cls, folder: Path) -> ItemFeatures:
        folder = Path(folder)
        meta = json.loads((folder / "features.json").read_text(encoding="utf-8"))
        arrays = np.load(folder / "features.npz")
        get = lambda k: arrays[k] if k in arrays.files else None  # noqa: E731
        return cls(meta["n_items"], get("text"), get("text_mask"), get("image"), get("image_mask"), meta["info"])
