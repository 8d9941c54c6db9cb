"""Most-popular baseline: every user gets the items with the most training interactions."""

from __future__ import annotations

import numpy as np

from cemg.data.split import SplitDataset


class Popularity:
    """Ranks the catalogue by training interaction count; ties go to the lower item id."""

    def __init__(self, counts: np.ndarray):
        self.counts = np.asarray(counts, dtype=np.int64)
        # A stable sort keeps ties in id order, so the ranking is deterministic across platforms.
        self.order = np.argsort(-self.counts, kind="stable")

    @classmethod
    def fit(cls, split: SplitDataset) -> Popularity:
        return cls(split.train_item_counts())

    @property
    def n_items(self) -> int:
        return len(self.counts)

    def recommend(
        self, histories: list[np.ndarray], k: int, exclude: list[np.ndarray] | None = None
    ) -> np.ndarray:
        out = np.full((len(histories), k), -1, dtype=np.int64)
        for row in range(len(histories)):
            banned = np.asarray(exclude[row] if exclude is not None else [], dtype=np.int64)
            # Only the first k + |banned| items of the global order can survive the filter.
            head = self.order[: k + len(banned)]
            kept = head[~np.isin(head, banned)][:k]
            out[row, : len(kept)] = kept
        return out
