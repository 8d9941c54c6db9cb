"""How fast the content prior re-ranks, and whether scoring each shared prefix once changes a number.

    python bench/rerank_speed.py runs/toys --users 2048

On a finished run whose config has a content prior, for the first `--users` test users: beam search
once, then the exact log p of every candidate (cemg.generator.content_prior: the beam's top 50 and
the last item's 50 content neighbours) two ways: `CausalSemanticModel.pair_log_probs` (each
(user, code prefix) scored once per level) and the teacher-forced logits along every candidate's own
path (what the model computed for each pair before, and what training computes). Reports the
seconds of each, the largest difference in log p, and whether the final top-10 lists are the same.
Writes bench/results/rerank_speed_<run name>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from baselines_beauty import machine  # noqa: E402  (bench/ is on sys.path when run as a script)
from cemg.artifacts import atomic_write_text  # noqa: E402


def teacher_forced_pair_log_probs(model, hidden: torch.Tensor, items: torch.Tensor, tree) -> torch.Tensor:
    """Every (user, candidate) pair scored along its own path, nothing shared."""
    n, m = items.shape
    flat = items.reshape(-1)
    codes = model.item_tokens[flat] - model.item_tokens.new_tensor(model.offsets)
    logits = model._target_logits(hidden[:, None, :].expand(n, m, -1).reshape(n * m, -1), flat, codes, tree)
    return sum(lg.log_softmax(-1).gather(1, codes[:, level : level + 1]).squeeze(1)
               for level, lg in enumerate(logits)).reshape(n, m)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--users", type=int, default=2048)
    args = parser.parse_args()
    from cemg.api import load_generator
    from cemg.data.dataset import InteractionDataset
    from cemg.data.split import leave_one_out
    from cemg.evaluation.protocol import prior_items
    from cemg.generator.content_prior import rank_candidates
    from cemg.run_folder import RunFolder, load_run_config

    cfg = load_run_config(args.run)
    folder = RunFolder.open(args.run, args.seed)
    split = leave_one_out(InteractionDataset.load(folder.stage("data")), cfg.data.max_history)
    prior = load_generator(folder, cfg, "cpu")  # with the content prior the config asks for
    if not hasattr(prior, "candidates_of"):
        raise SystemExit(f"{args.run}: its config has no content prior (generator.content_prior.weight is 0)")
    test = split.part("test")
    n = min(args.users, len(test))
    exclude = prior_items(split, "test") if cfg.evaluation.mask_history else None
    model, batch = prior.generator.model, prior.config.eval_batch_size
    grouped_seconds = forced_seconds = 0.0
    max_diff, same_lists = 0.0, 0
    original = model.pair_log_probs
    with torch.no_grad():
        for lo in range(0, n, batch):
            hi = min(n, lo + batch)
            histories, excl = test.histories[lo:hi], None if exclude is None else exclude[lo:hi]
            beam, _ = prior.generator.recommend_with_scores(histories, max(10, prior.candidates), excl)
            results = {}
            for name, scorer in (("grouped", original), ("teacher_forced", lambda h, i, t: teacher_forced_pair_log_probs(
                    model, h, i, t))):
                model.pair_log_probs = scorer
                start = time.perf_counter()
                results[name] = prior.candidates_of(histories, beam, excl)
                spent = time.perf_counter() - start
                if name == "grouped":
                    grouped_seconds += spent
                else:
                    forced_seconds += spent
            model.pair_log_probs = original
            (pool, a, cos), (_, b, _) = results["grouped"], results["teacher_forced"]
            live = torch.isfinite(a) & torch.isfinite(b)
            max_diff = max(max_diff, float((a[live] - b[live]).abs().max()) if live.any() else 0.0)
            top_a = rank_candidates(pool, a, cos, prior.weight, 10)[0]
            top_b = rank_candidates(pool, b, cos, prior.weight, 10)[0]
            same_lists += int((top_a == top_b).all(1).sum())
    out = {"command": "python bench/rerank_speed.py " + " ".join(sys.argv[1:]), "machine": machine(),
           "run": str(args.run), "users": n, "candidates_per_user": 2 * prior.candidates,
           "seconds": {"grouped": round(grouped_seconds, 2), "teacher_forced": round(forced_seconds, 2)},
           "speedup": round(forced_seconds / max(grouped_seconds, 1e-9), 2),
           "max_abs_log_p_difference": max_diff, "users_with_identical_top10": same_lists,
           "torch_threads": torch.get_num_threads(), "load_average_1min": round(os.getloadavg()[0], 2)}
    path = ROOT / "bench" / "results" / f"rerank_speed_{args.run.name}.json"
    atomic_write_text(path, json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
