"""The causal generative recommender (src/cemg/generator/causal.py) on Amazon Beauty.

Run from the repository root (configs/beauty.yaml reads ../shared/data):

    python bench/causal_beauty.py --ids kmeans --threads 2               # quick: residual k-means ids
    python bench/causal_beauty.py --ids rqvae --threads 2                # the tokenizer's RQ-VAE ids (text)
    python bench/causal_beauty.py --ids rqvae-collab --threads 2         # ... text + LightGCN
    python bench/causal_beauty.py --ids kmeans --name no-item-id generator.mode=semantic
    python bench/causal_beauty.py --name sweep --beam-sweep runs/beauty-causal/model-final --beams 10 20 50

Semantic ids come from the Beauty text features (`cemg encode --config configs/beauty.yaml
--skip-image --skip-collab`, looked for in --features): "kmeans" clusters the residuals level by
level (sklearn, a fast stand-in for the RQ-VAE); "rqvae" and "rqvae-collab" call
cemg.tokenizer.build.build_tokenizer (the second after cemg.collab.lightgcn.train_lightgcn). Ids
are cached under --work. The generator trains on the training sequences, is selected by validation
NDCG@10 and scored on the test targets over the full catalogue with history items excluded.
Results are merged, under --name, into bench/results/causal_beauty.json.
"""

from __future__ import annotations

import os

# Spinning OpenMP threads waste their slices on a shared, oversubscribed CPU (see
# bench/baselines_beauty.py); must be set before torch loads the runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from baselines_beauty import machine  # noqa: E402  (bench/ is on sys.path when run as a script)
from cemg.artifacts import atomic_dir, atomic_write_text  # noqa: E402
from cemg.config import CEMGConfig, load_config, resolve_device  # noqa: E402
from cemg.data.load import load_dataset  # noqa: E402
from cemg.data.split import SplitDataset, leave_one_out  # noqa: E402
from cemg.evaluation.protocol import evaluate  # noqa: E402
from cemg.features.artifact import ItemFeatures  # noqa: E402
from cemg.generator.causal import CausalGenerativeRecommender, train_causal_generator  # noqa: E402
from cemg.tokenizer.build import level_stats, make_unique  # noqa: E402
from cemg.tokenizer.semantic_ids import SemanticIds  # noqa: E402

log = logging.getLogger("bench.causal_beauty")
RESULTS = Path("bench/results/causal_beauty.json")
# An epoch is ~90 steps, so validation (beam search over 5000 users, more than the T5 path's 2000
# to stop on a steadier signal) every second epoch, and a warmup of ~2 epochs rather than 5% of all.
BENCH_DEFAULTS = ["generator.valid_users=5000", "generator.eval_every=2", "generator.warmup_ratio=0.01"]


def residual_kmeans_ids(vectors: np.ndarray, levels: int, k: int, seed: int) -> tuple[SemanticIds, dict]:
    """Residual k-means (RQ-KMeans): level l clusters what levels < l left unexplained. A quick,
    training-free stand-in for the RQ-VAE; collisions get TIGER's extra level (make_unique)."""
    from sklearn.cluster import KMeans

    residual = vectors.astype(np.float64)
    codes = []
    for level in range(levels):
        km = KMeans(n_clusters=k, n_init=1, random_state=seed + level).fit(residual)
        codes.append(km.labels_)
        residual = residual - km.cluster_centers_[km.labels_]
        log.info("k-means level %d: residual norm %.4f", level, float(np.linalg.norm(residual, axis=1).mean()))
    raw = np.stack(codes, axis=1).astype(np.int64)
    ids, collisions = make_unique(raw, k)
    return ids, {"method": "residual-kmeans", "levels": level_stats(raw, k), "collisions": collisions}


def semantic_ids(kind: str, cfg: CEMGConfig, split: SplitDataset, features_dir: Path, work: Path,
                 device: str) -> tuple[SemanticIds, dict]:
    folder = work / f"ids-{kind}"
    if (folder / "semantic_ids.json").is_file():
        report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
        log.info("semantic ids %s: reused %s", kind, folder)
        return SemanticIds.load(folder), report
    if not (features_dir / "features.json").is_file():
        sys.exit(f"{features_dir}: no item features; run `cemg encode --config configs/beauty.yaml --skip-image "
                 f"--skip-collab --set run_dir=...` and pass --features")
    features = ItemFeatures.load(features_dir)
    if features.n_items != split.n_items:
        sys.exit(f"{features_dir}: features cover {features.n_items} items, the dataset {split.n_items}")
    start = time.perf_counter()
    if kind == "kmeans":
        ids, report = residual_kmeans_ids(features.text, 3, cfg.tokenizer.codebook_size, cfg.seed)
    else:
        from cemg.tokenizer.build import build_tokenizer

        collab = None
        if kind == "rqvae-collab":
            from cemg.collab.lightgcn import train_lightgcn

            collab = train_lightgcn(split, cfg.collab, cfg.seed, device)
            collab.save(work / "collab")
        tok_cfg = cfg.tokenizer.model_copy(update={"use_collab": collab is not None, "use_image": False})
        artifact = build_tokenizer(features, collab, tok_cfg, cfg.seed, device)
        ids, report = artifact.semantic_ids, {"method": kind, **artifact.report}
    report["seconds"] = time.perf_counter() - start
    # One folder written atomically: the reuse check above trusts semantic_ids.json and then reads
    # report.json, which a kill between two separate writes would leave missing.
    with atomic_dir(folder) as tmp:
        ids.save(tmp)
        atomic_write_text(tmp / "report.json", json.dumps(report, indent=2, default=str))
    log.info("semantic ids %s: %d items, codebooks %s, built in %.0fs, saved to %s", kind, ids.n_items,
             ids.codebook_sizes, report["seconds"], folder)
    return ids, report


