"""A probe, not a model option: would the semantic generator gain from a content prior?

    python bench/content_prior_probe.py RUN_DIR --new-items runs/new-items-beauty   # after bench/new_items.py

The content-only reference of bench/new_items.py (rank items by cosine similarity of their [text;
image] vectors to the user's last item) beats the semantic generator on new items by a wide margin.
This probe re-ranks candidates (the generator's beam-search top 50 and the last item's 50 nearest
content neighbours) by the generator's exact log-probability of each item's code path plus
`weight * cosine(content(item), content(last item))` (what cemg.generator.content_prior now does
as a model option; bench/content_prior.py chooses its weight on every validation user), for a grid of weights, on (a) validation users
of the run (the honest place to choose a weight) and (b) the new-item test users of bench/new_items.py
(only to see what the chosen weight would do there). History items are masked as in evaluation.
Nothing here is trained: the generator is the run's, the content vectors are its features stage's
(and, for added items, the run's encoders and PCA through cemg.added_items.encode_new_items).

Writes bench/results/content_prior_probe_<run name>.json with the command.
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

from cemg.artifacts import atomic_write_text  # noqa: E402
from cemg.evaluation.metrics import summarize  # noqa: E402
from new_items import content_vectors  # noqa: E402  (bench/ is on sys.path when run as a script)

KS = [5, 10]


@torch.no_grad()
def ranks_for(recommender, vectors: torch.Tensor, histories: list[np.ndarray], targets: np.ndarray,
              weights: list[float], candidates: int) -> dict[float, np.ndarray]:
    """0-based rank of each target under log p(item) + weight * cos(item, last item), per weight, among
    the content prior's candidates (cemg.generator.content_prior: the beam's top `candidates` and the
    last item's `candidates` nearest content neighbours); a target outside the top 10 counts as a miss."""
    from cemg.evaluation.metrics import target_ranks
    from cemg.generator.content_prior import ContentPriorRecommender, rank_candidates

    generator = recommender.generator
    if isinstance(generator, ContentPriorRecommender):  # a run with a configured prior: re-weigh its generator
        generator = generator.generator
    prior = ContentPriorRecommender(generator, vectors.numpy(), 0.0, candidates)
    beam, _ = prior.generator.recommend_with_scores(histories, candidates, histories)
    pool = prior.candidates_of(histories, beam, histories)
    return {w: target_ranks(rank_candidates(*pool, w, max(KS))[0], targets) for w in weights}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a run of bench/new_items.py with the new items added")
    parser.add_argument("--new-items", type=Path, required=True, help="the work folder of bench/new_items.py")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--valid-users", type=int, default=3000)
    parser.add_argument("--weights", default="0,2,5,10,20,40")
    parser.add_argument("--candidates", type=int, default=50, help="from the beam and from the content neighbours")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    from cemg.added_items import encode_new_items
    from cemg.api import Recommender
    from cemg.data.dataset import InteractionDataset
    from cemg.data.split import leave_one_out
    from cemg.evaluation.protocol import prior_items
    from cemg.features.artifact import ItemFeatures
    from cemg.run_folder import RunFolder

    torch.manual_seed(0)
    weights = [float(w) for w in args.weights.split(",")]
    recommender = Recommender.load(args.run, device="cpu", seed=args.seed)
    folder = RunFolder.open(args.run, args.seed)
    trained = ItemFeatures.load(folder.stage("features"))
    _, added = encode_new_items(folder, args.new_items / "new_items.jsonl")
    vectors = torch.from_numpy(content_vectors([trained, added]))
    if len(vectors) != recommender.n_items:
        raise SystemExit(f"{len(vectors)} content vectors for {recommender.n_items} items: add the new items first")
    result = {"command": "python " + " ".join(["bench/content_prior_probe.py", *sys.argv[1:]]), "run": str(args.run),
              "weights": weights, "parts": {}}

    n_trained = trained.n_items
    split = leave_one_out(InteractionDataset.load(folder.stage("data")), recommender.config.data.max_history)
    rng = np.random.default_rng(0)
    valid = split.part("valid")
    pick = np.sort(rng.choice(len(valid), size=min(args.valid_users, len(valid)), replace=False))
    priors = prior_items(split, "valid")
    start = time.perf_counter()
    ranks = ranks_for(recommender, vectors, [priors[i][-recommender.config.data.max_history :] for i in pick],
                      valid.targets[pick], weights, args.candidates)
    result["parts"]["valid (sampled users)"] = {"users": len(pick), "seconds": round(time.perf_counter() - start, 1),
                                                **{str(w): summarize(r, KS) for w, r in ranks.items()}}

    users = json.loads((args.new_items / "evaluated_users.json").read_text(encoding="utf-8"))
    index = {k: i for i, k in enumerate(recommender.catalogue.dataset.items.keys)}
    histories = [np.asarray([index[k] for k in u["history"] if k in index], dtype=np.int64) for u in users]
    targets = np.asarray([index[u["target"]] for u in users], dtype=np.int64)
    ranks = ranks_for(recommender, vectors, histories, targets, weights, args.candidates)
    result["parts"]["test, users whose target is a new item"] = {
        "users": len(users), "new_items_from": n_trained, **{str(w): summarize(r, KS) for w, r in ranks.items()}}
    out = args.out or ROOT / "bench" / "results" / f"content_prior_probe_{args.new_items.name}.json"
    atomic_write_text(out, json.dumps(result, indent=2))
    for part, values in result["parts"].items():
        print(part)
        for w in weights:
            print(f"  weight {w:5g}: " + "  ".join(f"{k} {v:.4f}" for k, v in values[str(w)].items()))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
