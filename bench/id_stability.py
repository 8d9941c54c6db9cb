"""How much do the semantic ids move across seeds and across a tiny perturbation of the features?
(issue 15, point 3)

    python bench/id_stability.py --runs runs/beauty runs/beauty/seeds/43 runs/beauty/seeds/44
    python bench/id_stability.py --perturb runs/demo --noise 1e-6      # retrain the tokenizer on noisy features

Codes are arbitrary labels (code 17 of one run has nothing to do with code 17 of another), so two
id sets are compared as partitions of the catalogue: at each depth l, the items that share their
first l codes form a group, and the adjusted Rand index (scikit-learn) between the two runs'
groupings says how much of that structure survived (1: the same groups; 0: chance). Also the share
of items whose depth-l group is exactly the same set of items in both runs.

`--runs` compares finished tokenizers pairwise (e.g. the seeds of `cemg run --seeds`). `--perturb
RUN` retrains RUN's tokenizer with its own config and seed on its features plus N(0, noise^2)
(scaled by each modality's RMS) and compares the result with RUN's ids: the chaos a rerun on
re-encoded features (float noise in the encoder outputs) meets. Results are merged into
bench/results/id_stability.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from baselines_beauty import machine  # noqa: E402  (bench/ is on sys.path when run as a script)
from cemg.artifacts import atomic_write_text  # noqa: E402
from cemg.tokenizer.semantic_ids import SemanticIds  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "id_stability.json"


def prefix_groups(codes: np.ndarray, depth: int) -> np.ndarray:
    """(n,) group label of each item's first `depth` codes."""
    _, labels = np.unique(codes[:, :depth], axis=0, return_inverse=True)
    return labels.ravel()


def same_group_share(a: np.ndarray, b: np.ndarray) -> float:
    """Share of items whose group holds exactly the same items in both labelings."""
    def members(labels: np.ndarray) -> list[frozenset]:
        order = np.argsort(labels, kind="stable")
        cuts = np.flatnonzero(np.diff(labels[order])) + 1
        groups = np.split(order, cuts)
        out = [frozenset()] * len(labels)
        for g in groups:
            s = frozenset(g.tolist())
            for i in g:
                out[i] = s
        return out
    ma, mb = members(a), members(b)
    return float(np.mean([x == y for x, y in zip(ma, mb)]))


def compare(codes_a: np.ndarray, codes_b: np.ndarray, learned_levels: int) -> list[dict]:
    from sklearn.metrics import adjusted_rand_score

    rows = []
    for depth in range(1, learned_levels + 1):
        ga, gb = prefix_groups(codes_a, depth), prefix_groups(codes_b, depth)
        rows.append({"depth": depth, "groups": [int(ga.max()) + 1, int(gb.max()) + 1],
                     "adjusted_rand": round(float(adjusted_rand_score(ga, gb)), 4),
                     "same_group_share": round(same_group_share(ga, gb), 4)})
    return rows


def learned_levels(tokenizer_dir: Path) -> int:
    report = json.loads((tokenizer_dir / "report.json").read_text())
    return len(report.get("levels", [])) or SemanticIds.load(tokenizer_dir / "semantic_ids").levels


def runs_mode(runs: list[Path]) -> dict:
    out = {}
    for a, b in itertools.combinations(runs, 2):
        ids_a = SemanticIds.load(a / "tokenizer" / "semantic_ids")
        ids_b = SemanticIds.load(b / "tokenizer" / "semantic_ids")
        out[f"{a} vs {b}"] = compare(ids_a.codes, ids_b.codes, learned_levels(a / "tokenizer"))
    return out


def perturb_mode(run: Path, noise: float) -> dict:
    import torch

    from cemg.collab.artifact import CollabEmbeddings
    from cemg.features.artifact import ItemFeatures
    from cemg.run_folder import load_run_config
    from cemg.tokenizer.build import build_tokenizer

    cfg = load_run_config(run)
    features = ItemFeatures.load(run / "features")
    collab = CollabEmbeddings.load(run / "collab") if cfg.tokenizer.use_collab else None
    rng = np.random.default_rng(0)

    def noisy(x, mask):
        if x is None:
            return None
        rms = float(np.sqrt(np.mean(x[mask].astype(np.float64) ** 2))) if mask is not None else 1.0
        return (x + rng.normal(scale=noise * rms, size=x.shape) * (mask[:, None] if mask is not None else 1)).astype(np.float32)

    perturbed = ItemFeatures(features.n_items, noisy(features.text, features.text_mask), features.text_mask,
                             noisy(features.image, features.image_mask), features.image_mask)
    torch.set_num_threads(1)
    start = time.perf_counter()
    artifact = build_tokenizer(perturbed, collab, cfg.tokenizer, cfg.seed, "cpu")
    seconds = time.perf_counter() - start
    original = SemanticIds.load(run / "tokenizer" / "semantic_ids")
    changed = float(np.mean(np.any(original.codes[:, : learned_levels(run / "tokenizer")]
                                   != artifact.semantic_ids.codes[:, : learned_levels(run / "tokenizer")], axis=1)))
    return {"noise": noise, "seed": cfg.seed, "items_with_any_code_changed": round(changed, 4),
            "levels": compare(original.codes, artifact.semantic_ids.codes, learned_levels(run / "tokenizer")),
            "tokenizer_seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", type=Path, help="run (or per-seed) folders with a tokenizer")
    parser.add_argument("--perturb", type=Path, help="a run folder whose tokenizer is retrained on noisy features")
    parser.add_argument("--noise", type=float, default=1e-6)
    args = parser.parse_args()
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    command = "python bench/id_stability.py " + " ".join(sys.argv[1:])
    if args.runs:
        entry = {"command": command, "machine": machine(), "pairs": runs_mode(args.runs)}
        results[f"runs: {' '.join(map(str, args.runs))}"] = entry
        print(json.dumps(entry["pairs"], indent=1))
    if args.perturb:
        entry = {"command": command, "machine": machine(), **perturb_mode(args.perturb, args.noise)}
        results[f"perturb: {args.perturb} {args.noise:g}"] = entry
        print(json.dumps(entry, indent=1))
    atomic_write_text(RESULTS, json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
