"""What SASRec and GRU4Rec share: padded batches, full-catalogue recommendation, and the training
loop (full-softmax cross-entropy at every position, early stopping on validation NDCG@10).

The encoders map left-padded, shifted item ids (batch, L) to hidden states (batch, L, d) and expose
`item_embeddings` (n_items + 1, d); an item's score is the dot product of the state with its row.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from cemg.artifacts import atomic_file, atomic_write_text
from cemg.config import BaselineConfig, EvalConfig
from cemg.data.split import SplitDataset

log = logging.getLogger(__name__)

SELECT_METRIC = "NDCG@10"


def left_pad(sequences: list[np.ndarray], length: int) -> np.ndarray:
    """(n, length) int64 of the last `length` items of each sequence, shifted by +1, 0 = pad."""
    out = np.zeros((len(sequences), length), dtype=np.int64)
    for row, seq in enumerate(sequences):
        tail = np.asarray(seq, dtype=np.int64)[-length:] if length else seq[:0]
        if len(tail):
            out[row, length - len(tail) :] = tail + 1
    return out


def training_windows(train: list[np.ndarray], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and next-item targets (both (n, max_len), shifted, 0 = pad) from the last
    max_len + 1 items of every training sequence with at least two items."""
    windows = [np.asarray(s[-(max_len + 1) :]) for s in train if len(s) >= 2]
    inputs = left_pad([w[:-1] for w in windows], max_len)
    targets = left_pad([w[1:] for w in windows], max_len)
    return inputs, targets


