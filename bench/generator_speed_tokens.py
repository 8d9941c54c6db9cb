"""Training speed of the sliding-window T5 against the token-level T5 decoder on the same ids (issue 14).

Run from the repository root:

    python bench/generator_speed_tokens.py --config configs/beauty.yaml \
        --ids runs/beauty/tokenizer/semantic_ids --threads 1 --max-seconds 900
    python bench/generator_speed_tokens.py --config src/cemg/configs/demo.yaml --max-seconds 20 \
        --out /tmp/speed_tokens.json                                   # a smoke run on the demo data

Each variant (default: t5-tiny against t5-decoder-tiny, the same layer sizes) trains from scratch
through the objects `cemg run` trains with (cemg.generator.train.make_family: the family's batches,
inputs and loss; AdamW at its learning rate, clipping as configured, a constant learning rate since
a partial run has no schedule to follow) for one epoch, or until --max-seconds of training, after
one untimed step on the epoch's first batch that pays first-call allocations (that batch is then
trained on again, timed, with the rest). Validation is not run: this measures training.

Per variant it records the wall and process-CPU seconds of the steps it timed and, from them, the
seconds an epoch takes (measured, or extrapolated from the share of the epoch's steps done: batches
come in random order) and next-item predictions per second. A prediction is one (history, next
item) pair trained on: one sliding-window example for the T5, one target item of a user's window
for the decoder. The decoder's epoch holds fewer of them where users have more than
max_history + 1 training items (only each user's last window is trained on, as for the causal
generator): both counts are in the output. Both variants read the very same SemanticIds: --ids (a
saved `semantic_ids` folder, e.g. a run's tokenizer stage) or, without it, random codes with the
config's tokenizer.levels x tokenizer.codebook_size and the tokenizer's disambiguation level.
"""

from __future__ import annotations

import os

# Spinning OpenMP threads waste their slices on a shared CPU (bench/baselines_beauty.py); must be
# set before torch loads the runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from baselines_beauty import machine  # noqa: E402  (bench/ is on sys.path when run as a script)
from cemg.artifacts import atomic_write_text  # noqa: E402
from cemg.config import load_config  # noqa: E402
from cemg.data.load import load_dataset  # noqa: E402
from cemg.data.split import leave_one_out  # noqa: E402
from cemg.generator.train import make_family  # noqa: E402
from cemg.tokenizer.build import make_unique  # noqa: E402
from cemg.tokenizer.semantic_ids import SemanticIds  # noqa: E402

log = logging.getLogger("bench.generator_speed_tokens")


def predictions_per_row(family) -> np.ndarray:
    """(rows,) the (history, next item) pairs each of a family's batch rows trains on."""
    if hasattr(family, "examples"):  # the T5: a row is one sliding-window example
        return np.ones(family.n_examples, dtype=np.int64)
    return family.lengths - 1  # the decoder: every item of a user's window after the first


