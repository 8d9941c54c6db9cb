"""Generator speed: the paper-style T5 against the causal generator on Beauty, and decoding as the
catalogue grows.

Run from the repository root (configs/beauty.yaml reads ../shared/data):

    python bench/speed.py beauty --threads 1 --max-seconds 240 --t5-max-seconds 720
    python bench/speed.py catalogue --threads 1 --sizes 10000 100000 1000000

"beauty" trains each generator variant from scratch on Amazon Beauty with the same semantic ids
(--ids, default the residual k-means ids of bench/causal_beauty.py), one after the other, each in its
own process so its peak RSS is its own:

- t5-tiny: the paper-style reference (cemg.generator.t5's data path: one example per history
  prefix, M tokens per history item, length-bucketed batches, TIGER's small T5);
- causal-gpt2 / causal-llama: the item-level generator (cemg.generator.causal's data path: one
  window per user, a prediction at every position), default config, GPT-2 or Llama backbone.

A variant trains under a wall-clock budget with AdamW at its configured peak learning rate after a
short linear warmup (the library's schedules are set for whole runs: the T5's 5% warmup alone is
~1,300 steps, longer than any budget here). Validation NDCG@10 is measured on the same fixed sample
of validation users for every variant at 15, 30, 60, ... seconds of training, to give the training
time to reach each of --thresholds; a checkpoint is skipped when the previous evaluation took longer
than the training since it, so evaluation never takes most of a run. Evaluation is the library's
full-catalogue protocol (trie-constrained beam search, beam 20, history excluded), and its users/s
is the inference throughput. Training throughput counts (history, next item) predictions: one per
example for the T5, one per non-padding position for the causal model. Wall and process-CPU seconds
are both kept; on a shared machine the CPU seconds are the steadier, and the ratios against the T5
reference (same run, same machine) cancel most of the remaining noise.

"catalogue" builds random catalogues (M levels of K codes, plus make_unique's disambiguation level)
of each size and measures PrefixTree build time and size, and per-user constrained beam search
(beam 20, top 10, the history excluded) with an untrained causal model and an untrained t5-tiny.

Both write their part of bench/results/speed.json.
"""

from __future__ import annotations

import os

# Spinning OpenMP threads waste their slices on a shared CPU (bench/baselines_beauty.py); must be
# set before torch loads the runtime. Spawned variant processes inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import multiprocessing  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from collections.abc import Callable  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402
from transformers import get_constant_schedule_with_warmup  # noqa: E402

from baselines_beauty import machine  # noqa: E402
from cemg.artifacts import atomic_write_text  # noqa: E402
from cemg.config import GeneratorConfig, load_config  # noqa: E402
from cemg.data.load import load_dataset  # noqa: E402
from cemg.data.split import SplitDataset, leave_one_out  # noqa: E402
from cemg.evaluation.protocol import Recommender, evaluate  # noqa: E402
from cemg.generator.causal import (  # noqa: E402
    CausalGenerativeRecommender,
    CausalSemanticModel,
    CausalSpec,
    training_windows,
)
from cemg.generator.search import PrefixTree  # noqa: E402
from cemg.generator.t5 import GenerativeRecommender, NextItemExamples, build_backbone  # noqa: E402
from cemg.generator.train import length_bucketed_batches  # noqa: E402
from cemg.tokenizer.build import make_unique  # noqa: E402
from cemg.tokenizer.semantic_ids import SemanticIds  # noqa: E402

log = logging.getLogger("bench.speed")
RESULTS = Path("bench/results/speed.json")
REFERENCE = "t5-tiny"
# name -> config overrides; the first is the reference the ratios divide by.
VARIANTS: dict[str, list[str]] = {
    REFERENCE: ["generator.backbone=t5-tiny", "generator.content_prior.weight=0"],  # the prior is causal-only
    "causal-gpt2": ["generator.backbone=causal", "generator.causal.backbone=gpt2"],
    "causal-llama": ["generator.backbone=causal", "generator.causal.backbone=llama"],
}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def current_rss_mib() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def synthetic_semantic_ids(n_items: int, levels: int, codebook_size: int, seed: int) -> SemanticIds:
    """Uniform random codes; items that collide get the tokenizer's extra level (make_unique)."""
    raw = np.random.default_rng(seed).integers(0, codebook_size, size=(n_items, levels))
    return make_unique(raw, codebook_size)[0]