def beam_sweep(folder: Path, split: SplitDataset, cfg: CEMGConfig, beams: list[int], device: str, name: str) -> None:
    """Test metrics and users/s of one saved model at several beam widths (k = 10 needs >= 10)."""
    rec = CausalGenerativeRecommender.load(folder, device)
    sweep = {}
    for width in beams:
        rec.config = rec.config.model_copy(update={"beams": width})
        test = evaluate(rec, split, "test", cfg.evaluation, batch_size=4096)
        sweep[str(width)] = {"test": test.metrics, "users_per_s": test.n_users / test.seconds}
        log.info("beam %d: test %s, %.0f users/s", width, {k: round(v, 4) for k, v in test.metrics.items()},
                 test.n_users / test.seconds)
    results = json.loads(RESULTS.read_text(encoding="utf-8")) if RESULTS.is_file() else {"runs": {}}
    results.setdefault("beam_sweeps", {})[name] = {"model": str(folder), "command": "python " + " ".join(sys.argv),
                                                   "machine": machine(), "beams": sweep}
    atomic_write_text(RESULTS, json.dumps(results, indent=2, default=str))
    log.info("wrote %s (beam sweep %r)", RESULTS, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. generator.causal.hidden=128")
    parser.add_argument("--config", default="configs/beauty.yaml")
    parser.add_argument("--ids", choices=["kmeans", "rqvae", "rqvae-collab"], default="kmeans")
    parser.add_argument("--features", type=Path, default=Path("runs/beauty-features/features"))
    parser.add_argument("--work", type=Path, default=Path("runs/beauty-causal"))
    parser.add_argument("--name", default=None, help="result key (default: the ids kind)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--save-model", action="store_true", help="save the model under --work/model-NAME")
    parser.add_argument("--ids-only", action="store_true", help="build (or reuse) the semantic ids and stop")
    parser.add_argument("--beam-sweep", type=Path, default=None, metavar="MODEL",
                        help="no training: score a saved model on the test users at each of --beams")
    parser.add_argument("--beams", type=int, nargs="+", default=[10, 20, 50])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    name = args.name or args.ids
    cfg = load_config(args.config, [*BENCH_DEFAULTS, *args.overrides])
    device = resolve_device(args.device)

    dataset = load_dataset(cfg.data, seed=cfg.seed, cache_dir=cfg.cache_dir)
    split = leave_one_out(dataset, cfg.data.max_history)
    if args.beam_sweep is not None:
        beam_sweep(args.beam_sweep, split, cfg, args.beams, device, name)
        return
    ids, ids_report = semantic_ids(args.ids, cfg, split, args.features, args.work, device)
    if args.ids_only:
        return

    rec = train_causal_generator(split, ids, cfg.generator, cfg.seed, device, cfg.evaluation,
                                 args.work / f"model-{name}" if args.save_model else None)
    valid = evaluate(rec, split, "valid", cfg.evaluation, batch_size=4096)
    test = evaluate(rec, split, "test", cfg.evaluation, batch_size=4096)
    log.info("%s: test %s, %.0f users/s", name, {k: round(v, 4) for k, v in test.metrics.items()},
             test.n_users / test.seconds)
    info = {k: v for k, v in rec.info.items() if k != "history"}
    entry = {
        "command": "python " + " ".join(sys.argv),
        "machine": machine(),
        "ids": {"kind": args.ids, "codebook_sizes": ids.codebook_sizes,
                "collisions": ids_report.get("collisions"), "seconds": ids_report.get("seconds")},
        "generator": {k: v for k, v in cfg.generator.model_dump().items()},
        "test": test.metrics,
        "test_cold_start": test.cold_start,
        "valid": valid.metrics,
        "n_test_users": test.n_users,
        "train": info,
        "inference_users_per_s": test.n_users / test.seconds,
        "inference_beams": cfg.generator.beams,
        "curve": [{"epoch": r["epoch"], "loss": round(r["loss"], 4),
                   "valid_ndcg10": round(r["valid"]["NDCG@10"], 4) if "valid" in r else None}
                  for r in rec.info["history"]],
    }
    results = json.loads(RESULTS.read_text(encoding="utf-8")) if RESULTS.is_file() else {"runs": {}}
    results["runs"][name] = entry
    atomic_write_text(RESULTS, json.dumps(results, indent=2, default=str))
    log.info("wrote %s (run %r)", RESULTS, name)


if __name__ == "__main__":
    main()
