"""LightGCN on the training user-item graph: the collaborative embeddings e_c (paper 4.2.2.2).

Users are nodes 0..n_users-1 and items nodes n_users..n_users+n_items-1 of one bipartite graph
built from the training sequences only, so no validation or test interaction leaks into e_c.
Training is BPR with uniformly sampled negatives; early stopping watches validation Recall@k with
the user's training items masked, and popularity's Recall@k under the same masking is recorded as
the floor a useful collaborative signal has to clear.
"""

from __future__ import annotations

import copy
import logging
import resource
import sys
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch_geometric.nn.conv.gcn_conv import gcn_norm
from torch_geometric.nn.models import LightGCN
from torch_geometric.utils import to_torch_csr_tensor
from tqdm.auto import tqdm

from cemg.checkpoint import TrainingCheckpoint
from cemg.collab.artifact import CollabEmbeddings
from cemg.config import CollabConfig
from cemg.data.errors import DataError
from cemg.data.split import SplitDataset
from cemg.evaluation.metrics import hit_rate, target_ranks

log = logging.getLogger(__name__)

# Resampling rounds for negatives that hit a training positive; after a few rounds the expected
# number of survivors is ~0 on real data (Beauty's density is 0.07%), and a rare one is harmless.
_NEGATIVE_ROUNDS = 8
_EVAL_CHUNK = 2048  # validation users scored at once: (chunk, n_items) float32 scores


@dataclass(frozen=True)
class UserItemGraph:
    """The bipartite training graph; `edge_index` holds every (user, item) pair in both directions."""

    n_users: int
    n_items: int
    users: np.ndarray  # (E,) user id of each distinct training pair
    items: np.ndarray  # (E,) item id (0-based, not shifted by n_users)

    @property
    def num_nodes(self) -> int:
        return self.n_users + self.n_items

    @property
    def n_edges(self) -> int:
        return len(self.users)

    @property
    def edge_index(self) -> torch.Tensor:
        """(2, 2E) int64: user->item and item->user, item nodes offset by n_users."""
        u = torch.from_numpy(self.users)
        i = torch.from_numpy(self.items) + self.n_users
        return torch.cat([torch.stack([u, i]), torch.stack([i, u])], dim=1)