# --- Beauty: training and inference of each variant ---------------------------------------------


@dataclasses.dataclass
class Trainee:
    """What the timed loop needs from a generator: its model, a recommender over it, its peak lr,
    its epoch of batches and its loss on one batch (with the number of predictions it trains)."""

    model: torch.nn.Module
    recommender: Recommender
    lr: float
    batches: Callable[[np.random.Generator], list[np.ndarray]]
    loss: Callable[[np.ndarray], tuple[torch.Tensor, int]]


def t5_trainee(split: SplitDataset, ids: SemanticIds, cfg: GeneratorConfig, seed: int) -> Trainee:
    """cemg.generator.t5's batches: sliding-window examples, M tokens per history item."""
    model, vocab = build_backbone(cfg.backbone, ids.codebook_sizes, seed)
    rec = GenerativeRecommender(model, vocab, ids, cfg, split.max_history)
    examples = NextItemExamples.from_sequences(split.train, split.max_history)
    offsets = vocab.level_offsets()

    def loss(rows: np.ndarray) -> tuple[torch.Tensor, int]:
        items, lengths, targets = examples.batch(rows)
        input_ids, mask = vocab.encode_items(items, lengths, rec.item_tokens)
        labels = ids.codes[targets] + offsets[None, :]
        out = model(input_ids=torch.from_numpy(input_ids), attention_mask=torch.from_numpy(mask),
                    labels=torch.from_numpy(labels))
        return out.loss, len(rows)

    return Trainee(model, rec, cfg.t5.lr,
                   lambda rng: length_bucketed_batches(examples.history_lengths, cfg.batch_size, rng), loss)


def causal_trainee(split: SplitDataset, ids: SemanticIds, cfg: GeneratorConfig, seed: int) -> Trainee:
    """cemg.generator.causal's batches: one window per user, every position a prediction."""
    torch.manual_seed(seed)
    spec = CausalSpec.from_config(cfg, ids, split.max_history)
    rec = CausalGenerativeRecommender(CausalSemanticModel(spec, ids.codes), ids, cfg)
    inputs, targets = training_windows(split.train, split.max_history)
    lengths = (inputs >= 0).sum(1)

    def loss(rows: np.ndarray) -> tuple[torch.Tensor, int]:
        width = int(lengths[rows].max())
        x, y = torch.from_numpy(inputs[rows, -width:]), torch.from_numpy(targets[rows, -width:])
        keep = y >= 0
        return rec.model.loss(rec.model.encode(x)[keep], y[keep], rec.tree), int(keep.sum())

    return Trainee(rec.model, rec, cfg.causal.lr,
                   lambda rng: length_bucketed_batches(lengths, cfg.batch_size, rng, bucket_batches=16), loss)


