"""LightGCN training step time, and whether two trainings with the same seed agree bit for bit.

    python bench/lightgcn_step.py --size demo           # the demo's graph (600 users, 300 items)
    python bench/lightgcn_step.py --size beauty         # a random graph of Beauty's size
    python bench/lightgcn_step.py --size beauty --no-check   # time only (one training)
    python bench/lightgcn_step.py --size beauty --indexing both   # index_select vs the old out[users]

"beauty" is a random 5-core-like dataset with Beauty's counts (22,363 users, 12,101 items,
198,502 interactions, so ~153.8k training pairs, ~307k directed edges) trained with the Beauty
settings of bench/lightgcn_beauty.py (d=64, batch 8192): the timing and the determinism check need
the graph's size, not its real structure. Each training runs `train_lightgcn` (the code a real run
takes) for `--epochs` epochs with validation only after the last one; the time per step is the
wall time of the epochs after the first, which hold no validation, divided by their batches.
`--indexing old` swaps `lightgcn._bpr_scores` for the indexing LightGCN had before it was made
deterministic (`out[users]`, `out[pos]`, `out[neg]`: an index_put_ with accumulate in backward);
`both` alternates the two (new, old, new, old, ...) so that a change in the machine's load hits
both alike, and also times the gather and its backward alone (100 calls each, interleaved). Step
times are reported as the median and the tenth percentile: on a shared machine the other jobs'
load comes and goes for minutes, and with 2 threads on 2 busy cores a step can take 20x longer.
Writes bench/results/lightgcn_step_SIZE.json unless --out says otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from baselines_beauty import machine  # noqa: E402  (bench/ is on sys.path when run as a script)
from cemg.artifacts import atomic_write_text  # noqa: E402
from cemg.collab import lightgcn  # noqa: E402
from cemg.config import CollabConfig, load_config  # noqa: E402
from cemg.data.dataset import InteractionDataset, ItemTable  # noqa: E402
from cemg.data.load import load_dataset  # noqa: E402
from cemg.data.split import SplitDataset, leave_one_out  # noqa: E402

BEAUTY_USERS, BEAUTY_ITEMS, BEAUTY_INTERACTIONS = 22_363, 12_101, 198_502


def beauty_sized_split(seed: int = 0) -> SplitDataset:
    """Uniformly random sequences of at least 5 items with Beauty's user, item and interaction counts."""
    rng = np.random.default_rng(seed)
    extra = BEAUTY_INTERACTIONS - 5 * BEAUTY_USERS
    lengths = 5 + rng.multinomial(extra, np.full(BEAUTY_USERS, 1 / BEAUTY_USERS))
    sequences = [rng.integers(0, BEAUTY_ITEMS, n) for n in lengths]
    dataset = InteractionDataset("beauty-sized", [f"u{u}" for u in range(BEAUTY_USERS)], sequences,
                                 ItemTable([f"i{i}" for i in range(BEAUTY_ITEMS)]))
    return leave_one_out(dataset, 50)


