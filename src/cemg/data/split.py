"""Chronological leave-one-out split (paper 5.1, the S3-Rec/TIGER protocol).

For a user sequence s_1..s_n: s_n is the test target (history s_1..s_{n-1}), s_{n-1} the validation
target (history s_1..s_{n-2}), and s_1..s_{n-2} the training sequence. Histories keep only their
last `max_history` items.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from cemg.data.dataset import InteractionDataset


@dataclass(frozen=True)
class EvalExamples:
    """One example per user: a capped history (oldest first) and the item that came next."""

    users: np.ndarray  # (n,) user ids
    histories: list[np.ndarray]
    targets: np.ndarray  # (n,) item ids

    def __len__(self) -> int:
        return len(self.targets)


@dataclass(frozen=True)
class SplitDataset:
    dataset: InteractionDataset
    train: list[np.ndarray]  # per user: the training part of the sequence (uncapped)
    valid: EvalExamples
    test: EvalExamples
    max_history: int

    @property
    def n_items(self) -> int:
        return self.dataset.n_items

    def train_item_counts(self) -> np.ndarray:
        """Training interactions per item (the cold-start report and popularity use these)."""
        flat = np.concatenate(self.train) if self.train else np.zeros(0, np.int64)
        return np.bincount(flat, minlength=self.n_items)

    def with_valid_subsample(self, n: int | None, seed: int) -> SplitDataset:
        """The same split with `n` validation users drawn at random (all when n is None or larger):
        early stopping then costs a fixed number of beam searches whatever the dataset's size."""
        if n is None or n >= len(self.valid):
            return self
        keep = np.sort(np.random.default_rng(seed).choice(len(self.valid), size=n, replace=False))
        sub = EvalExamples(self.valid.users[keep], [self.valid.histories[i] for i in keep], self.valid.targets[keep])
        return dataclasses.replace(self, valid=sub)

    def part(self, name: str) -> EvalExamples:
        if name not in ("valid", "test"):
            raise ValueError(f"unknown split part {name!r}; expected 'valid' or 'test'")
        return self.valid if name == "valid" else self.test


def leave_one_out(dataset: InteractionDataset, max_history: int = 20) -> SplitDataset:
    """Split every user with at least 3 interactions; shorter users are dropped from evaluation
    and contribute only to training (k-core filtering with k >= 3 leaves none of them)."""
    train, valid, test = [], [[], [], []], [[], [], []]
    for user, seq in enumerate(dataset.sequences):
        if len(seq) < 3:
            train.append(seq)
            continue
        train.append(seq[:-2])
        for part, cut in ((valid, len(seq) - 2), (test, len(seq) - 1)):
            part[0].append(user)
            part[1].append(seq[max(0, cut - max_history) : cut])
            part[2].append(seq[cut])

    def examples(part: list[list]) -> EvalExamples:
        return EvalExamples(np.asarray(part[0], np.int64), part[1], np.asarray(part[2], np.int64))

    return SplitDataset(dataset, train, examples(valid), examples(test), max_history)
