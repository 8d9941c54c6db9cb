"""Choose generator.content_prior.weight on validation (every validation user, every seed of a run).

    python bench/content_prior.py runs/beauty --seeds 42,43,44 --weights 0,1,2,3,5,8
    python bench/content_prior.py runs/toys --weights 5,8,12 --image-weight 0.5   # image block scaled
    python bench/content_prior.py runs/beauty --weights 2,3 --adjustments 0,0.1,0.25   # popularity adjustment
    python bench/content_prior.py runs/toys --weights 4,6,8 --cold-weights 0,2,4,8     # cold weight
    python bench/content_prior.py runs/beauty --weights 0,2 --mixtures 0.1,0.2 --mixture-sharpness 10,20

For each seed of a finished causal semantic run, the trained generator (not retrained) ranks the
validation users' next items with the content prior at each weight (cemg.generator.content_prior);
weight 0 is the re-ranked beam alone. Test is not read. Writes
bench/results/content_prior_<run name>.json (--name sets the name; content_prior_<name>-image<a>.json with
--image-weight a, generator.content_prior.image_weight; -pop<tau> for each tau of --adjustments but 0,
generator.content_prior.popularity_adjustment; -cold<c> for each c of --cold-weights but 0,
generator.content_prior.cold_weight; -mix<lambda>-s<beta> for each lambda of --mixtures but 0 and beta of
--mixture-sharpness, generator.content_prior.mixture and mixture_sharpness): per seed and weight the validation metrics
(all users and cold-start targets), the mean over seeds, and the weight with the best mean NDCG@10. Seeds
already in that file from an invocation with the same grid are kept, so seeds can be measured by
separate processes (each command is listed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from baselines_beauty import machine  # noqa: E402  (bench/ is on sys.path when run as a script)
from cemg.artifacts import atomic_write_text  # noqa: E402


def merge(earlier: dict, now: dict) -> dict:
    """`now` plus the seeds of `earlier` it did not measure, when both used the same grid."""
    grid = ("weights", "candidates", "image_weight", "popularity_adjustment", "cold_weight", "mixture",
            "mixture_sharpness")
    # files written before a key existed
    defaults = {"image_weight": 1.0, "popularity_adjustment": 0.0, "cold_weight": 0.0, "mixture": 0.0,
                "mixture_sharpness": 10.0}
    if [earlier.get(key, defaults.get(key)) for key in grid] != [now[key] for key in grid]:
        return now
    per_seed = {**earlier["per_seed"], **now["per_seed"]}
    commands = [*earlier.get("commands", [earlier["command"]]), now["command"]]
    return {**now, "commands": commands, "per_seed": dict(sorted(per_seed.items()))}


def summarise(result: dict) -> None:
    """The mean over seeds per weight, and the weight with the best mean validation NDCG@10."""
    seeds, weights = list(result["per_seed"]), result["weights"]
    result["mean"] = {str(w): {part: {m: float(np.mean([result["per_seed"][s]["weights"][str(w)][part][m]
                                                        for s in seeds]))
                                      for m in result["per_seed"][seeds[0]]["weights"][str(w)][part]}
                               for part in ("valid", "valid_cold")} for w in weights}
    result["seeds"] = [int(s) for s in seeds]
    result["chosen_weight"] = max(weights, key=lambda w: result["mean"][str(w)]["valid"]["NDCG@10"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--seeds", default="42")
    parser.add_argument("--weights", default="0,1,2,3,5,8")
    parser.add_argument("--candidates", type=int, default=50)
    parser.add_argument("--image-weight", type=float, default=1.0,
                        help="generator.content_prior.image_weight: the image block's scale in the content vector")
    parser.add_argument("--adjustments", default="0",
                        help="generator.content_prior.popularity_adjustment values (one output file each)")
    parser.add_argument("--cold-weights", default="0",
                        help="generator.content_prior.cold_weight values (one output file each)")
    parser.add_argument("--mixtures", default="0",
                        help="generator.content_prior.mixture values (one output file each, with each sharpness)")
    parser.add_argument("--mixture-sharpness", default="10",
                        help="generator.content_prior.mixture_sharpness values (with each mixture but 0)")
    parser.add_argument("--name", default=None, help="the run's name in the output files (default: the folder's)")
    parser.add_argument("--out", type=Path, default=None,
                        help="the output file (one --adjustments and one --cold-weights value only)")
    args = parser.parse_args()
    from cemg.api import load_generator
    from cemg.data.dataset import InteractionDataset
    from cemg.data.split import leave_one_out
    from cemg.evaluation.metrics import summarize, target_ranks
    from cemg.evaluation.protocol import prior_items
    from cemg.features.artifact import ItemFeatures
    from cemg.generator.content_prior import (ContentPriorRecommender, content_column_scale, content_weights,
                                              popularity_penalty, rank_candidates)
    from cemg.run_folder import RunFolder, load_run_config

    cfg = load_run_config(args.run)
    seeds = [int(s) for s in args.seeds.split(",")]
    weights = [float(w) for w in args.weights.split(",")]
    adjustments = [float(a) for a in args.adjustments.split(",")]
    colds = [float(c) for c in args.cold_weights.split(",")]
    mixtures = [(float(m), float(b)) for m in args.mixtures.split(",")
                for b in (args.mixture_sharpness.split(",") if float(m) else ["10"])]
    grids = [(tau, cold, mix) for tau in adjustments for cold in colds for mix in mixtures]  # one output file each
    if args.out is not None and len(grids) > 1:
        parser.error("--out names one file: give one --adjustments, --cold-weights and --mixtures value with it")
    ks = list(cfg.evaluation.ks)
    results = {(tau, cold, mix): {"command": "python " + " ".join(["bench/content_prior.py", *sys.argv[1:]]),
                                  "machine": machine(), "run": str(args.run), "candidates": args.candidates,
                                  "image_weight": args.image_weight, "popularity_adjustment": tau, "cold_weight": cold,
                                  "mixture": mix[0], "mixture_sharpness": mix[1], "weights": weights, "per_seed": {}}
               for tau, cold, mix in grids}
    plain = cfg.model_copy(update={"generator": cfg.generator.model_copy(
        update={"content_prior": cfg.generator.content_prior.model_copy(
            update={"weight": 0.0, "mixture": 0.0, "new_item_share": 0.0})})})  # the generator alone
    for seed in seeds:
        start = time.perf_counter()
        folder = RunFolder.open(args.run, seed)
        split = leave_one_out(InteractionDataset.load(folder.stage("data")), cfg.data.max_history)
        features = ItemFeatures.load(folder.stage("features"))
        modalities = cfg.tokenizer.content_modalities
        scale = content_column_scale(features, modalities, args.image_weight)
        # The same candidates serve every weight: beam search and exact scoring run once.
        prior = ContentPriorRecommender(load_generator(folder, plain, "cpu"), features.content_matrix(modalities),
                                        0.0, args.candidates, scale)
        valid = split.part("valid")
        exclude = prior_items(split, "valid") if cfg.evaluation.mask_history else None
        counts = split.train_item_counts()
        penalties = {tau: popularity_penalty(counts, tau) if tau else None for tau in adjustments}
        lists: dict[tuple, list[np.ndarray]] = {(*g, w): [] for g in grids for w in weights}
        # the cosine's weight: one number, or one per item with a cold weight (the recommender's own)
        item_weights = {(cold, w): content_weights(counts, w, cold) if cold else w for cold in colds for w in weights}
        batch = prior.config.eval_batch_size
        for lo in range(0, len(valid), batch):
            hi = min(len(valid), lo + batch)
            histories, excl = valid.histories[lo:hi], None if exclude is None else exclude[lo:hi]
            beam, _ = prior.generator.recommend_with_scores(histories, max(max(ks), args.candidates), excl)
            with torch.no_grad():
                pool, log_p, cosine = prior.candidates_of(histories, beam, excl)
            for tau, cold, mix in grids:
                for w in weights:
                    lists[(tau, cold, mix, w)].append(rank_candidates(
                        pool, log_p, cosine, item_weights[(cold, w)], max(ks), penalties[tau], *mix)[0])
        is_cold = counts[valid.targets] <= cfg.evaluation.cold_start_max_train
        for tau, cold, mix in grids:
            rows = {}
            for w in weights:
                ranks = target_ranks(np.concatenate(lists[(tau, cold, mix, w)]), valid.targets)
                rows[str(w)] = {"valid": summarize(ranks, ks), "valid_cold": summarize(ranks[is_cold], ks),
                                "users": len(valid), "cold_users": int(is_cold.sum())}
                print(f"seed {seed} weight {w:g} adjustment {tau:g} cold weight {cold:g} mixture {mix[0]:g}/"
                      f"{mix[1]:g}: valid NDCG@10 "
                      f"{rows[str(w)]['valid']['NDCG@10']:.4f} HR@10 {rows[str(w)]['valid']['HR@10']:.4f} "
                      f"cold HR@10 {rows[str(w)]['valid_cold']['HR@10']:.4f}", flush=True)
            results[(tau, cold, mix)]["per_seed"][str(seed)] = {"weights": rows,
                                                           "seconds": round(time.perf_counter() - start, 1)}
    for (tau, cold, mix), result in results.items():
        suffix = (("" if args.image_weight == 1.0 else f"-image{args.image_weight:g}") + (f"-pop{tau:g}" if tau else "")
                  + (f"-cold{cold:g}" if cold else "") + (f"-mix{mix[0]:g}-s{mix[1]:g}" if mix[0] else ""))
        out = args.out or ROOT / "bench" / "results" / f"content_prior_{args.name or args.run.name}{suffix}.json"
        if out.is_file():  # seeds measured by an earlier invocation with the same grid stay
            result = merge(json.loads(out.read_text(encoding="utf-8")), result)
        summarise(result)
        atomic_write_text(out, json.dumps(result, indent=2))
        print(f"adjustment {tau:g}, cold weight {cold:g}, mixture {mix[0]:g}/{mix[1]:g}: chosen weight {result['chosen_weight']:g} (best mean valid NDCG@10); wrote {out}")


if __name__ == "__main__":
    main()
