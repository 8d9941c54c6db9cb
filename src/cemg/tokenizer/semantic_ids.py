"""`SemanticIds`: each item's code sequence, unique per item, and the way back from codes to items."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class SemanticIds:
    codes: np.ndarray  # (n_items, levels) int64; codes[i, l] in [0, codebook_sizes[l])
    codebook_sizes: list[int]  # per level, including any disambiguation level

    def __post_init__(self) -> None:
        if self.codes.ndim != 2 or self.codes.shape[1] != len(self.codebook_sizes):
            raise ValueError(f"codes of shape {self.codes.shape} do not match {len(self.codebook_sizes)} levels")
        if len(self.codes) and (self.codes.min() < 0 or (self.codes >= np.asarray(self.codebook_sizes)).any()):
            raise ValueError("a code lies outside its codebook")
        if len({tuple(row) for row in self.codes.tolist()}) != len(self.codes):
            raise ValueError("semantic ids are not unique: two items share a code sequence")

    @property
    def n_items(self) -> int:
        return len(self.codes)

    @property
    def levels(self) -> int:
        return self.codes.shape[1]

    def token_offsets(self) -> np.ndarray:
        """Start of each level's block in a flat token vocabulary (level l, code c -> offset[l] + c)."""
        return np.concatenate([[0], np.cumsum(self.codebook_sizes)[:-1]]).astype(np.int64)

    def tokens(self) -> np.ndarray:
        """(n_items, levels) flat-vocabulary token ids."""
        return self.codes + self.token_offsets()[None, :]

    def item_lookup(self) -> dict[tuple[int, ...], int]:
        return {tuple(row): i for i, row in enumerate(self.codes.tolist())}

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "codes.npy", self.codes)
        (folder / "semantic_ids.json").write_text(
            json.dumps({"codebook_sizes": self.codebook_sizes}), encoding="utf-8"
        )

    @classmethod
    def load(cls, folder: Path) -> SemanticIds:
        folder = Path(folder)
        meta = json.loads((folder / "semantic_ids.json").read_text(encoding="utf-8"))
        return cls(np.load(folder / "codes.npy").astype(np.int64), list(meta["codebook_sizes"]))