class SequentialRecommender:
    """Wraps a trained encoder in the Recommender protocol (full-catalogue top-k)."""

    def __init__(self, net: nn.Module, device: str | torch.device = "cpu"):
        self.net = net.to(device)
        self.device = torch.device(device)

    @property
    def n_items(self) -> int:
        return self.net.n_items

    def save(self, folder: Path) -> None:
        """`model.pt` (weights) and `model.json` (class and constructor arguments)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_file(folder / "model.pt") as fh:
            torch.save(self.net.state_dict(), fh)
        spec = {"class": type(self.net).__name__, "hparams": self.net.hparams}
        atomic_write_text(folder / "model.json", json.dumps(spec, indent=2))

    @classmethod
    def load(cls, folder: Path, device: str = "cpu") -> SequentialRecommender:
        from cemg.baselines.gru4rec import GRU4Rec
        from cemg.baselines.sasrec import SASRec

        folder = Path(folder)
        spec = json.loads((folder / "model.json").read_text(encoding="utf-8"))
        classes = {"SASRec": SASRec, "GRU4Rec": GRU4Rec}
        if spec.get("class") not in classes:
            raise ValueError(f"{folder / 'model.json'}: unknown model class {spec.get('class')!r}")
        net = classes[spec["class"]](**spec["hparams"])
        net.load_state_dict(torch.load(folder / "model.pt", map_location=device, weights_only=True))
        return cls(net, device)

    @torch.no_grad()
    def scores(self, histories: list[np.ndarray]) -> torch.Tensor:
        """(n, n_items) scores of every item as the next one after each history."""
        self.net.eval()
        seq = torch.from_numpy(left_pad(histories, self.net.max_len)).to(self.device)
        last = self.net(seq)[:, -1]  # (n, d): left padding puts the newest item last
        return last @ self.net.item_embeddings[1:].T

    @torch.no_grad()
    def recommend(
        self, histories: list[np.ndarray], k: int, exclude: list[np.ndarray] | None = None
    ) -> np.ndarray:
        scores = self.scores(histories)
        if exclude is not None:
            rows = np.repeat(np.arange(len(exclude)), [len(e) for e in exclude])
            cols = np.concatenate([np.asarray(e, np.int64) for e in exclude]) if len(exclude) else rows
            scores[torch.from_numpy(rows).to(self.device), torch.from_numpy(cols).to(self.device)] = -torch.inf
        values, ids = scores.topk(min(k, self.n_items), dim=1)
        ids[values == -torch.inf] = -1  # fewer than k items left after exclusion
        out = np.full((len(histories), k), -1, dtype=np.int64)
        out[:, : ids.shape[1]] = ids.cpu().numpy()
        return out


@dataclass
class FitReport:
    """How training went: per-evaluation history, the selected epoch and its validation score."""

    model: str
    epochs_run: int
    best_epoch: int
    best_valid: float
    select_metric: str
    seconds: float
    device: str
    n_windows: int
    history: list[dict] = field(default_factory=list)

    def save(self, path: Path) -> None:
        atomic_write_text(Path(path), json.dumps(asdict(self), indent=2))


def fit_sequential(
    net: nn.Module,
    split: SplitDataset,
    cfg: BaselineConfig,
    eval_cfg: EvalConfig | None = None,
    device: str = "cpu",
    seed: int = 0,
    name: str = "sequential",
) -> tuple[SequentialRecommender, FitReport]:
    """Train `net` on split.train only, select the epoch by validation NDCG@10, restore it.

    Every position of each training window predicts its next item with a softmax over the whole
    catalogue (no sampled negatives). Validation runs every `cfg.eval_every` epochs; training stops
    after `cfg.patience` evaluations without improvement.
    """
    from cemg.evaluation.protocol import evaluate

    eval_cfg = eval_cfg or EvalConfig()
    if 10 not in eval_cfg.ks:
        eval_cfg = eval_cfg.model_copy(update={"ks": sorted({*eval_cfg.ks, 10})})
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = SequentialRecommender(net, device)
    inputs, targets = training_windows(split.train, net.max_len)
    if len(inputs) == 0:
        raise ValueError("no training sequence has two or more items; nothing to train on")
    inputs_t, targets_t = torch.from_numpy(inputs), torch.from_numpy(targets)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    log.info("%s: %d training windows of length %d, %d items, %d parameters, device %s",
             name, len(inputs), net.max_len, net.n_items, sum(p.numel() for p in net.parameters()), device)

    best, best_epoch, best_state, stale = -1.0, 0, None, 0
    history: list[dict] = []
    start = time.perf_counter()
    epoch = 0
    bar = tqdm(range(1, cfg.max_epochs + 1), desc=name, unit="epoch")
    for epoch in bar:
        net.train()
        tic, total, count = time.perf_counter(), 0.0, 0
        for idx in torch.randperm(len(inputs), generator=gen).split(cfg.batch_size):
            x, y = inputs_t[idx].to(device), targets_t[idx].to(device)
            keep = y > 0
            hidden = net(x)[keep]  # (positions, d): padding positions never enter the loss
            logits = hidden @ net.item_embeddings[1:].T  # (positions, n_items)
            loss = F.cross_entropy(logits, y[keep] - 1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n = int(keep.sum())
            total, count = total + float(loss.detach()) * n, count + n
        row = {"epoch": epoch, "loss": total / max(count, 1), "train_seconds": time.perf_counter() - tic}
        if epoch % cfg.eval_every == 0 or epoch == cfg.max_epochs:
            result = evaluate(model, split, "valid", eval_cfg)
            row.update({f"valid_{k}": v for k, v in result.metrics.items()}, valid_seconds=result.seconds)
            score = result.metrics[SELECT_METRIC]
            if score > best:
                best, best_epoch, stale = score, epoch, 0
                best_state = copy.deepcopy(net.state_dict())
            else:
                stale += 1
            log.info("%s epoch %d: loss %.4f, valid %s %.4f (best %.4f @ %d), %.1fs/epoch",
                     name, epoch, row["loss"], SELECT_METRIC, score, best, best_epoch, row["train_seconds"])
            bar.set_postfix(loss=f"{row['loss']:.3f}", valid=f"{score:.4f}", best=f"{best:.4f}")
        history.append(row)
        if stale >= cfg.patience:
            log.info("%s: no better %s for %d evaluations; stopping", name, SELECT_METRIC, stale)
            break
    bar.close()
    if best_state is not None:
        net.load_state_dict(best_state)
    seconds = time.perf_counter() - start
    log.info("%s: trained %d epochs in %.0fs; restored epoch %d (valid %s %.4f)",
             name, epoch, seconds, best_epoch, SELECT_METRIC, best)
    report = FitReport(name, epoch, best_epoch, best, SELECT_METRIC, seconds, str(device), len(inputs), history)
    return model, report
