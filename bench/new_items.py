"""New items without retraining (issue 16): how well does each model recommend an item it never
trained on, once the item's content is added to the trained run?

Protocol, from the repository root:

    python bench/new_items.py --config configs/beauty.yaml --seeds 42,43,44
    python bench/new_items.py --config configs/demo.yaml --seeds 42 --work /tmp/ni   # a few minutes

1. A seeded `--fraction` (5%) of the catalogue becomes "new" (`--split-seed`, the same items for
   every model seed). Every interaction with a new item leaves the data: the derived sequence file
   holds each user's sequence without them, and the derived item table lacks them. So no training
   input sees them: not LightGCN's graph, the PCA, the tokenizer, the generator's windows, the
   popularity counts or SASRec. The derived data is re-filtered to 5 cores like the original.
2. `cemg run` on the derived data (one run dir per mode, `--seeds`), then `cemg items add` of the
   new items' content (text and images, from the original item table) into every seed of the run.
3. Evaluated users: those whose original test target (last item) is a new item. Their history is
   their original sequence before it (the last `data.max_history` items, new items included: once
   added, they are part of the catalogue), history items masked out of the ranking as in
   evaluation. HR@5/10 and NDCG@5/10 over the whole catalogue (old and new items).
4. Rows: the semantic generator (no per-item parameter); the hybrid generator and SASRec, whose
   catalogues cannot hold the new items (per-item parameters): their top-k lists are computed and
   searched for the target like any other model's, so their zeros are measured, not assumed; and
   a content-only reference: rank items by cosine similarity of their content vectors (the run's
   PCA'd text and image vectors, concatenated) to the user's last item.

Writes bench/results/new_items_<dataset>.json with the command, the machine, the leak checks and
per-seed rows.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from baselines_beauty import machine  # noqa: E402  (bench/ is on sys.path when run as a script)
from dataset_tables import copy_shared  # noqa: E402
from cemg.artifacts import atomic_write_text  # noqa: E402
from cemg.config import load_config  # noqa: E402
from cemg.data.dataset import InteractionDataset  # noqa: E402
from cemg.data.load import load_dataset  # noqa: E402
from cemg.evaluation.metrics import summarize, target_ranks  # noqa: E402
from cemg.run_folder import RunFolder  # noqa: E402

log = logging.getLogger("bench.new_items")
KS = [5, 10]


# --- 1. the derived data ------------------------------------------------------------------------


def choose_new_items(n_items: int, fraction: float, split_seed: int) -> np.ndarray:
    rng = np.random.default_rng(split_seed)
    count = max(1, round(fraction * n_items))
    return np.sort(rng.choice(n_items, size=count, replace=False))


def item_rows(dataset: InteractionDataset, items: np.ndarray, text_fields: list[str]) -> list[dict]:
    table = dataset.items
    rows = []
    for i in items:
        row = {"item_id": table.keys[i]}
        row.update({name: table.fields.get(name, [None] * len(table))[i] for name in text_fields})
        if table.image_refs is not None:
            row["image"] = table.image_refs[i]
        rows.append(row)
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def derive_data(config_path: Path, work: Path, fraction: float, split_seed: int) -> dict:
    """Write the derived sequences, item table, new-item table and config under `work`."""
    cfg = load_config(config_path)
    dataset = load_dataset(cfg.data, cfg.seed, cfg.cache_dir)
    new = choose_new_items(dataset.n_items, fraction, split_seed)
    is_new = np.zeros(dataset.n_items, dtype=bool)
    is_new[new] = True
    old = np.flatnonzero(~is_new)
    keys = dataset.items.keys
    work.mkdir(parents=True, exist_ok=True)

    # The derived interactions as a table (user, item, position as the timestamp): keys stay as
    # they are, whatever the original format.
    lines = ["user,item,timestamp\n"]
    for user, seq in zip(dataset.user_keys, dataset.sequences):
        kept = [keys[i] for i in seq if not is_new[i]]
        lines.extend(f"{user},{key},{t}\n" for t, key in enumerate(kept))
    interactions = work / "interactions.csv"
    atomic_write_text(interactions, "".join(lines))
    fields = list(cfg.data.text_fields)
    write_jsonl(work / "items.jsonl", item_rows(dataset, old, fields))
    write_jsonl(work / "new_items.jsonl", item_rows(dataset, new, fields))

    # The users evaluated: the original test target is a new item.
    cap = cfg.data.max_history
    evaluated = [
        {"user": user, "history": [keys[i] for i in seq[:-1][-cap:]], "target": keys[seq[-1]]}
        for user, seq in zip(dataset.user_keys, dataset.sequences)
        if len(seq) >= 2 and is_new[seq[-1]]
    ]
    atomic_write_text(work / "evaluated_users.json", json.dumps(evaluated))
    # Validation users for settings that act on added items (bench/new_item_share.py): every user's
    # original second-to-last item after the items before it. New items are as common among these
    # targets as in the catalogue, as they would be after a real add. No training input holds these
    # targets: the derived training part of a sequence ends before its last two old items (where the
    # last item is old, the target is the derived run's own validation target).
    valid = [{"user": user, "history": [keys[i] for i in seq[:-2][-cap:]], "target": keys[seq[-2]]}
             for user, seq in zip(dataset.user_keys, dataset.sequences) if len(seq) >= 3]
    atomic_write_text(work / "valid_users.json", json.dumps(valid))

    raw = yaml.safe_load(Path(config_path).read_text(encoding="utf-8")) or {}
    data = raw.setdefault("data", {})
    data.update(format="table", path=str(interactions.resolve()), items_path=str((work / "items.jsonl").resolve()),
                item_key="item_id", image_column="image" if dataset.items.image_refs is not None else None,
                text_fields=fields)
    for key in ("item_key_map", "image_map", "user_column", "item_column", "time_column", "delimiter", "encoding"):
        data.pop(key, None)
    if dataset.image_root is not None:
        data["image_root"] = str(Path(dataset.image_root).resolve())
    raw["cache_dir"] = str(Path(cfg.cache_dir).resolve())  # text and image vectors are reused by content
    atomic_write_text(work / "config.yaml", yaml.safe_dump(raw, sort_keys=False))
    return {"items": dataset.n_items, "new_items": len(new), "users": dataset.n_users,
            "evaluated_users": len(evaluated), "valid_users": len(valid),
            "valid_users_with_new_target": sum(int(is_new[seq[-2]]) for seq in dataset.sequences if len(seq) >= 3),
            "new_keys": [keys[i] for i in new]}


def check_no_leak(run: Path, new_keys: set[str], seeds: list[int], interactions: Path) -> dict:
    """Show, from the artifacts, that no new item reached a training input: the interactions file, the
    data stage every stage trains from, LightGCN's item table, and every seed's ids and generator
    cover the trained catalogue only (items are added after training, into their own folder)."""
    from cemg.collab.artifact import CollabEmbeddings
    from cemg.tokenizer.semantic_ids import SemanticIds

    rows = [line.split(",")[1] for line in interactions.read_text(encoding="utf-8").splitlines()[1:]]
    in_interactions = sum(key in new_keys for key in rows)
    folder = RunFolder.open(run, seeds[0])
    dataset = InteractionDataset.load(folder.stage("data"))
    in_catalogue = sorted(set(dataset.items.keys) & new_keys)
    n = dataset.n_items
    sizes = {"collab_items": int(CollabEmbeddings.load(folder.stage("collab")).items.shape[0])}
    for seed in seeds:
        seed_folder = RunFolder.open(run, seed)
        sizes[f"seed {seed} semantic_ids"] = SemanticIds.load(seed_folder.stage("tokenizer") / "semantic_ids").n_items
        sizes[f"seed {seed} generator_items"] = SemanticIds.load(seed_folder.stage("generator") / "semantic_ids").n_items
    leaks = in_interactions or in_catalogue or any(v != n for v in sizes.values())
    if leaks:
        raise AssertionError(f"{run}: new items reached training: {in_interactions} interactions, catalogue "
                             f"{in_catalogue[:5]}, sizes {sizes} (trained catalogue {n})")
    return {"interaction_rows": len(rows), "interactions_with_new_items": in_interactions, "trained_users": dataset.n_users,
            "trained_catalogue_items": n, "new_items_in_trained_catalogue": 0, "artifact_item_counts": sizes}


# --- 2. training and adding ---------------------------------------------------------------------


def cemg(*args: str, threads: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "cemg", *args]
    log.info("$ %s", " ".join(command))
    subprocess.run(command, check=True, cwd=ROOT, env=env)


def train(work: Path, mode: str, seeds: list[int], threads: int, overrides: list[str] = (), tag: str = "") -> Path:
    """The run of one generator mode on the derived data (`overrides`: more `--set`s, `tag`: they
    name its own folder). Every run after the plain semantic one starts from that run's data,
    features, LightGCN and ids: only the generator differs."""
    run = work / f"run-{mode}{tag}"
    if run != work / "run-semantic" and (work / "run-semantic").is_dir():
        copy_shared(run, ("data", "features", "collab", "tokenizer"), True, source=work / "run-semantic")
    cemg("run", "--config", str(work / "config.yaml"), "--seeds", ",".join(map(str, seeds)), "--quiet",
         "--set", f"run_dir={run}", "--set", f"generator.mode={mode}",
         *[arg for o in overrides for arg in ("--set", o)], threads=threads)
    return run


def train_sasrec(work: Path, seed: int, threads: int) -> Path:
    run = work / f"sasrec-{seed}"
    cemg("baseline", "sasrec", "--config", str(work / "config.yaml"), "--quiet",
         "--set", f"run_dir={run}", "--set", f"seed={seed}", threads=threads)
    return run / "baselines" / "sasrec"


# --- 3. evaluation on the users whose target is new -----------------------------------------------


def scores_of(topk_keys: list[list[str]], targets: list[str]) -> dict[str, float]:
    """HR/NDCG@K of the target keys in key lists, through the shared metric code."""
    k = max(KS)
    vocab = {key: i for i, key in enumerate(sorted({t for t in targets} | {x for row in topk_keys for x in row}))}
    topk = np.full((len(targets), k), -1, dtype=np.int64)
    for row, keys in enumerate(topk_keys):
        topk[row, : len(keys[:k])] = [vocab[x] for x in keys[:k]]
    ranks = target_ranks(topk, np.asarray([vocab[t] for t in targets], dtype=np.int64))
    return summarize(ranks, KS)


def ranking_settings(config: Path) -> tuple[dict[str, float] | None, str]:
    """The ranking settings of `config`'s content prior (ContentPriorRecommender.RANKING; None without
    a prior) and their label for the rows (the mixtures, when set)."""
    from cemg.generator.content_prior import ContentPriorRecommender

    prior = load_config(config).generator.content_prior
    if not prior.weight:
        return None, ""
    label = "".join(f", {name} {getattr(prior, a):g}/{getattr(prior, b):g}"
                    for name, a, b in (("mixture", "mixture", "mixture_sharpness"),
                                       ("new-item share", "new_item_share", "new_item_sharpness"))
                    if getattr(prior, a))
    if prior.new_item_share and prior.new_item_prefix_levels:
        label += f" x p(first {prior.new_item_prefix_levels} code(s))"
    if prior.new_item_share and prior.new_item_gate:
        label += f", gate {prior.new_item_gate:g}/{prior.new_item_gate_sharpness:g}"
    return {name: getattr(prior, name) for name in ContentPriorRecommender.RANKING}, label


def evaluate_semantic(run: Path, seed: int, users: list[dict], ranking: dict[str, float] | None = None) -> dict:
    """`ranking`: generator.content_prior settings that act at ranking time only
    (ContentPriorRecommender.RANKING), applied whatever the run recorded: the bench ranks with
    --config's, so a run trained before a ranking setting changed needs no retraining."""
    from cemg.api import Recommender

    recommender = Recommender.load(run, device="cpu", seed=seed)
    if ranking:
        recommender.generator = recommender.generator.replace(**ranking)
    known = set(recommender.catalogue.dataset.items.keys)
    # History items the derived data's 5-core filter dropped (too few interactions once the new items
    # left) are in no catalogue: left out, as for every other row.
    histories = [[k for k in u["history"] if k in known] for u in users]
    start = time.perf_counter()
    lists = recommender.recommend_batch(histories, k=max(KS))
    return {"metrics": scores_of([[r.key for r in row] for row in lists], [u["target"] for u in users]),
            "catalogue_items": recommender.n_items, "targets_in_catalogue": sum(u["target"] in known for u in users),
            "history_items_dropped": sum(len(u["history"]) - len(h) for u, h in zip(users, histories)),
            "seconds": round(time.perf_counter() - start, 1)}