def _old_bpr_scores(out: torch.Tensor, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    # The training step's gather before commit adf38dc (nondeterministic backward under >1 thread).
    u = out[users]
    return (u * out[pos]).sum(-1), (u * out[neg]).sum(-1)


INDEXING = {"new": lightgcn._bpr_scores, "old": _old_bpr_scores}


def setup(size: str) -> tuple[SplitDataset, CollabConfig, int]:
    if size == "demo":
        cfg = load_config(ROOT / "src" / "cemg" / "configs" / "demo.yaml", ["cache_dir=/tmp/cemg-bench-cache"])
        return leave_one_out(load_dataset(cfg.data, cfg.seed, cfg.cache_dir), cfg.data.max_history), cfg.collab, cfg.seed
    # bench/lightgcn_beauty.py's Beauty settings; d=64 is configs/beauty.yaml's collab.dim.
    cfg = CollabConfig(dim=64, lr=1e-2, batch_size=8192)
    return beauty_sized_split(), cfg, 42


def train(split: SplitDataset, cfg: CollabConfig, seed: int, epochs: int, indexing: str = "new"
          ) -> tuple[str, list[float]]:
    """A hash of the user and item embeddings, and the seconds of each epoch after the first."""
    cfg = cfg.model_copy(update={"epochs": epochs, "eval_every": epochs, "patience": epochs})
    lightgcn._bpr_scores = INDEXING[indexing]
    try:
        out = lightgcn.train_lightgcn(split, cfg, seed)
    finally:
        lightgcn._bpr_scores = INDEXING["new"]
    seconds = [p["seconds"] for p in out.info["curve"]]
    digest = hashlib.sha256(out.users.tobytes() + out.items.tobytes()).hexdigest()[:16]
    return digest, [b - a for a, b in zip(seconds, seconds[1:])]


def _p10(values: list[float]) -> float:
    # The tenth percentile: on a shared machine the median also measures the other jobs.
    return statistics.quantiles(values, n=10)[0] if len(values) > 1 else values[0]


def gather_backward_ms(n_users: int, n_items: int, dim: int, batch: int, variants: list[str],
                       repeats: int = 100) -> dict[str, list[float]]:
    """The gather of one step and its backward alone, on random node ids of the graph's size:
    milliseconds per call, the variants interleaved call by call."""
    g = torch.Generator().manual_seed(0)
    table = torch.randn(n_users + n_items, dim, generator=g, requires_grad=True)
    users = torch.randint(n_users, (batch,), generator=g)
    pos, neg = (torch.randint(n_items, (batch,), generator=g) + n_users for _ in range(2))
    times: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(repeats):
        for variant in variants:
            start = time.perf_counter()
            pos_rank, neg_rank = INDEXING[variant](table * 1.0, users, pos, neg)  # * 1.0: a non-leaf, as in training
            (pos_rank - neg_rank).sum().backward()
            times[variant].append(1000 * (time.perf_counter() - start))
            table.grad = None
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=["demo", "beauty"], default="beauty")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--epochs", type=int, default=None, help="default: 20 (demo), 4 (beauty)")
    parser.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                        help="train --trainings times and compare the embeddings bit for bit")
    parser.add_argument("--trainings", type=int, default=2, help="trainings per variant with --check")
    parser.add_argument("--indexing", choices=["new", "old", "both"], default="new",
                        help="the training step's gather: index_select (new), out[users] (old), or both")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    split, cfg, seed = setup(args.size)
    epochs = args.epochs or (20 if args.size == "demo" else 4)
    n_pairs = len(np.unique(np.concatenate([u * split.n_items + s for u, s in enumerate(split.train)])))
    steps = -(-n_pairs // cfg.batch_size)

    load_before = os.getloadavg()[0]
    variants = ["new", "old"] if args.indexing == "both" else [args.indexing]
    runs: dict[str, list[tuple[str, list[float]]]] = {v: [] for v in variants}
    for _ in range(args.trainings if args.check else 1):
        for variant in variants:
            runs[variant].append(train(split, cfg, seed, epochs, variant))
    gather = gather_backward_ms(len(split.train), split.n_items, cfg.dim, cfg.batch_size, variants)
    result = {
        "command": "python bench/lightgcn_step.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "size": args.size,
        "users": len(split.train), "items": split.n_items, "directed_edges": 2 * n_pairs,
        "dim": cfg.dim, "layers": cfg.layers, "batch_size": cfg.batch_size, "steps_per_epoch": steps,
        "epochs_timed_per_training": epochs - 1,
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],  # before, after
    }
    for variant, trainings in runs.items():
        per_step_ms = [1000 * s / steps for _, epoch_seconds in trainings for s in epoch_seconds]
        result[variant] = {
            "per_step_ms_median": round(statistics.median(per_step_ms), 2),
            "per_step_ms_p10": round(_p10(per_step_ms), 2),
            "per_step_ms": [round(t, 2) for t in per_step_ms],
            "gather_backward_ms_median": round(statistics.median(gather[variant]), 3),
            "gather_backward_ms_p10": round(_p10(gather[variant]), 3),
            "embedding_hashes": [digest for digest, _ in trainings],
            "identical": len({digest for digest, _ in trainings}) == 1 if args.check else None,
        }
    if len(runs) == 2:
        for key in ("per_step_ms_median", "per_step_ms_p10", "gather_backward_ms_median", "gather_backward_ms_p10"):
            result[f"new_vs_old_{key}"] = round(result["new"][key] / result["old"][key] - 1, 4)
    out = args.out or ROOT / "bench" / "results" / f"lightgcn_step_{args.size}.json"
    atomic_write_text(out, json.dumps(result, indent=2))
    keys = ("per_step_ms_median", "per_step_ms_p10", "gather_backward_ms_median", "identical")
    print(json.dumps({"size": args.size, "directed_edges": result["directed_edges"],
                      **{v: {k: result[v][k] for k in keys} for v in runs},
                      **{k: v for k, v in result.items() if k.startswith("new_vs_old")}}))


if __name__ == "__main__":
    main()
