"""Sequential baselines in the same protocol: Popularity, SASRec, GRU4Rec.

`train_baseline(name, split, cfg)` is the one entry point: it trains on split.train only, selects
by validation NDCG@10 and returns a Recommender ready for `cemg.evaluation.protocol.evaluate`.
"""

from __future__ import annotations

from cemg.baselines.gru4rec import GRU4Rec
from cemg.baselines.popularity import Popularity
from cemg.baselines.sasrec import SASRec
from cemg.baselines.sequential import FitReport, SequentialRecommender, fit_sequential
from cemg.config import CEMGConfig, resolve_device
from cemg.data.split import SplitDataset

BASELINES = ("pop", "sasrec", "gru4rec")

__all__ = [
    "BASELINES", "FitReport", "GRU4Rec", "Popularity", "SASRec", "SequentialRecommender",
    "build_network", "train_baseline",
]


def build_network(name: str, n_items: int, cfg: CEMGConfig):
    b = cfg.baseline
    if name == "sasrec":
        return SASRec(n_items, cfg.data.max_history, b.hidden, b.layers, b.heads, b.dropout)
    if name == "gru4rec":
        return GRU4Rec(n_items, cfg.data.max_history, b.hidden, b.layers, b.dropout)
    raise ValueError(f"unknown neural baseline {name!r}; expected one of {BASELINES[1:]}")


def train_baseline(name: str, split: SplitDataset, cfg: CEMGConfig) -> tuple[Popularity | SequentialRecommender, FitReport | None]:
    """Fit baseline `name` ('pop', 'sasrec' or 'gru4rec'); Popularity has no training report."""
    if name == "pop":
        return Popularity.fit(split), None
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; expected one of {BASELINES}")
    import torch

    torch.manual_seed(cfg.seed)  # the network's initial weights come from this seed
    net = build_network(name, split.n_items, cfg)
    return fit_sequential(net, split, cfg.baseline, cfg.evaluation, resolve_device(cfg.device), cfg.seed, name)