def evaluate_id_model(keys: list[str], recommend, users: list[dict]) -> dict:
    """A model whose catalogue is the trained items only (hybrid generator, SASRec): history items it
    does not know are dropped (it cannot embed them), its top-k is mapped back to keys and searched
    for the target like any other model's list."""
    index = {key: i for i, key in enumerate(keys)}
    histories = [np.asarray([index[k] for k in u["history"] if k in index], dtype=np.int64) for u in users]
    rows = [i for i, h in enumerate(histories) if len(h)]
    lists: list[list[str]] = [[] for _ in users]
    if rows:
        topk = recommend([histories[i] for i in rows], max(KS), [histories[i] for i in rows])
        for row, i in enumerate(rows):
            lists[i] = [keys[j] for j in topk[row] if j >= 0]
    return {"metrics": scores_of(lists, [u["target"] for u in users]), "catalogue_items": len(keys),
            "targets_in_catalogue": sum(u["target"] in index for u in users),
            "users_with_known_history": len(rows)}


def evaluate_hybrid(run: Path, seed: int, users: list[dict]) -> dict:
    from cemg.api import Recommender

    recommender = Recommender.load(run, device="cpu", seed=seed)
    keys = recommender.catalogue.dataset.items.keys
    return evaluate_id_model(keys, lambda h, k, ex: recommender.generator.recommend_with_scores(h, k, ex)[0], users)


