"""HR@K and NDCG@K from the rank of each user's single held-out target.

Metrics score rankings, not models: every recommender (baseline or generative) hands over its
top-k list and the target's 0-based position in it is all that is needed. A target missing from
the list has rank = NOT_RANKED, which counts as a miss at every K.
"""

from __future__ import annotations

import numpy as np

NOT_RANKED = np.iinfo(np.int64).max


def target_ranks(topk: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based position of targets[u] in topk[u] (shape (n, k)), NOT_RANKED where absent."""
    hits = topk == targets[:, None]
    found = hits.any(axis=1)
    ranks = np.full(len(targets), NOT_RANKED, dtype=np.int64)
    ranks[found] = hits[found].argmax(axis=1)
    return ranks


def hit_rate(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-user HR@k: 1 if the target is in the top k."""
    return (ranks < k).astype(np.float64)


def ndcg(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-user NDCG@k with one relevant item: 1/log2(rank+2) inside the top k, else 0."""
    out = np.zeros(len(ranks), dtype=np.float64)
    inside = ranks < k
    out[inside] = 1.0 / np.log2(ranks[inside].astype(np.float64) + 2.0)
    return out


def per_user_metrics(ranks: np.ndarray, ks: list[int]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for k in ks:
        out[f"HR@{k}"] = hit_rate(ranks, k)
        out[f"NDCG@{k}"] = ndcg(ranks, k)
    return out


def summarize(ranks: np.ndarray, ks: list[int]) -> dict[str, float]:
    return {name: float(v.mean()) if len(v) else 0.0 for name, v in per_user_metrics(ranks, ks).items()}