def train_timed(trainee: Trainee, valid: SplitDataset, cfg, opts: dict, seed: int) -> dict:
    """Train until `budget` seconds of training (evaluation excluded) or every threshold is reached."""
    budget = opts["budget"]
    eval_cfg = cfg.evaluation.model_copy(update={"ks": sorted(set(cfg.evaluation.ks) | {10})})
    optimizer = torch.optim.AdamW(trainee.model.parameters(), lr=trainee.lr,
                                  weight_decay=cfg.generator.weight_decay)
    scheduler = get_constant_schedule_with_warmup(optimizer, opts["warmup_steps"])
    rng = np.random.default_rng(seed)
    wall = cpu = 0.0
    predictions = steps = epochs = 0
    next_checkpoint, last_eval_at, last_eval_cost = opts["first_eval_s"], -np.inf, 0.0
    curve: list[dict] = []
    bar = tqdm(total=round(budget), desc="training seconds", unit="s", leave=False, mininterval=30)
    done = False
    while not done:
        epochs += 1
        for rows in trainee.batches(rng):
            trainee.model.train()
            tic, cpu_tic = time.perf_counter(), time.process_time()
            loss, n = trainee.loss(rows)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.generator.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(trainee.model.parameters(), cfg.generator.grad_clip)
            optimizer.step()
            scheduler.step()
            step_wall = time.perf_counter() - tic
            wall, cpu = wall + step_wall, cpu + time.process_time() - cpu_tic
            predictions, steps = predictions + n, steps + 1
            bar.update(min(step_wall, max(0.0, budget - bar.n)))
            out_of_time = wall >= budget
            if wall < next_checkpoint and not out_of_time:
                continue
            while next_checkpoint <= wall:
                next_checkpoint *= 2
            if not out_of_time and wall - last_eval_at < last_eval_cost:
                continue
            cpu_tic = time.process_time()
            result = evaluate(trainee.recommender, valid, "valid", eval_cfg, batch_size=len(valid.valid))
            point = {"train_wall_s": wall, "train_cpu_s": cpu, "steps": steps, "epoch": epochs,
                     "predictions": predictions, "loss": float(loss.detach()),
                     "valid_ndcg10": result.metrics["NDCG@10"], "valid_hr10": result.metrics["HR@10"],
                     "eval_wall_s": result.seconds, "eval_cpu_s": time.process_time() - cpu_tic}
            curve.append(point)
            last_eval_at, last_eval_cost = wall, result.seconds
            log.info("%.0fs training (%d steps, epoch %d): loss %.3f, valid NDCG@10 %.4f HR@10 %.4f "
                     "(evaluated in %.0fs)", wall, steps, epochs, point["loss"], point["valid_ndcg10"],
                     point["valid_hr10"], result.seconds)
            best = max(p["valid_ndcg10"] for p in curve)
            done = out_of_time or best >= max(opts["thresholds"])
            if done:
                break
    bar.close()
    reached = {}
    for threshold in opts["thresholds"]:
        first = next((p for p in curve if p["valid_ndcg10"] >= threshold), None)
        reached[str(threshold)] = None if first is None else {
            k: first[k] for k in ("train_wall_s", "train_cpu_s", "predictions", "steps")}
    n_eval_users = len(valid.valid)
    return {
        "train_wall_s": wall,
        "train_cpu_s": cpu,
        "steps": steps,
        "epochs_started": epochs,
        "predictions": predictions,
        "train_predictions_per_s": predictions / wall,
        "train_predictions_per_cpu_s": predictions / cpu,
        "budget_s": budget,
        "time_to_threshold": reached,
        "best_valid_ndcg10": max(p["valid_ndcg10"] for p in curve),
        # beam-search cost does not depend on the weights, so every evaluation is a sample of it
        "inference_users_per_s": float(np.median([n_eval_users / p["eval_wall_s"] for p in curve])),
        "inference_users_per_cpu_s": float(np.median([n_eval_users / p["eval_cpu_s"] for p in curve])),
        "curve": curve,
    }


