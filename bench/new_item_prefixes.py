"""How many of the added items' code prefixes a generator ever saw as a target: for each level L, the
share of added items whose first L codes are the first L codes of some trained item.

    python bench/new_items.py --config configs/beauty.yaml ...             # trains, adds the items
    python bench/new_item_prefixes.py --config configs/beauty.yaml --seeds 42,43,44

Why (generator.content_prior.new_item_prefix_levels): the generator's log p of a prefix no training
target had says only "never seen", so the added items' part weighs only the levels whose prefixes it
knows. Reads the ids of bench/new_items.py's run with the items added (run-semantic<tag>-content);
writes bench/results/new_item_prefixes_<dataset>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from baselines_beauty import machine  # noqa: E402  (bench/ is on sys.path when run as a script)
from cemg.artifacts import atomic_write_text  # noqa: E402
from new_item_share import add_run_arguments, added_run  # noqa: E402


def known_prefix_shares(codes: np.ndarray, n_trained: int) -> list[float]:
    """Per level L = 1..levels: the share of rows n_trained.. of `codes` (items, levels) whose first L
    codes are those of some row before n_trained."""
    shares = []
    for level in range(1, codes.shape[1] + 1):
        trained = {tuple(row) for row in codes[:n_trained, :level].tolist()}
        added = codes[n_trained:, :level].tolist()
        shares.append(float(np.mean([tuple(row) in trained for row in added])) if added else float("nan"))
    return shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(parser)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    from cemg.api import Recommender

    name, _, run = added_run(args)
    result = {"command": "python " + " ".join(["bench/new_item_prefixes.py", *sys.argv[1:]]), "machine": machine(),
              "run": str(run.relative_to(ROOT) if run.is_relative_to(ROOT) else run), "per_seed": {}}
    for seed in (int(s) for s in args.seeds.split(",")):
        generator = Recommender.load(run, device="cpu", seed=seed).generator
        shares = known_prefix_shares(generator.semantic_ids.codes, generator.n_trained)
        result["per_seed"][str(seed)] = {"trained_items": int(generator.n_trained),
                                         "added_items": int(generator.n_items - generator.n_trained),
                                         "known_prefix_share_by_level": shares}
        print(f"seed {seed}: added items whose first L codes some trained item has, L = 1..: "
              + ", ".join(f"{s:.3f}" for s in shares), flush=True)
    out = args.out or ROOT / "bench" / "results" / f"new_item_prefixes_{name}.json"
    atomic_write_text(out, json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