def time_variant(backbone: str, split, ids: SemanticIds, cfg, seed: int, max_seconds: float) -> dict:
    gen_cfg = cfg.generator.model_copy(update={"backbone": backbone})
    torch.manual_seed(seed)
    family = make_family(split, ids, gen_cfg, seed, "cpu")
    model = family.recommender.model
    step_loss = family.loss_module()
    optimizer = torch.optim.AdamW(model.parameters(), lr=family.lr, weight_decay=gen_cfg.weight_decay)
    batches = family.batches(gen_cfg.batch_size, np.random.default_rng(seed))
    model.train()

    per_row = predictions_per_row(family)

    def step(rows: np.ndarray) -> tuple[float, int]:
        weighted, loss, _ = step_loss(*family.inputs(rows, len(rows), "cpu"))
        optimizer.zero_grad(set_to_none=True)
        weighted.backward()
        if gen_cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), gen_cfg.grad_clip)
        optimizer.step()
        return float(loss), int(per_row[rows].sum())

    step(batches[0])  # untimed: first-call allocations; the timed epoch below starts from this batch again
    wall = cpu = 0.0
    done, predictions, losses = 0, 0, []
    for rows in batches:
        tic, cpu_tic = time.perf_counter(), time.process_time()
        loss, n = step(rows)
        wall, cpu = wall + time.perf_counter() - tic, cpu + time.process_time() - cpu_tic
        done, predictions = done + 1, predictions + n
        losses.append(loss)
        if wall >= max_seconds:
            break
    timed_share = done / len(batches)
    result = {
        "backbone": backbone,
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "batch_size": gen_cfg.batch_size,
        "steps_per_epoch": len(batches),
        "steps_timed": done,
        "epoch_share_timed": timed_share,
        "rows_per_epoch": family.n_examples,
        "predictions_per_epoch": int(per_row.sum()),
        "predictions_timed": predictions,
        "train_wall_s": wall,
        "train_cpu_s": cpu,
        "epoch_wall_s": wall / timed_share if timed_share else None,
        "epoch_cpu_s": cpu / timed_share if timed_share else None,
        "predictions_per_s": predictions / wall if wall else None,
        "predictions_per_cpu_s": predictions / cpu if cpu else None,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
    }
    log.info("%s: %d parameters, %d of %d steps timed (%.0f%% of an epoch) in %.1f s wall / %.1f s CPU: "
             "epoch %.1f s wall, %.0f predictions/s", backbone, result["n_parameters"], done, len(batches),
             100 * timed_share, wall, cpu, result["epoch_wall_s"] or float("nan"), result["predictions_per_s"] or 0)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/beauty.yaml")
    parser.add_argument("--ids", type=Path, help="a saved semantic_ids folder; default: random ids of the "
                                                 "config's tokenizer shape")
    parser.add_argument("--variants", nargs="+", default=["t5-tiny", "t5-decoder-tiny"],
                        help="generator.backbone values; the first is the reference the ratios divide by")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="training seconds per variant at most")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override a.b=c")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "generator_speed_tokens.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)

    cfg = load_config(args.config, args.overrides)
    split = leave_one_out(load_dataset(cfg.data, seed=cfg.seed, cache_dir=cfg.cache_dir), cfg.data.max_history)
    if args.ids is not None:
        ids = SemanticIds.load(args.ids)
        if ids.n_items != split.n_items:
            raise SystemExit(f"{args.ids}: semantic ids cover {ids.n_items} items, the dataset {split.n_items}")
    else:
        raw = np.random.default_rng(cfg.seed).integers(
            0, cfg.tokenizer.codebook_size, size=(split.n_items, cfg.tokenizer.levels))
        ids = make_unique(raw, cfg.tokenizer.codebook_size)[0]
    log.info("%d items, ids of %d levels %s, %d training sequences", ids.n_items, len(ids.codebook_sizes),
             list(ids.codebook_sizes), len(split.train))

    results = {}
    for backbone in args.variants:
        results[backbone] = time_variant(backbone, split, ids, cfg, cfg.seed, args.max_seconds)
    reference = results[args.variants[0]]
    ratios = {name: {
        "epoch_wall_speedup": reference["epoch_wall_s"] / res["epoch_wall_s"],
        "epoch_cpu_speedup": reference["epoch_cpu_s"] / res["epoch_cpu_s"],
        "predictions_per_s_ratio": res["predictions_per_s"] / reference["predictions_per_s"],
        "predictions_per_cpu_s_ratio": res["predictions_per_cpu_s"] / reference["predictions_per_cpu_s"],
    } for name, res in results.items() if res["epoch_wall_s"] and reference["epoch_wall_s"]}
    payload = {
        "command": "python " + " ".join(sys.argv),
        "config": str(args.config),
        "ids": str(args.ids) if args.ids else "random (config's tokenizer shape, make_unique)",
        "codebook_sizes": list(ids.codebook_sizes),
        "n_items": ids.n_items,
        "max_history": cfg.data.max_history,
        "threads": args.threads,
        "max_seconds": args.max_seconds,
        "load_average": os.getloadavg(),
        "machine": machine(),
        "variants": results,
        "vs_reference": {"reference": args.variants[0], **ratios},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(payload, indent=2, default=str))
    for name, row in ratios.items():
        log.info("%s vs %s: epoch %.1fx faster (wall), %.1fx (CPU); predictions/s x%.1f", name, args.variants[0],
                 row["epoch_wall_speedup"], row["epoch_cpu_speedup"], row["predictions_per_s_ratio"])
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
