"""Full-catalogue leave-one-out evaluation shared by every model.

A model is anything with `recommend(histories, k, exclude) -> (n, k) item ids` (-1 pads a short
list). Ranking is over the whole catalogue, never a sampled candidate set. With
`evaluation.mask_history` the user's earlier items (the whole prior sequence, as the S3-Rec
full-ranking code does) are passed as `exclude` and must not be recommended.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from cemg.artifacts import atomic_file, atomic_write_text
from cemg.config import EvalConfig
from cemg.data.split import SplitDataset
from cemg.evaluation.metrics import per_user_metrics, summarize, target_ranks


class Recommender(Protocol):
    def recommend(
        self, histories: list[np.ndarray], k: int, exclude: list[np.ndarray] | None = None
    ) -> np.ndarray: ...


@dataclass
class EvalResult:
    part: str
    metrics: dict[str, float]
    cold_start: dict[str, float]
    n_users: int
    n_cold: int
    users: np.ndarray
    ranks: np.ndarray  # per user: 0-based rank of the target, NOT_RANKED when outside the list
    seconds: float
    extra: dict = field(default_factory=dict)
    # Per user: the target is a cold-start item. Saved with the ranks so a paired test can be run on
    # the cold subset without the dataset; None for results saved before it was kept.
    cold: np.ndarray | None = None

    def to_dict(self) -> dict:
        return {
            "part": self.part,
            "metrics": self.metrics,
            "cold_start": self.cold_start,
            "n_users": self.n_users,
            "n_cold_start_users": self.n_cold,
            "eval_seconds": self.seconds,
            **self.extra,
        }

    def save(self, folder: Path, name: str) -> None:
        """`name.json` (summary) and `name.per_user.npz` (users, ranks, cold) for paired tests."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {"users": self.users, "ranks": self.ranks}
        if self.cold is not None:
            arrays["cold"] = self.cold
        with atomic_file(per_user_file(folder, name)) as fh:
            np.savez_compressed(fh, **arrays)
        atomic_write_text(folder / f"{name}.json", json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, folder: Path, name: str) -> EvalResult:
        folder = Path(folder)
        summary = json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
        arrays = np.load(per_user_file(folder, name))
        known = {"part", "metrics", "cold_start", "n_users", "n_cold_start_users", "eval_seconds"}
        return cls(
            part=summary["part"],
            metrics=summary["metrics"],
            cold_start=summary["cold_start"],
            n_users=summary["n_users"],
            n_cold=summary["n_cold_start_users"],
            users=arrays["users"],
            ranks=arrays["ranks"],
            seconds=summary["eval_seconds"],
            extra={k: v for k, v in summary.items() if k not in known},
            cold=arrays["cold"] if "cold" in arrays.files else None,
        )


def per_user_file(folder: Path, name: str) -> Path:
    """Where `EvalResult.save` keeps the per-user ranks of `name` (a part: valid, test)."""
    return Path(folder) / f"{name}.per_user.npz"


PARTS = ("valid", "test")


@dataclass
class RunEvaluation:
    """The evaluation stage's artifact: validation and test results of the trained generator."""

    results: dict[str, EvalResult]

    def save(self, folder: Path) -> None:
        for part, result in self.results.items():
            result.save(folder, part)

    @classmethod
    def load(cls, folder: Path) -> RunEvaluation:
        missing = [part for part in PARTS if not (Path(folder) / f"{part}.json").is_file()]
        if missing:
            raise FileNotFoundError(f"{folder}: no {', '.join(f'{p}.json' for p in missing)}; "
                                    "is this an evaluation stage folder?")
        return cls({part: EvalResult.load(folder, part) for part in PARTS})


def prior_items(split: SplitDataset, part: str) -> list[np.ndarray]:
    """Every item the user interacted with before the target of `part` (uncapped)."""
    examples = split.part(part)
    offset = 2 if part == "valid" else 1
    seqs = split.dataset.sequences
    return [seqs[u][: len(seqs[u]) - offset] for u in examples.users]


def evaluate(
    model: Recommender,
    split: SplitDataset,
    part: str = "test",
    cfg: EvalConfig | None = None,
    batch_size: int = 1024,
) -> EvalResult:
    cfg = cfg or EvalConfig()
    examples = split.part(part)
    k = max(cfg.ks)
    exclude_all = prior_items(split, part) if cfg.mask_history else None
    start = time.perf_counter()
    lists = []
    for lo in range(0, len(examples), batch_size):
        hi = lo + batch_size
        excl = None if exclude_all is None else exclude_all[lo:hi]
        lists.append(np.asarray(model.recommend(examples.histories[lo:hi], k, excl)))
    seconds = time.perf_counter() - start
    topk = np.concatenate(lists) if lists else np.zeros((0, k), np.int64)
    ranks = target_ranks(topk, examples.targets)
    cold = split.train_item_counts()[examples.targets] <= cfg.cold_start_max_train
    return EvalResult(
        part=part,
        metrics=summarize(ranks, cfg.ks),
        cold_start=summarize(ranks[cold], cfg.ks),
        n_users=len(examples),
        n_cold=int(cold.sum()),
        users=examples.users,
        ranks=ranks,
        seconds=seconds,
        cold=cold,
    )


def paired_test(ranks_a: np.ndarray, ranks_b: np.ndarray, metric: str = "NDCG@10") -> dict[str, float]:
    """Paired significance of run A vs run B on the same users (two-sided t-test and Wilcoxon)."""
    from scipy import stats

    k = int(metric.split("@")[1])
    a = per_user_metrics(ranks_a, [k])[metric]
    b = per_user_metrics(ranks_b, [k])[metric]
    if len(a) != len(b):
        raise ValueError(f"runs cover {len(a)} and {len(b)} users; a paired test needs the same users")
    diff = a - b
    t = stats.ttest_rel(a, b) if diff.any() else None
    w = stats.wilcoxon(a, b) if diff.any() else None
    return {
        "metric": metric,
        "mean_a": float(a.mean()),
        "mean_b": float(b.mean()),
        "t_pvalue": float(t.pvalue) if t else 1.0,
        "wilcoxon_pvalue": float(w.pvalue) if w else 1.0,
    }