def run_variant(name: str, opts: dict) -> dict:
    """One variant, from data loading to its last evaluation, in a fresh process (peak RSS)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(opts["threads"])
    load_before = os.getloadavg()[0]
    cfg = load_config(opts["config"], [*VARIANTS[name], *opts["overrides"]])
    dataset = load_dataset(cfg.data, seed=cfg.seed, cache_dir=cfg.cache_dir)
    split = leave_one_out(dataset, cfg.data.max_history)
    ids = SemanticIds.load(opts["ids"])
    if ids.n_items != split.n_items:
        raise SystemExit(f"{opts['ids']}: semantic ids cover {ids.n_items} items, the dataset {split.n_items}")
    valid = split.with_valid_subsample(opts["eval_users"], cfg.seed)
    setup_rss = peak_rss_mib()
    make = t5_trainee if cfg.generator.backbone != "causal" else causal_trainee
    trainee = make(split, ids, cfg.generator, cfg.seed)
    n_params = sum(p.numel() for p in trainee.model.parameters())
    log.info("%s: %d parameters, %d validation users, budget %.0fs", name, n_params, len(valid.valid),
             opts["budget"])
    result = train_timed(trainee, valid, cfg, opts, cfg.seed)
    result.update(n_parameters=n_params, setup_peak_rss_mib=setup_rss, peak_rss_mib=peak_rss_mib(),
                  overrides=VARIANTS[name] + opts["overrides"], load_average_before=load_before,
                  load_average_after=os.getloadavg()[0], machine=machine())
    log.info("%s: %.0f predictions/s (%.0f per CPU-s), %.0f users/s inference, peak RSS %.0f MiB "
             "(%.0f MiB after loading data)", name, result["train_predictions_per_s"],
             result["train_predictions_per_cpu_s"], result["inference_users_per_s"], result["peak_rss_mib"],
             setup_rss)
    return result


def ratios(results: dict[str, dict], headline: float) -> dict[str, dict]:
    """Each variant against the reference: how many times faster (or larger, for memory).

    A threshold the reference did not reach within its budget gives a lower bound (">=")."""
    ref = results.get(REFERENCE)
    if ref is None:
        return {}
    out = {}
    for name, res in results.items():
        row = {
            "train_throughput": res["train_predictions_per_s"] / ref["train_predictions_per_s"],
            "train_throughput_cpu": res["train_predictions_per_cpu_s"] / ref["train_predictions_per_cpu_s"],
            "inference_throughput": res["inference_users_per_s"] / ref["inference_users_per_s"],
            "inference_throughput_cpu": res["inference_users_per_cpu_s"] / ref["inference_users_per_cpu_s"],
            "peak_rss": res["peak_rss_mib"] / ref["peak_rss_mib"],
        }
        for key in ("train_wall_s", "train_cpu_s"):
            mine, theirs = res["time_to_threshold"][str(headline)], ref["time_to_threshold"][str(headline)]
            if mine is None:
                row[f"time_to_ndcg_speedup_{key}"] = None
            elif theirs is None:
                row[f"time_to_ndcg_speedup_{key}"] = {"bound": ">=", "value": ref[key] / mine[key]}
            else:
                row[f"time_to_ndcg_speedup_{key}"] = {"bound": "=", "value": theirs[key] / mine[key]}
        out[name] = row
    return out


def merge_results(part: str, payload: dict) -> None:
    results = json.loads(RESULTS.read_text(encoding="utf-8")) if RESULTS.is_file() else {}
    results[part] = payload
    atomic_write_text(RESULTS, json.dumps(results, indent=2, default=str))
    log.info("wrote %s (%s)", RESULTS, part)


def bench_beauty(args: argparse.Namespace) -> None:
    thresholds = sorted(set(args.thresholds) | {args.threshold})
    results: dict[str, dict] = {}
    payload = {"command": "python " + " ".join(sys.argv), "ids": str(args.ids), "eval_users": args.eval_users,
               "headline_threshold": args.threshold, "thresholds": thresholds, "warmup_steps": args.warmup_steps}
    # one fresh process per variant, so each peak RSS (getrusage) is that variant's alone
    context = multiprocessing.get_context("spawn")
    for name in args.variants:
        opts = {"threads": args.threads, "config": args.config, "overrides": args.overrides, "ids": str(args.ids),
                "eval_users": args.eval_users, "thresholds": thresholds, "warmup_steps": args.warmup_steps,
                "first_eval_s": args.first_eval_s,
                "budget": args.t5_max_seconds if name == REFERENCE else args.max_seconds}
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            results[name] = pool.submit(run_variant, name, opts).result()
        payload.update(variants=results, ratios_vs_reference=ratios(results, args.threshold))
        merge_results(args.name, payload)  # after every variant, so a crash keeps what finished
    for name, row in payload["ratios_vs_reference"].items():
        log.info("%s / %s: %s", name, REFERENCE, json.dumps(row, default=str))


# --- catalogue scaling --------------------------------------------------------------------------


def time_recommend(rec, histories: list[np.ndarray], k: int = 10) -> dict:
    rec.recommend(histories[:8], k, exclude=histories[:8])  # first-call allocations
    tic, cpu_tic = time.perf_counter(), time.process_time()
    rec.recommend(histories, k, exclude=histories)
    wall, cpu = time.perf_counter() - tic, time.process_time() - cpu_tic
    return {"users": len(histories), "ms_per_user": 1000 * wall / len(histories),
            "cpu_ms_per_user": 1000 * cpu / len(histories), "users_per_s": len(histories) / wall}


def bench_catalogue(args: argparse.Namespace) -> None:
    cfg = GeneratorConfig()  # default causal generator: beams 20, 128 users per batch
    rng = np.random.default_rng(args.seed)
    rows = []
    for n_items in args.sizes:
        ids = synthetic_semantic_ids(n_items, args.levels, args.codebook_size, args.seed)
        tic = time.perf_counter()
        tree = PrefixTree(ids.codes, ids.codebook_sizes)
        build_s = time.perf_counter() - tic
        # tracemalloc sees numpy's buffers, which the tree's tensors are built from and share
        tracemalloc.start()
        rss_before = current_rss_mib()
        tree = PrefixTree(ids.codes, ids.codebook_sizes)
        _, traced_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        row = {"n_items": n_items, "codebook_sizes": ids.codebook_sizes, "tree_nodes": tree.n_nodes,
               "tree_build_s": build_s, "tree_mib": tree.nbytes / 2**20, "tree_build_peak_mib": traced_peak / 2**20,
               "rss_growth_mib": current_rss_mib() - rss_before}
        histories = [rng.choice(n_items, size=args.history, replace=False) for _ in range(args.users)]
        spec = CausalSpec.from_config(cfg, ids, args.history)
        torch.manual_seed(args.seed)
        causal = CausalGenerativeRecommender(CausalSemanticModel(spec, ids.codes), ids, cfg)
        row["causal"] = time_recommend(causal, histories)
        del causal
        if args.t5_users:
            model, vocab = build_backbone("t5-tiny", ids.codebook_sizes, args.seed)
            t5 = GenerativeRecommender(model, vocab, ids, cfg, args.history)
            row["t5-tiny"] = time_recommend(t5, histories[: args.t5_users])
            del t5, model
        row["peak_rss_mib"] = peak_rss_mib()
        rows.append(row)
        log.info("%d items (codebooks %s): tree %.2fs, %.1f MiB (build peak %.1f MiB); causal %.2f ms/user%s",
                 n_items, ids.codebook_sizes, build_s, row["tree_mib"], row["tree_build_peak_mib"],
                 row["causal"]["ms_per_user"],
                 f", t5-tiny {row['t5-tiny']['ms_per_user']:.1f} ms/user" if "t5-tiny" in row else "")
    merge_results("catalogue", {"command": "python " + " ".join(sys.argv), "machine": machine(),
                                "history_items": args.history, "beams": cfg.beams, "k": 10, "rows": rows})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["beauty", "catalogue"])
    parser.add_argument("overrides", nargs="*", help="config overrides for every variant (beauty)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    beauty = parser.add_argument_group("beauty")
    beauty.add_argument("--config", default="configs/beauty.yaml")
    beauty.add_argument("--ids", type=Path, default=Path("runs/beauty-causal/ids-kmeans"),
                        help="a saved SemanticIds folder (bench/causal_beauty.py --ids-only builds one)")
    beauty.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    beauty.add_argument("--max-seconds", type=float, default=240, help="training budget per causal variant")
    beauty.add_argument("--t5-max-seconds", type=float, default=720, help="training budget of the T5 reference")
    beauty.add_argument("--threshold", type=float, default=0.01, help="valid NDCG@10 of the headline ratio")
    beauty.add_argument("--name", default="beauty", help="result key in bench/results/speed.json")
    beauty.add_argument("--thresholds", type=float, nargs="+", default=[0.005, 0.01, 0.015, 0.02])
    beauty.add_argument("--eval-users", type=int, default=1000, help="fixed validation sample, all variants")
    beauty.add_argument("--first-eval-s", type=float, default=15, help="first validation checkpoint")
    beauty.add_argument("--warmup-steps", type=int, default=20)
    catalogue = parser.add_argument_group("catalogue")
    catalogue.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    catalogue.add_argument("--levels", type=int, default=3, help="random levels before make_unique's")
    catalogue.add_argument("--codebook-size", type=int, default=256)
    catalogue.add_argument("--history", type=int, default=20, help="items per user history")
    catalogue.add_argument("--users", type=int, default=512, help="users decoded per size (causal)")
    catalogue.add_argument("--t5-users", type=int, default=64, help="users decoded per size (t5-tiny); 0 skips")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    if args.part == "beauty":
        bench_beauty(args)
    else:
        bench_catalogue(args)


if __name__ == "__main__":
    main()