def build_graph(split: SplitDataset) -> UserItemGraph:
    """The user-item graph of `split.train`; a repeated interaction is one edge."""
    n_users, n_items = split.dataset.n_users, split.n_items
    if len(split.train) != n_users:
        raise DataError(split.dataset.name, f"{len(split.train)} training sequences for {n_users} users",
                        field="train")
    lengths = np.fromiter((len(s) for s in split.train), dtype=np.int64, count=n_users)
    items = np.concatenate(split.train).astype(np.int64) if n_users else np.zeros(0, np.int64)
    users = np.repeat(np.arange(n_users, dtype=np.int64), lengths)
    bad = (items < 0) | (items >= n_items)
    if bad.any():
        user = int(users[bad][0])
        raise DataError(split.dataset.name, f"user {user} has item id {int(items[bad][0])} outside "
                        f"0..{n_items - 1}", field="train")
    # Sorting by key (user-major) makes the pair order, and so the whole run, independent of how
    # the sequences happened to be ordered.
    keys = np.unique(users * n_items + items)
    return UserItemGraph(n_users, n_items, keys // n_items, keys % n_items)


class _SymmetricSpMM(torch.autograd.Function):
    """A @ x for a symmetric sparse A, whose backward reuses A instead of transposing it.

    Why by hand: PyTorch's CSR matmul backward builds A^T (a sort of all edges) on every call.
    Measured on Beauty's training graph (34,464 nodes, 307,552 directed edges, d=64, 3 layers,
    batch 4,096, one CPU thread), CPU time per training step: PyG's LightGCN on edge_index
    1,120-1,270 ms (it renormalises and scatters per layer); the same model on a precomputed
    normalised CSR adjacency 190-275 ms; with this backward 133-200 ms.
    """

    @staticmethod
    def forward(ctx, adj: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.adj = adj
        return adj @ x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[None, torch.Tensor]:
        return None, ctx.adj @ grad


class _LightGCN(LightGCN):
    """PyG's LightGCN (init, alpha, BPR loss) propagating over a fixed normalised adjacency."""

    def get_embedding(self, adj: torch.Tensor, edge_weight: torch.Tensor | None = None) -> torch.Tensor:
        x = self.embedding.weight  # (num_nodes, d) layer 0
        out = x * self.alpha[0]
        for layer in range(self.num_layers):
            x = _SymmetricSpMM.apply(adj, x)
            out = out + x * self.alpha[layer + 1]
        return out  # (num_nodes, d) layer average


def normalized_adjacency(graph: UserItemGraph, device: str | torch.device = "cpu") -> torch.Tensor:
    """D^-1/2 A D^-1/2 as a CSR tensor (symmetric; isolated nodes get empty rows)."""
    edge_index = graph.edge_index
    edge_index, weight = gcn_norm(edge_index, None, graph.num_nodes, add_self_loops=False)
    with warnings.catch_warnings():
        # PyTorch flags CSR as beta on every construction; the one operation used here (CSR @ dense)
        # is covered by the tests, so the warning only clutters each run's log.
        warnings.filterwarnings("ignore", message="Sparse (CSR tensor support|invariant checks)")
        n = graph.num_nodes
        return to_torch_csr_tensor(edge_index.to(device), weight.to(device), size=(n, n))


def _bpr_scores(out: torch.Tensor, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """<e_u, e_pos> and <e_u, e_neg> for a batch of (user, positive, negative) node ids: (B,) each.

    index_select, not out[users]: the backward of tensor indexing is index_put_ with accumulate,
    which on CPU adds the rows of repeated nodes from several threads in no fixed order (PyTorch
    lists it as nondeterministic), so two runs with 2 threads drifted apart from the first step.
    index_select's backward (index_add_) adds them in index order. One gather for the three roles
    keeps it one index_add_ in backward. Measured cost: none beyond noise (docs/reliability.md,
    bench/lightgcn_step.py, which swaps this function for the old indexing with --indexing old).
    """
    u, p, n = out.index_select(0, torch.cat([users, pos, neg])).split(len(users))  # (B, d) each
    return (u * p).sum(-1), (u * n).sum(-1)


class _NegativeSampler:
    """Uniform item negatives, resampled where they hit one of the user's training items."""

    def __init__(self, graph: UserItemGraph, generator: torch.Generator, device: torch.device):
        self.n_items, self.generator, self.device = graph.n_items, generator, device
        keys = graph.users * graph.n_items + graph.items  # sorted by build_graph
        self.positive_keys = torch.from_numpy(keys).to(device)

    def _is_positive(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        keys = users * self.n_items + items
        pos = torch.searchsorted(self.positive_keys, keys).clamp_(max=len(self.positive_keys) - 1)
        return self.positive_keys[pos] == keys

    def sample(self, users: torch.Tensor) -> torch.Tensor:
        items = torch.randint(self.n_items, users.shape, generator=self.generator, device=self.device)
        for _ in range(_NEGATIVE_ROUNDS):
            clash = self._is_positive(users, items)
            if not bool(clash.any()):
                break
            fresh = torch.randint(self.n_items, users.shape, generator=self.generator, device=self.device)
            items = torch.where(clash, fresh, items)
        return items


class _ValidRecall:
    """Recall@k on the validation targets: all items scored, the user's training items masked."""

    def __init__(self, split: SplitDataset, k: int, device: torch.device):
        valid = split.valid
        self.k = min(k, split.n_items)
        self.device = device
        self.users = torch.from_numpy(valid.users).to(device)
        self.targets = valid.targets
        # The masked (row, item) pairs, grouped by validation row so a chunk is one slice.
        train = [split.train[u] for u in valid.users]
        lengths = np.array([len(t) for t in train], dtype=np.int64)
        self.mask_rows = torch.from_numpy(np.repeat(np.arange(len(train)), lengths)).to(device)
        self.mask_items = torch.from_numpy(
            np.concatenate(train).astype(np.int64) if train else np.zeros(0, np.int64)
        ).to(device)
        self.bounds = np.concatenate([[0], np.cumsum(lengths)])

    def __len__(self) -> int:
        return len(self.targets)

    def recall(self, score_rows) -> float:
        """`score_rows(users)` -> (len(users), n_items) scores for a chunk of validation users."""
        if len(self) == 0:
            return 0.0
        topk = []
        for lo in range(0, len(self), _EVAL_CHUNK):
            hi = min(lo + _EVAL_CHUNK, len(self))
            scores = score_rows(self.users[lo:hi])
            a, b = self.bounds[lo], self.bounds[hi]
            scores[self.mask_rows[a:b] - lo, self.mask_items[a:b]] = -torch.inf
            topk.append(scores.topk(self.k, dim=1).indices.cpu().numpy())
        ranks = target_ranks(np.concatenate(topk), self.targets)
        return float(hit_rate(ranks, self.k).mean())


def _peak_memory() -> dict[str, float]:
    # ru_maxrss is the whole process's peak (data loading included): KiB on Linux, bytes on macOS.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"peak_rss_mb": rss / (1024**2 if sys.platform == "darwin" else 1024)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 1024**2
    return out


def train_lightgcn(
    split: SplitDataset,
    cfg: CollabConfig,
    seed: int,
    device: str = "cpu",
    checkpoint: TrainingCheckpoint | None = None,
) -> CollabEmbeddings:
    """Train LightGCN with BPR on `split.train`; return the best-validation layer-averaged embeddings.

    Everything (graph, embeddings, sampling, scoring) lives on `device`; on CPU the same seed gives
    identical embeddings. On CUDA, sparse matmul backward is not bit-reproducible. With a
    `checkpoint`, the state is saved after epochs and a rerun continues from the last save.
    """
    start = time.perf_counter()
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    graph = build_graph(split)
    if graph.n_edges == 0:
        raise DataError(split.dataset.name, "no training interactions to build the LightGCN graph from",
                        field="train")
    n_users = graph.n_users
    adj = normalized_adjacency(graph, dev)
    generator = torch.Generator(device=dev).manual_seed(seed)

    model = _LightGCN(graph.num_nodes, cfg.dim, cfg.layers).to(dev)
    torch.nn.init.xavier_uniform_(model.embedding.weight, generator=generator)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sampler = _NegativeSampler(graph, generator, dev)
    pair_users = torch.from_numpy(graph.users).to(dev)
    pair_items = torch.from_numpy(graph.items).to(dev)

    evaluator = _ValidRecall(split, cfg.valid_k, dev)
    counts = torch.from_numpy(split.train_item_counts()).to(dev)
    # Popularity as distinct scores (more training interactions first, ties to the lower item id,
    # like cemg's Popularity baseline) so that top-k does not break ties arbitrarily.
    by_count = torch.sort(counts, descending=True, stable=True).indices
    pop_scores = torch.empty(graph.n_items, device=dev)
    pop_scores[by_count] = torch.arange(graph.n_items, 0, -1, device=dev, dtype=pop_scores.dtype)
    pop_recall = evaluator.recall(lambda users: pop_scores.expand(len(users), -1).clone())
    log.info(
        "LightGCN graph: %d users, %d items, %d training edges; %d validation users; "
        "popularity valid Recall@%d = %.4f",
        n_users, graph.n_items, graph.n_edges, len(evaluator), evaluator.k, pop_recall,
    )

    def embeddings() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            out = model.get_embedding(adj)
        return out[:n_users], out[n_users:]

    def valid_recall() -> float:
        users_emb, items_emb = embeddings()
        return evaluator.recall(lambda users: users_emb[users] @ items_emb.T)

    best = {"recall": -1.0, "epoch": 0, "state": copy.deepcopy(model.state_dict())}
    curve: list[dict] = []
    stale, first = 0, 1
    checkpoint = checkpoint or TrainingCheckpoint(None)
    saved = checkpoint.restore(model=model, optimizer=optimizer, generators={"sampling": generator})
    if saved is not None:
        best, curve, stale, first = saved["best"], saved["curve"], saved["stale"], saved["epoch"] + 1
        start -= saved["seconds"]
    progress = tqdm(range(first, cfg.epochs + 1), desc="LightGCN", unit="epoch", leave=False,
                    initial=first - 1, total=cfg.epochs)
    for epoch in progress:
        order = torch.randperm(graph.n_edges, generator=generator, device=dev)
        total, batches = 0.0, 0
        for batch in order.split(cfg.batch_size):
            users, pos = pair_users[batch], pair_items[batch]
            neg = sampler.sample(users)
            out = model.get_embedding(adj)  # (num_nodes, d): full propagation, as in LightGCN
            pos, neg = pos + n_users, neg + n_users
            pos_rank, neg_rank = _bpr_scores(out, users, pos, neg)
            loss = model.recommendation_loss(
                pos_rank, neg_rank, node_id=torch.cat([users, pos, neg]), lambda_reg=cfg.weight_decay
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
            batches += 1
        point = {"epoch": epoch, "loss": total / batches, "seconds": time.perf_counter() - start}
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            point["valid_recall"] = valid_recall()
            if point["valid_recall"] > best["recall"]:
                state = copy.deepcopy(model.state_dict())
                best = {"recall": point["valid_recall"], "epoch": epoch, "state": state}
                stale = 0
            else:
                stale += 1
            log.info("epoch %d: BPR loss %.4f, valid Recall@%d %.4f (best %.4f at epoch %d), %.0f s",
                     epoch, point["loss"], evaluator.k, point["valid_recall"], best["recall"], best["epoch"],
                     point["seconds"])
            progress.set_postfix(loss=f"{point['loss']:.4f}", recall=f"{point['valid_recall']:.4f}")
        curve.append(point)
        if stale >= cfg.patience:
            log.info("early stop at epoch %d: %d evaluations without improvement", epoch, stale)
            break
        if checkpoint.due():
            checkpoint.save(model=model, optimizer=optimizer, generators={"sampling": generator}, epoch=epoch,
                            best=best, curve=curve, stale=stale, seconds=time.perf_counter() - start)
    progress.close()

    model.load_state_dict(best["state"])
    users_emb, items_emb = embeddings()
    wall = time.perf_counter() - start
    info = {
        "model": "LightGCN",
        "device": str(dev),
        "seed": seed,
        "config": cfg.model_dump(),
        "n_users": n_users,
        "n_items": graph.n_items,
        "n_edges": graph.n_edges,
        "n_valid_users": len(evaluator),
        "k": evaluator.k,
        "best_epoch": best["epoch"],
        "best_valid_recall": best["recall"],
        "pop_valid_recall": pop_recall,
        "epochs_run": curve[-1]["epoch"] if curve else 0,
        "curve": curve,
        "wall_seconds": wall,
        **_peak_memory(),
    }
    log.info("LightGCN done in %.0f s: best valid Recall@%d %.4f at epoch %d (popularity %.4f)",
             wall, evaluator.k, best["recall"], best["epoch"], pop_recall)
    return CollabEmbeddings(
        users_emb.float().cpu().numpy().astype(np.float32, copy=False),
        items_emb.float().cpu().numpy().astype(np.float32, copy=False),
        info,
        split.train_item_counts().astype(np.int64),
    )
