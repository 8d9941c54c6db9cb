"""Choose generator.content_prior.new_item_share, new_item_sharpness, new_item_prefix_levels and
new_item_gate (with its sharpness) on validation users of the new-item protocol (bench/new_items.py), every seed of its semantic run.

    python bench/new_items.py --config configs/beauty.yaml --rows semantic content    # trains, adds the items
    python bench/new_item_share.py --config configs/beauty.yaml --seeds 42,43,44

The settings act on items added after training only (cemg.generator.content_prior, "new-item
mixture"), so they are chosen where added items compete with trained ones as they would after a
real add: the validation users of bench/new_items.py's derived data (valid_users.json: each
user's original second-to-last item after the items before it; about 5% of these targets are new
items, as 5% of the catalogue is). The run with the new items added (run-semantic<tag>-content)
ranks them at every grid point from one set of candidates per user, under --config's other ranking
settings (generator.content_prior), as bench/new_items.py ranks. A share of 0 is the prior
without the mixture (added items ranked like trained ones with 0 interactions).

Chosen (docs/results.md, "New items without retraining", the rule with a bar for added items): the
best mean validation NDCG@10 over all these users and seeds among the settings whose mean
validation HR@10 on the users whose target is new is above the content-only reference's on the
same users (bench/new_items.py's reference: nearest item by [text; image] vectors to the last one);
if none is, the best overall. `--bar every-seed` asks it of every seed, not of the mean (a difference
that holds across seeds, as the claim on test must). `--bar paired` asks, on every seed, that the
one-sided 95% lower bound of the paired difference (each new-target user's HR@10 minus the
reference's on the same user; mean - 1.645 x its standard error over users) be above 0: a difference
that holds across the users too, who are few (about 5% of the validation users). `--no-bar` chooses by
NDCG@10 alone (the first choice). Unless `--valid-only`, the new-item test users of bench/new_items.py (evaluated_users.json)
are scored at every grid point too, only to show what each setting does there; they choose nothing.
Writes bench/results/new_item_share_<dataset>.json.
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
from cemg.config import load_config  # noqa: E402
from cemg.evaluation.metrics import summarize, target_ranks  # noqa: E402
from new_items import content_lists, ranking_settings, scores_of  # noqa: E402

KS = [5, 10]


def indexed(users: list[dict], index: dict[str, int]) -> tuple[list[np.ndarray], np.ndarray]:
    """Histories and targets as catalogue indices; history items outside the catalogue (dropped by
    the derived data's 5-core filter) are left out, and so are users left with no history or whose
    target is outside it (ranked_users)."""
    kept = [u for u, ranked in zip(users, ranked_users(users, index)) if ranked]
    histories = [np.asarray([index[k] for k in u["history"] if k in index], dtype=np.int64) for u in kept]
    return histories, np.asarray([index[u["target"]] for u in kept], dtype=np.int64)


def ranked_users(users: list[dict], index: dict[str, int]) -> np.ndarray:
    """(users,) whether indexed() keeps each user: a history item and the target in the catalogue."""
    return np.asarray([any(k in index for k in u["history"]) and u["target"] in index for u in users], dtype=bool)


def paired_lower_bound(hits: np.ndarray, reference_hits: np.ndarray) -> float:
    """One-sided 95% lower bound of mean(hits - reference_hits) over the same users (normal
    approximation: mean - 1.645 x standard error)."""
    difference = hits.astype(np.float64) - reference_hits.astype(np.float64)
    if len(difference) < 2:
        return float("-inf")
    return float(difference.mean() - 1.645 * difference.std(ddof=1) / np.sqrt(len(difference)))


@torch.no_grad()
def grid_lists(prior, histories: list[np.ndarray], grid: list[tuple], k: int) -> dict:
    """Top-k lists per (share, sharpness, prefix levels[, gate, gate sharpness]), from one set of
    candidates per user (the prior's own)."""
    from cemg.generator.content_prior import gated_shares, prior_scores, rank_with_new_items, top_k

    lists = {g: [] for g in grid}
    batch = prior.config.eval_batch_size
    levels = sorted({g[2] for g in grid if g[0]})
    for lo in range(0, len(histories), batch):
        h = histories[lo : lo + batch]
        beam, _ = prior.generator.recommend_with_scores(h, max(k, prior.candidates), h)
        hidden = prior.generator.last_states(h)
        near = prior.last_item_similarity(h, h)
        pool, log_p, cosine = prior.candidates_of(h, beam, h, hidden, near)
        new_cosine = prior.new_item_cosines(h, h)
        prefix = {level: prior.new_item_prefix_log_probs(hidden, level) for level in levels if level}
        log_ratio = {g[4]: prior.neighbourhood_log_ratio(near, g[4]) for g in grid if len(g) > 3 and g[0] and g[3]}
        scores = prior_scores(pool, log_p, cosine, prior.item_weight, prior.penalty, prior.mixture,
                              prior.mixture_sharpness)
        for point in grid:
            share, sharpness, level, gate, gate_sharpness = (*point, 0.0, 0.0)[:5]
            if share:  # new_item_logits' sum and new_item_shares, from the parts computed once per batch
                logits = sharpness * new_cosine + (prefix[level] if level else 0.0)
                shares = gated_shares(share, gate, log_ratio[gate_sharpness]) if gate else share
                top = rank_with_new_items(pool, scores, k, logits, prior.n_trained, shares)[0]
            else:
                top = top_k(pool, scores, k)[0]
            lists[point].append(top)
    return {g: np.concatenate(parts) for g, parts in lists.items()}


def choose(mean: dict, reference_new_hr: float | None, bar: str = "mean") -> str:
    """The rule (module docstring): the best mean valid NDCG@10 among the settings whose valid HR@10
    on new targets (bar "mean": its mean over seeds; "every-seed": its lowest seed's, "HR@10 lowest
    seed") is above `reference_new_hr`, or (bar "paired") whose lowest seed's paired lower bound
    against the reference ("HR@10 paired lower bound, lowest seed") is above 0; overall when none
    is or no bar is given."""
    if bar == "paired":
        qualified = [key for key, m in mean.items() if reference_new_hr is not None
                     and m["valid_new_targets"]["HR@10 paired lower bound, lowest seed"] > 0]
    else:
        measure = {"mean": "HR@10", "every-seed": "HR@10 lowest seed"}[bar]
        qualified = [key for key, m in mean.items()
                     if reference_new_hr is not None and m["valid_new_targets"][measure] > reference_new_hr]
    return max(qualified or list(mean), key=lambda key: mean[key]["valid"]["NDCG@10"])


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """--config, --seeds, --work, --tag: which run of bench/new_items.py, with the items added, to read."""
    parser.add_argument("--config", type=Path, default=Path("configs/beauty.yaml"))
    parser.add_argument("--seeds", default="42,43,44")
    parser.add_argument("--work", type=Path, default=None, help="bench/new_items.py's folder (default runs/new-items-<dataset>)")
    parser.add_argument("--tag", default="", help="bench/new_items.py's --tag of the semantic run")


def added_run(args: argparse.Namespace) -> tuple[str, Path, Path]:
    """(dataset name, bench/new_items.py's folder, its semantic run with the items added)."""
    name = load_config(args.config).data.name
    work = args.work or ROOT / "runs" / f"new-items-{name}"
    return name, work, work / f"run-semantic{'-' + args.tag if args.tag else ''}-content"


def metrics(ranks: np.ndarray) -> dict:
    return {**summarize(ranks, KS), "users": int(len(ranks))} if len(ranks) else {"users": 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(parser)
    parser.add_argument("--shares", default="0,0.02,0.05,0.1")
    parser.add_argument("--sharpness", default="10,20,40,80")
    parser.add_argument("--prefix-levels", default="0,1", help="new_item_prefix_levels values")
    parser.add_argument("--gates", default="0", help="new_item_gate values (0: one share for every user)")
    parser.add_argument("--gate-sharpness", default="20", help="new_item_gate_sharpness values (with a gate)")
    parser.add_argument("--bar", choices=["mean", "every-seed", "paired"], default="mean",
                        help="above the reference on the mean over seeds, on every seed, or with a paired "
                             "95%% lower bound above 0 on every seed")
    parser.add_argument("--no-bar", action="store_true", help="choose by validation NDCG@10 alone")
    parser.add_argument("--valid-only", action="store_true", help="do not score the new-item test users")
    parser.add_argument("--valid-users", type=int, default=10000,
                        help="validation users sampled (seeded, the same for every seed); 0: all")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    from cemg.api import Recommender
    from cemg.generator.content_prior import ContentPriorRecommender

    if args.no_bar and args.bar != "mean":
        parser.error(f"--bar {args.bar} and --no-bar: choose one")
    name, work, run = added_run(args)
    seeds = [int(s) for s in args.seeds.split(",")]
    shares = [float(x) for x in args.shares.split(",")]
    sharpness = [float(x) for x in args.sharpness.split(",")]
    prefix_levels = [int(x) for x in args.prefix_levels.split(",")]
    gates = [(float(a), float(g)) for a in args.gates.split(",")
             for g in (args.gate_sharpness.split(",") if float(a) else [0])]
    grid = [(s, b, p) + ((a, g) if a else ()) for s in shares for b in (sharpness if s else sharpness[:1])
            for p in (prefix_levels if s else [0]) for a, g in (gates if s else [(0.0, 0.0)])]
    ranking, _ = ranking_settings(args.config)
    valid_users = json.loads((work / "valid_users.json").read_text(encoding="utf-8"))
    if args.valid_users and args.valid_users < len(valid_users):
        pick = np.sort(np.random.default_rng(0).choice(len(valid_users), args.valid_users, replace=False))
        valid_users = [valid_users[i] for i in pick]
    test_users = json.loads((work / "evaluated_users.json").read_text(encoding="utf-8"))
    result = {"command": "python " + " ".join(["bench/new_item_share.py", *sys.argv[1:]]), "machine": machine(),
              "run": str(run.relative_to(ROOT) if run.is_relative_to(ROOT) else run), "grid": grid, "per_seed": {}}
    # The bar: the content-only reference on the validation users whose target is new (its vectors
    # are the same for every seed, as in bench/new_items.py).
    reference = None
    if not args.no_bar:
        new_keys = {json.loads(line)["item_id"] for line in (work / "new_items.jsonl").read_text(encoding="utf-8").splitlines()}
        new_target_users = [u for u in valid_users if u["target"] in new_keys]
        lists, n_items = content_lists(run, seeds[0], new_target_users, work / "new_items.jsonl")
        reference = {"metrics": scores_of(lists, [u["target"] for u in new_target_users]),
                     "catalogue_items": n_items, "users": len(new_target_users)}
        # each new-target user's reference hit at 10, for the users the grid ranks (indexed)
        reference_hits = np.asarray([u["target"] in top for u, top in zip(new_target_users, lists)], dtype=bool)
        result["reference_valid_new_targets"] = reference
        print(f"content-only reference, valid users with a new target ({len(new_target_users)}): HR@10 "
              f"{reference['metrics']['HR@10']:.4f}", flush=True)
    for seed in seeds:
        start = time.perf_counter()
        recommender = Recommender.load(run, device="cpu", seed=seed)
        prior = recommender.generator
        if not isinstance(prior, ContentPriorRecommender) or prior.n_trained == prior.n_items or ranking is None:
            raise SystemExit(f"{run} seed {seed}: needs the content prior and added items (bench/new_items.py adds them)")
        prior = prior.replace(**ranking)  # --config's ranking settings, as bench/new_items.py ranks
        index = {key: i for i, key in enumerate(recommender.catalogue.dataset.items.keys)}
        rows = {}
        parts = (("valid", valid_users),) + ((("test_new_targets", test_users),) if not args.valid_only else ())
        for part, users in parts:
            histories, targets = indexed(users, index)
            is_new = targets >= prior.n_trained
            if part == "valid" and args.bar == "paired":  # the reference's hits on the same users, in order
                kept_new = ranked_users(new_target_users, index)
                if kept_new.sum() != is_new.sum():
                    raise SystemExit(f"{run} seed {seed}: {is_new.sum()} ranked users with a new target, "
                                     f"{kept_new.sum()} for the reference")
                paired_reference = reference_hits[kept_new]
            for point, top in grid_lists(prior, histories, grid, max(KS)).items():
                share, sharp, level, gate, gate_sharp = (*point, 0.0, 0.0)[:5]
                ranks = target_ranks(top, targets)
                row = rows.setdefault(f"{share:g}/{sharp:g}" + (f"/prefix {level}" if level else "")
                                      + (f"/gate {gate:g}/{gate_sharp:g}" if gate else ""),
                                      {"share": share, "sharpness": sharp, "prefix_levels": level,
                                       **({"gate": gate, "gate_sharpness": gate_sharp} if gate else {})})
                if part == "valid":
                    row.update(valid=metrics(ranks), valid_new_targets=metrics(ranks[is_new]),
                               valid_old_targets=metrics(ranks[~is_new]))
                    if args.bar == "paired":
                        row["valid_new_targets"]["HR@10 paired lower bound"] = paired_lower_bound(
                            ranks[is_new] < 10, paired_reference)
                else:
                    row["test_new_targets"] = metrics(ranks)
        for key, row in rows.items():
            print(f"seed {seed} share/sharpness {key}: valid NDCG@10 {row['valid']['NDCG@10']:.4f} "
                  f"(new targets HR@10 {row['valid_new_targets'].get('HR@10', float('nan')):.4f}, old NDCG@10 "
                  f"{row['valid_old_targets']['NDCG@10']:.4f})"
                  + ("" if args.valid_only else f"; test new targets HR@10 {row['test_new_targets']['HR@10']:.4f}"),
                  flush=True)
        result["per_seed"][str(seed)] = {"rows": rows, "seconds": round(time.perf_counter() - start, 1)}
    keys = list(result["per_seed"][str(seeds[0])]["rows"])
    parts = ("valid", "valid_new_targets", "valid_old_targets") + (() if args.valid_only else ("test_new_targets",))
    mean = {key: {part: {m: float(np.mean([result["per_seed"][str(s)]["rows"][key][part][m] for s in seeds]))
                         for m in ("HR@10", "NDCG@10")}
                  for part in parts}
            for key in keys}
    lowest = {"every-seed": ("HR@10", "HR@10 lowest seed"),
              "paired": ("HR@10 paired lower bound", "HR@10 paired lower bound, lowest seed")}.get(args.bar)
    for key in keys if lowest else []:
        mean[key]["valid_new_targets"][lowest[1]] = float(min(
            result["per_seed"][str(s)]["rows"][key]["valid_new_targets"][lowest[0]] for s in seeds))
    result["mean"] = mean
    result["chosen"] = choose(mean, None if reference is None else reference["metrics"]["HR@10"], args.bar)
    result["rule"] = ("best mean valid NDCG@10" + ("" if reference is None else
                      f" among settings whose {'mean ' if args.bar == 'mean' else ''}valid HR@10 on new targets"
                      + {"mean": "", "every-seed": " on every seed",
                         "paired": " on every seed, by a paired one-sided 95% lower bound above 0,"}[args.bar]
                      + " is above the content-only reference's"))
    out = args.out or ROOT / "bench" / "results" / f"new_item_share_{name}.json"
    atomic_write_text(out, json.dumps(result, indent=2))
    print(f"chosen share/sharpness {result['chosen']} ({result['rule']}, seeds {seeds}); wrote {out}")


if __name__ == "__main__":
    main()