def evaluate_sasrec(folder: Path, data_run: Path, users: list[dict]) -> dict:
    from cemg.baselines import SequentialRecommender

    model = SequentialRecommender.load(folder)
    keys = InteractionDataset.load(RunFolder.open(data_run).stage("data")).items.keys
    if len(keys) != model.n_items:
        raise AssertionError(f"SASRec knows {model.n_items} items, the derived data {len(keys)}")
    return evaluate_id_model(keys, model.recommend, users)


def content_vectors(features: list) -> np.ndarray:
    """Rows of the given ItemFeatures, stacked (ItemFeatures.content_matrix: the run's PCA'd text
    and image vectors, each block unit length, side by side)."""
    return np.concatenate([f.content_matrix() for f in features])


def evaluate_content(run: Path, seed: int, users: list[dict], new_items: Path) -> dict:
    """The content-only reference's metrics over `users` (content_lists)."""
    lists, n_items = content_lists(run, seed, users, new_items)
    return {"metrics": scores_of(lists, [u["target"] for u in users]), "catalogue_items": n_items}


def content_lists(run: Path, seed: int, users: list[dict], new_items: Path) -> tuple[list[list[str]], int]:
    """Each user's top keys when every item (trained and new) is ranked by cosine similarity of its
    content vector (content_vectors) to the user's last history item, history items masked (a user with
    no history item left in the catalogue gets an empty list: a miss); and the catalogue's size."""
    from cemg.added_items import encode_new_items
    from cemg.features.artifact import ItemFeatures

    folder = RunFolder.open(run, seed)
    table, added = encode_new_items(folder, new_items)
    vectors = content_vectors([ItemFeatures.load(folder.stage("features")), added])
    keys = [*InteractionDataset.load(folder.stage("data")).items.keys, *table.keys]
    index = {key: i for i, key in enumerate(keys)}
    lists = []
    for u in users:
        history = [index[k] for k in u["history"] if k in index]
        if not history:  # every history item was dropped by the derived data's 5-core filter: no last item
            lists.append([])
            continue
        similarity = vectors @ vectors[history[-1]]
        similarity[history] = -np.inf
        lists.append([keys[j] for j in np.argsort(-similarity, kind="stable")[: max(KS)]])
    return lists, len(keys)


