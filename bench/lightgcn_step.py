"""LightGCN training step time, and whether two trainings with the same seed agree bit for bit.

    python bench/lightgcn_step.py --size demo           # the demo's graph (600 users, 300 items)
    python bench/lightgcn_step.py --size beauty         # a random graph of Beauty's size
    python bench/lightgcn_step.py --size beauty --no-check   # time only (one training)

"beauty" is a random 5-core-like dataset with Beauty's counts (22,363 users, 12,101 items,
198,502 interactions, so ~153.8k training pairs, ~307k directed edges) trained with the Beauty
settings of bench/lightgcn_beauty.py (d=64, batch 8192): the timing and the determinism check need
the graph's size, not its real structure. Each training runs `train_lightgcn` (the code a real run
takes) for `--epochs` epochs with validation only after the last one; the time per step is the
wall time of the epochs after the first, which hold no validation, divided by their batches.
Writes bench/results/lightgcn_step_SIZE.json unless --out says otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from baselines_beauty import machine  # noqa: E402  (bench/ is on sys.path when run as a script)
from cemg.artifacts import atomic_write_text  # noqa: E402
from cemg.collab.lightgcn import train_lightgcn  # noqa: E402
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


def setup(size: str) -> tuple[SplitDataset, CollabConfig, int]:
    if size == "demo":
        cfg = load_config(ROOT / "src" / "cemg" / "configs" / "demo.yaml", ["cache_dir=/tmp/cemg-bench-cache"])
        return leave_one_out(load_dataset(cfg.data, cfg.seed, cfg.cache_dir), cfg.data.max_history), cfg.collab, cfg.seed
    # bench/lightgcn_beauty.py's Beauty settings; d=64 is configs/beauty.yaml's collab.dim.
    cfg = CollabConfig(dim=64, lr=1e-2, batch_size=8192)
    return beauty_sized_split(), cfg, 42


def train(split: SplitDataset, cfg: CollabConfig, seed: int, epochs: int) -> tuple[str, list[float]]:
    """A hash of the item embeddings, and the seconds of each epoch after the first."""
    cfg = cfg.model_copy(update={"epochs": epochs, "eval_every": epochs, "patience": epochs})
    out = train_lightgcn(split, cfg, seed)
    seconds = [p["seconds"] for p in out.info["curve"]]
    digest = hashlib.sha256(out.users.tobytes() + out.items.tobytes()).hexdigest()[:16]
    return digest, [b - a for a, b in zip(seconds, seconds[1:])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=["demo", "beauty"], default="beauty")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--epochs", type=int, default=None, help="default: 20 (demo), 4 (beauty)")
    parser.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                        help="train twice and compare the embeddings bit for bit")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    split, cfg, seed = setup(args.size)
    epochs = args.epochs or (20 if args.size == "demo" else 4)
    n_pairs = len(np.unique(np.concatenate([u * split.n_items + s for u, s in enumerate(split.train)])))
    steps = -(-n_pairs // cfg.batch_size)

    runs = [train(split, cfg, seed, epochs) for _ in range(2 if args.check else 1)]
    per_step_ms = [1000 * s / steps for _, epoch_seconds in runs for s in epoch_seconds]
    result = {
        "command": "python bench/lightgcn_step.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "size": args.size,
        "users": len(split.train), "items": split.n_items, "directed_edges": 2 * n_pairs,
        "dim": cfg.dim, "layers": cfg.layers, "batch_size": cfg.batch_size, "steps_per_epoch": steps,
        "per_step_ms_median": round(statistics.median(per_step_ms), 2),
        "per_step_ms": [round(t, 2) for t in per_step_ms],
        "embedding_hashes": [digest for digest, _ in runs],
        "identical": len({digest for digest, _ in runs}) == 1 if args.check else None,
    }
    out = args.out or ROOT / "bench" / "results" / f"lightgcn_step_{args.size}.json"
    atomic_write_text(out, json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("size", "directed_edges", "per_step_ms_median", "identical")}))


if __name__ == "__main__":
    main()
