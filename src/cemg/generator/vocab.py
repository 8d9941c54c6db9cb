"""The generator's token vocabulary and how a user history becomes encoder input (paper 4.2.4).

Ids below `offset` belong to the backbone (for a model built from scratch: pad = 0, eos = 1; for a
pretrained T5: its whole word-piece vocabulary, whose pad and eos are also 0 and 1). Then come the
semantic tokens, one per (level, code), level after level. As in T5, decoding starts from pad.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SemanticVocabulary:
    codebook_sizes: tuple[int, ...]
    offset: int = 2  # token id of (level 0, code 0)
    pad_id: int = 0
    eos_id: int = 1

    def __post_init__(self) -> None:
        if self.offset <= max(self.pad_id, self.eos_id):
            raise ValueError(f"semantic tokens (from {self.offset}) would overlap pad/eos ids")
        if not self.codebook_sizes or min(self.codebook_sizes) < 1:
            raise ValueError(f"bad codebook sizes {self.codebook_sizes}")

    @property
    def levels(self) -> int:
        return len(self.codebook_sizes)

    @property
    def size(self) -> int:
        return self.offset + sum(self.codebook_sizes)

    @property
    def decoder_start_id(self) -> int:
        return self.pad_id

    def level_offsets(self) -> np.ndarray:
        """(levels,) token id of code 0 at each level."""
        return self.offset + np.concatenate([[0], np.cumsum(self.codebook_sizes)[:-1]]).astype(np.int64)

    def level_range(self, level: int) -> tuple[int, int]:
        lo = int(self.level_offsets()[level])
        return lo, lo + self.codebook_sizes[level]

    def item_tokens(self, codes: np.ndarray) -> np.ndarray:
        """(n_items, levels) codes -> token ids."""
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or codes.shape[1] != self.levels:
            raise ValueError(f"codes of shape {codes.shape} do not have {self.levels} levels")
        return codes + self.level_offsets()[None, :]

    def encode_items(
        self, items: np.ndarray, lengths: np.ndarray, item_tokens: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Left-aligned item matrix (n, m) (entries past `lengths` ignored) -> (input_ids, attention_mask).

        Each row is the items' tokens oldest first, then eos, then pad; the width is the longest row.
        """
        n, m = items.shape
        lengths = np.asarray(lengths, dtype=np.int64)
        levels = item_tokens.shape[1]
        width = int(lengths.max(initial=0)) * levels + 1
        tokens = item_tokens[np.where(np.arange(m)[None, :] < lengths[:, None], items, 0)]  # (n, m, L)
        real = np.arange(m * levels)[None, :] < (lengths * levels)[:, None]
        ids = np.full((n, m * levels + 1), self.pad_id, dtype=np.int64)
        ids[:, : m * levels] = np.where(real, tokens.reshape(n, m * levels), self.pad_id)
        ids[np.arange(n), lengths * levels] = self.eos_id
        ids = ids[:, :width]
        mask = (np.arange(width)[None, :] <= (lengths * levels)[:, None]).astype(np.int64)
        return ids, mask

    def encode_histories(
        self, histories: Sequence[np.ndarray], item_tokens: np.ndarray, max_items: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Histories (oldest first) -> (input_ids, attention_mask); only the last `max_items` are kept."""
        n_items = len(item_tokens)
        kept = [np.asarray(h, dtype=np.int64)[-max_items:] if max_items > 0 else np.zeros(0, np.int64)
                for h in histories]
        lengths = np.array([len(h) for h in kept], dtype=np.int64)
        items = np.zeros((len(kept), int(lengths.max(initial=0))), dtype=np.int64)
        for row, h in enumerate(kept):
            if len(h) and (h.min() < 0 or h.max() >= n_items):
                raise ValueError(f"history {row} holds an item id outside [0, {n_items})")
            items[row, : len(h)] = h
        return self.encode_items(items, lengths, item_tokens)

    def to_dict(self) -> dict:
        return {"codebook_sizes": list(self.codebook_sizes), "offset": self.offset,
                "pad_id": self.pad_id, "eos_id": self.eos_id}

    @classmethod
    def from_dict(cls, data: dict) -> SemanticVocabulary:
        return cls(tuple(int(k) for k in data["codebook_sizes"]), int(data["offset"]),
                   int(data["pad_id"]), int(data["eos_id"]))