# --- 4. the table ------------------------------------------------------------------------------


def mean_std(rows: list[dict]) -> dict[str, dict[str, float]]:
    out = {}
    for metric in rows[0]["metrics"]:
        values = np.asarray([r["metrics"][metric] for r in rows])
        out[metric] = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else None}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=Path("configs/beauty.yaml"))
    parser.add_argument("--seeds", default="42,43,44")
    parser.add_argument("--fraction", type=float, default=0.05)
    parser.add_argument("--split-seed", type=int, default=0, help="which items become new (the same for every seed)")
    parser.add_argument("--work", type=Path, default=None, help="default runs/new-items-<dataset>")
    parser.add_argument("--rows", nargs="+", default=["semantic", "content", "hybrid", "sasrec"],
                        choices=["semantic", "content", "hybrid", "sasrec"])
    parser.add_argument("--collab", nargs="+", default=["content", "zeros"], choices=["content", "zeros"],
                        help="collaborative stand-ins for the new items, one semantic row each")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--trained-run", type=Path, default=None,
                        help="a semantic run already trained on this work folder's derived data: evaluated, not retrained")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for the semantic run (e.g. generator.causal.content_features=true); "
                             "needs --tag")
    parser.add_argument("--tag", default="", help="names the semantic run's folder and rows when --set is given")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.overrides and not args.tag:
        parser.error("--set changes the semantic run: give it a --tag that names its folder and rows")
    tag = f"-{args.tag}" if args.tag else ""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    seeds = [int(s) for s in args.seeds.split(",")]
    name = load_config(args.config).data.name
    ranking, ranked_by = ranking_settings(args.config)  # what every semantic row ranks with
    work = args.work or ROOT / "runs" / f"new-items-{name}"
    started = time.time()

    split = derive_data(args.config, work, args.fraction, args.split_seed)
    new_keys = set(split["new_keys"])
    users = json.loads((work / "evaluated_users.json").read_text(encoding="utf-8"))
    log.info("%d of %d items are new; %d users have a new item as their test target",
             split["new_items"], split["items"], len(users))
    result = {"command": "python " + " ".join([f"bench/{Path(__file__).name}", *sys.argv[1:]]),
              "machine": machine(), "config": str(args.config), "seeds": seeds, "fraction": args.fraction,
              "split_seed": args.split_seed, "split": split, "rows": {}, "leak_checks": {}}

    def row(label: str, per_seed: dict[int, dict]) -> None:
        result["rows"][label] = {"per_seed": per_seed, **mean_std(list(per_seed.values()))}
        log.info("%s: %s", label, {m: round(v["mean"], 4) for m, v in mean_std(list(per_seed.values())).items()})

    semantic_run = None
    if {"semantic", "content"} & set(args.rows):
        semantic_run = args.trained_run or train(work, "semantic", seeds, args.threads, args.overrides, tag)
        result["leak_checks"]["semantic"] = check_no_leak(semantic_run, new_keys, seeds, work / "interactions.csv")
    if "semantic" in args.rows:
        from cemg.api import add_items

        for stand_in in args.collab:
            run_copy = work / f"run-semantic{tag}-{stand_in}"  # each stand-in adds to its own copy of the run
            if not run_copy.exists():
                shutil.copytree(semantic_run, run_copy, symlinks=True)
            per_seed = {}
            for seed in seeds:
                if RunFolder.open(run_copy, seed).added_items() is None:
                    add_items(run_copy, work / "new_items.jsonl", collab=stand_in, seed=seed)
                per_seed[seed] = evaluate_semantic(run_copy, seed, users, ranking)
            about = f" ({', '.join(args.overrides)})" if args.overrides else ""
            row(f"CEMG, semantic generator{about}, new items added (collab stand-in: {stand_in}{ranked_by})", per_seed)
    if "content" in args.rows:
        row("content-only reference: nearest item to the last one by [text; image] vectors",
            {seeds[0]: evaluate_content(semantic_run, seeds[0], users, work / "new_items.jsonl")})
    if "hybrid" in args.rows:
        hybrid_run = train(work, "hybrid", seeds, args.threads)
        result["leak_checks"]["hybrid"] = check_no_leak(hybrid_run, new_keys, seeds, work / "interactions.csv")
        row("CEMG ids, hybrid generator (cannot hold new items)",
            {seed: evaluate_hybrid(hybrid_run, seed, users) for seed in seeds})
    if "sasrec" in args.rows:
        per_seed = {}
        for seed in seeds:
            folder = work / f"sasrec-{seed}" / "baselines" / "sasrec"
            if not (folder / "model.pt").exists():
                folder = train_sasrec(work, seed, args.threads)
            per_seed[seed] = evaluate_sasrec(folder, semantic_run or work / "run-semantic", users)
        row("SASRec (cannot hold new items)", per_seed)
    result["minutes"] = round((time.time() - started) / 60, 1)
    out = args.out or ROOT / "bench" / "results" / f"new_items_{name}.json"
    if out.is_file():  # rows measured by an earlier invocation (e.g. SASRec with its own seeds) stay
        earlier = json.loads(out.read_text(encoding="utf-8"))
        if (earlier.get("split_seed"), earlier.get("fraction")) == (args.split_seed, args.fraction):
            for label, old_row in earlier.get("rows", {}).items():
                per_seed = {**old_row["per_seed"], **result["rows"].get(label, {}).get("per_seed", {})}
                per_seed = {str(k): v for k, v in sorted(per_seed.items(), key=lambda kv: int(kv[0]))}
                result["rows"][label] = {"per_seed": per_seed, **mean_std(list(per_seed.values()))}
            result["leak_checks"] = {**earlier.get("leak_checks", {}), **result["leak_checks"]}
            result["commands"] = [*earlier.get("commands", [earlier.get("command")]), result["command"]]
    atomic_write_text(out, json.dumps(result, indent=2))
    print(markdown(result))
    print(f"wrote {out}")


def markdown(result: dict) -> str:
    """The new-item table: one row per model, mean ± std over its seeds."""
    split = result["split"]
    lines = [f"{split['new_items']:,} of {split['items']:,} items new (split seed {result['split_seed']}); "
             f"{split['evaluated_users']:,} test users whose target is one of them.", "",
             "| model | seeds | HR@5 | HR@10 | NDCG@5 | NDCG@10 |", "|---|---|---|---|---|---|"]
    for label, row in result["rows"].items():
        cells = []
        for metric in ("HR@5", "HR@10", "NDCG@5", "NDCG@10"):
            value = row[metric]
            cells.append(f"{value['mean']:.4f}" + (f" ± {value['std']:.4f}" if value["std"] is not None else ""))
        lines.append(f"| {label} | {', '.join(map(str, row['per_seed']))} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
