"""Tokenizer sanity run and beta/gamma sweep on clustered synthetic items.

Run from the repository root:

    python bench/tokenizer_sweep.py                          # the beta x gamma grid in docs/results.md
    python bench/tokenizer_sweep.py --betas 0.25 --gammas 0.1 --set tokenizer.recon_target=fused

Items: 20 categories x 10 sub-categories x (about) 60 items on a 16-dim latent; text (64 dims) and
collab (64 dims) are fixed random linear views of it plus noise, the collab view adding its own
"taste" clusters that text cannot see. `--image` adds a 64-dim image view missing for 20% of items.
Every configuration trains the tokenizer from the same seed on one thread and records codebook
utilisation, perplexity, collisions before the fix, reconstruction error and training time.
Results go to bench/results/tokenizer_sweep.jsonl (one line per run, appended) unless --out says
otherwise; a Markdown table of the runs of this invocation is printed at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import numpy as np
import torch

from cemg.collab.artifact import CollabEmbeddings
from cemg.config import TokenizerConfig, parse_override
from cemg.features.artifact import ItemFeatures
from cemg.tokenizer.build import build_semantic_ids

log = logging.getLogger("bench.tokenizer_sweep")


def clustered_items(n: int, seed: int, image: bool = False) -> tuple[ItemFeatures, CollabEmbeddings]:
    rng = np.random.default_rng(seed)
    cats, subs, latent = 20, 10, 16
    cat_centres = 2.0 * rng.normal(size=(cats, latent))
    sub_offsets = 1.0 * rng.normal(size=(cats, subs, latent))
    cat, sub = rng.integers(0, cats, n), rng.integers(0, subs, n)
    u = cat_centres[cat] + sub_offsets[cat, sub] + 0.5 * rng.normal(size=(n, latent))
    tastes = rng.normal(size=(30, 8))[rng.integers(0, 30, n)]

    def view(x: np.ndarray, noise: float) -> np.ndarray:
        return (x @ rng.normal(size=(x.shape[1], 64)) / np.sqrt(x.shape[1]) + noise * rng.normal(size=(n, 64))).astype(np.float32)

    text = view(u, 0.3)
    collab = view(np.concatenate([u, 2.0 * tastes], axis=1), 0.3)
    img = img_mask = None
    if image:
        img_mask = rng.random(n) > 0.2
        img = view(u, 0.6) * img_mask[:, None]
    features = ItemFeatures(n, text, np.ones(n, bool), img, img_mask)
    return features, CollabEmbeddings(np.zeros((1, 64), np.float32), collab)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=12_000)
    parser.add_argument("--betas", type=float, nargs="+", default=[0.1, 0.25, 0.5, 1.0])
    parser.add_argument("--gammas", type=float, nargs="+", default=[0.0, 0.01, 0.1, 0.5])
    parser.add_argument("--image", action="store_true", help="add an image view missing for 20%% of items")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="tokenizer.key=value")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench/results/tokenizer_sweep.jsonl"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)

    # The synthetic items have no interaction counts; the sweep's recorded results predate the
    # collab calibration, so it uses LightGCN-style vectors as they are unless told otherwise.
    base: dict = {"collab_calibration": "none"}
    for text in args.overrides:
        key, value = parse_override(text)
        base[key.removeprefix("tokenizer.")] = value
    features, collab = clustered_items(args.items, args.seed, args.image)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for beta in args.betas:
        for gamma in args.gammas:
            cfg = TokenizerConfig(**{**base, "beta": beta, "gamma": gamma})
            start = time.perf_counter()
            _, report = build_semantic_ids(features, collab, cfg, seed=args.seed)
            record = {
                "items": args.items, "image": args.image, "seed": args.seed, "threads": args.threads,
                "machine": platform.machine(), "config": cfg.model_dump(mode="json"),
                "wall_s": time.perf_counter() - start, "report": report,
            }
            with open(args.out, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
            rows.append(record)
            log.info("beta %g gamma %g done in %.0fs", beta, gamma, record["wall_s"])

    print("| beta | gamma | recon MSE | rel. latent err (L4) | utilisation per level | perplexity per level "
          "| collisions before fix | train s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        rep, cfg = r["report"], r["config"]
        levels = rep["levels"]
        used = " / ".join(f"{lv['utilisation']:.2f}" for lv in levels)
        perplexity = " / ".join(f"{lv['perplexity']:.0f}" for lv in levels)
        print(
            f"| {cfg['beta']} | {cfg['gamma']} | {rep['reconstruction']['mse']:.4f} "
            f"| {levels[-1]['relative_latent_error']:.3f} | {used} | {perplexity} "
            f"| {100 * rep['collisions']['rate_before_fix']:.2f}% "
            f"| {rep['training']['seconds']:.0f} |"
        )
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
