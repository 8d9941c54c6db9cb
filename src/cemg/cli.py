"""The `cemg` command: wires stages together, nothing more (each command calls one stage's entry point)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from cemg.config import CEMGConfig, ConfigError, load_config

# OpenMP threads that spin at barriers lose their time slices on a shared or oversubscribed CPU
# (measured 5.9-9.6 s vs 1.8 s per SASRec step, bench/baselines_beauty.py); set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

app = typer.Typer(help="CEMG: collaborative-enhanced multimodal generative recommendation.", no_args_is_help=True)
data_app = typer.Typer(help="Datasets: statistics, download.", no_args_is_help=True)
app.add_typer(data_app, name="data")
ids_app = typer.Typer(help="Semantic ids in the LC-Rec / LETTER index.json format: export, check.",
                      no_args_is_help=True)
app.add_typer(ids_app, name="ids")
items_app = typer.Typer(help="The catalogue of a trained run: add items without retraining.", no_args_is_help=True)
app.add_typer(items_app, name="items")
console = Console(stderr=True)

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config file (see configs/).")
SetOpt = typer.Option(None, "--set", "-s", help="Override a config value: section.key=value (repeatable).")


def _quiet_switch(quiet: bool) -> bool:
    # tqdm binds TQDM_DISABLE into its defaults when it is first imported, and huggingface_hub
    # reads HF_HUB_DISABLE_PROGRESS_BARS likewise (transformers' own bars follow it), so these
    # must be set before any stage module loads. Commands import their stages at the top of their
    # body; this callback runs earlier, while the command line is parsed (is_eager: before the
    # other options' callbacks too).
    if quiet:
        os.environ["TQDM_DISABLE"] = "1"
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    return quiet


QuietOpt = typer.Option(False, "--quiet", "-q", help="Only warnings and results; no progress bars.",
                        callback=_quiet_switch, is_eager=True)


class UserError(Exception):
    """An error the user can fix; printed as one line without a traceback."""


def _config(config: Optional[Path], overrides: Optional[list[str]], quiet: bool = False) -> CEMGConfig:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    return load_config(config, overrides)


def main() -> None:
    """Entry point that turns known errors into a one-line message and exit code 2."""
    from cemg.data.errors import DataError

    try:
        app(standalone_mode=False)
    except (ConfigError, DataError, UserError, FileNotFoundError) as err:
        console.print(f"[red]error:[/red] {err}")
        raise SystemExit(2) from None
    except typer.Exit as done:
        raise SystemExit(done.exit_code) from None
    except typer.Abort:
        raise SystemExit(1) from None


# --- data -------------------------------------------------------------------------------------


@data_app.command("stats")
def data_stats(config: Optional[Path] = ConfigOpt, set_: Optional[list[str]] = SetOpt, quiet: bool = QuietOpt) -> None:
    """Print the paper's Table 1 columns for the configured dataset (after k-core filtering)."""
    from cemg.data.load import load_dataset

    cfg = _config(config, set_, quiet)
    stats = load_dataset(cfg.data, seed=cfg.seed, cache_dir=cfg.cache_dir).stats()
    print(f"dataset       {cfg.data.name}")
    print(f"#users        {stats['users']:,}")
    print(f"#items        {stats['items']:,}")
    print(f"#interactions {stats['interactions']:,}")
    print(f"avg length    {stats['avg_length']:.1f}")
    print(f"sparsity      {stats['sparsity'] * 100:.2f}%")


@data_app.command("download")
def data_download(
    name: str = typer.Argument(..., help="Amazon 2014 category as S3-Rec names it: Beauty, Sports_and_Outdoors, Toys_and_Games."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default: data/NAME)."),
    s3rec_url: Optional[str] = typer.Option(None, help="Base URL holding NAME.txt (default: the S3-Rec repository)."),
    meta_url: Optional[str] = typer.Option(None, help="Base URL holding meta_NAME.json.gz (default: McAuley 2014 at SNAP)."),
    datamaps_url: Optional[str] = typer.Option(None, help="URL of the P5 datamaps.json (S3-Rec id -> ASIN) for NAME."),
    images: bool = typer.Option(True, "--images/--no-images", help="Also fetch the item images."),
    workers: int = typer.Option(8, help="Concurrent image downloads."),
    retries: int = typer.Option(3, help="Attempts per file before it counts as failed."),
    quiet: bool = QuietOpt,
) -> None:
    """Fetch a category's sequences, item metadata and images (resumable, verified); writes items.jsonl.gz and data.yaml."""
    from cemg.data.download import Sources, download_amazon

    _config(None, None, quiet)
    defaults = Sources()
    sources = Sources(s3rec_url or defaults.s3rec_base, meta_url or defaults.meta_base, datamaps_url)
    report = download_amazon(name, out or Path("data") / name, sources, images=images, workers=workers, retries=retries)
    print(f"{report.items:,} items ({report.items_with_metadata:,} with metadata) in {report.out_dir}")
    print(f"images: {report.images_ok:,} ok, {report.images_no_url:,} without URL, "
          f"{report.images_missing:,} missing, {report.images_corrupt:,} corrupt")
    print(f"config: {Path(report.out_dir) / 'data.yaml'}")


# --- features (and the collaborative embeddings beside them) ----------------------------------


@app.command("encode")
def encode(
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    skip_text: bool = typer.Option(False, "--skip-text", help="Do not encode item text."),
    skip_image: bool = typer.Option(False, "--skip-image", help="Do not encode item images."),
    skip_collab: bool = typer.Option(False, "--skip-collab", help="Do not train LightGCN."),
    force: bool = typer.Option(False, "--force", help="Recompute even when the saved artifacts are up to date."),
    quiet: bool = QuietOpt,
) -> None:
    """Encode item text and images (PCA to d) into RUN_DIR/features and train LightGCN into RUN_DIR/collab."""
    from cemg.features.encoded import EncoderUnavailable
    from cemg.features.pca import PCADimensionError
    from cemg.pipeline import run_pipeline

    cfg = _config(config, set_, quiet)
    switches = {
        "use_text": cfg.features.use_text and not skip_text,
        "use_image": cfg.features.use_image and not skip_image,
    }
    cfg = cfg.model_copy(update={"features": cfg.features.model_copy(update=switches)})
    try:
        result = run_pipeline(
            cfg, stop_after="features" if skip_collab else "collab",
            force=("features", "collab") if force else (),
        )
    except (EncoderUnavailable, PCADimensionError) as err:
        raise UserError(str(err)) from None
    features = result.artifacts["features"]
    for name in ("text", "image"):
        part = features.info.get(name, {})
        if "pca" in part:
            print(f"{name:6s} {part['model']}: {part['present']:,}/{part['items']:,} items, "
                  f"{part['raw_dim']} -> {part['pca']['dim']} dims, "
                  f"explained variance {part['pca']['explained_variance']:.3f}, {part['seconds']:.1f} s")
        else:
            print(f"{name:6s} skipped: {part.get('skipped', '')}")
    if "collab" in result.artifacts:
        info = result.artifacts["collab"].info
        print(f"collab LightGCN: valid Recall@{cfg.collab.valid_k} {info.get('best_valid_recall', float('nan')):.4f} "
              f"(popularity {info.get('pop_valid_recall', float('nan')):.4f})")
    _print_stage_times(result)
    print(f"artifacts in {result.run_dir}")


# --- tokenizer --------------------------------------------------------------------------------


@app.command("tokenize")
def tokenize(
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    force: bool = typer.Option(False, "--force", help="Rebuild even when RUN_DIR/tokenizer is up to date."),
    quiet: bool = QuietOpt,
) -> None:
    """Fuse item features with collaborative embeddings, train the RQ-VAE, write semantic ids to RUN_DIR/tokenizer."""
    from cemg.pipeline import run_pipeline

    cfg = _config(config, set_, quiet)
    try:
        result = run_pipeline(cfg, stop_after="tokenizer", force=("tokenizer",) if force else ())
    except ValueError as err:
        raise UserError(str(err)) from None
    report = result.artifacts["tokenizer"].report
    if "source" in report:
        print(f"semantic ids read from {report['source']['ids_file']} (tokenizer.ids_file); nothing trained")
    for level in report["levels"]:
        error = level.get("relative_latent_error")  # absent for ids read from a file
        size = report["semantic_ids"]["codebook_sizes"][level["level"] - 1]
        print(f"level {level['level']}: {level['used_codes']}/{size} codes used, perplexity {level['perplexity']:.1f}"
              + ("" if error is None else f", relative latent error {error:.3f}"))
    col = report["collisions"]
    print(f"collisions before the fix: {100 * col['rate_before_fix']:.2f}% of items "
          f"(largest group {col['max_group_size']}); ids have {report['semantic_ids']['levels']} levels")
    if "mean_alpha_text" in report.get("alphas", {}):
        print(f"mean alpha: image {report['alphas']['mean_alpha_image']:.3f}, text {report['alphas']['mean_alpha_text']:.3f}")
    _print_stage_times(result)
    print(f"tokenizer: {report['n_items']:,} items in {result.run_dir / 'tokenizer'}")


# --- semantic ids in and out (LC-Rec / LETTER index.json) ------------------------------------


@ids_app.command("export")
def ids_export(
    run_dir: Path = typer.Argument(..., help="A run folder with a tokenizer stage (e.g. runs/beauty)."),
    out: Path = typer.Option(..., "--out", "-o", help="index.json file to write (gzip-compressed if it ends in .gz)."),
    item_keys: bool = typer.Option(False, "--item-keys",
                                   help="Key items by their dataset keys instead of their index 0..n-1 (the format's "
                                        "convention, which LC-Rec and LETTER read)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="The ids of this seed of a `cemg run --seeds` run "
                                                            "(default: the config's seed)."),
    quiet: bool = QuietOpt,
) -> None:
    """Write a run's semantic ids as an LC-Rec / LETTER index.json file: {"0": ["<a_12>", "<b_3>", ...], ...}."""
    from cemg.data.dataset import InteractionDataset
    from cemg.run_folder import RunFolder
    from cemg.tokenizer.build import IDS_DIR
    from cemg.tokenizer.index_json import write_index_json
    from cemg.tokenizer.semantic_ids import SemanticIds

    _config(None, None, quiet)
    run = RunFolder.open(run_dir, seed)
    folder = run.stage("tokenizer") / IDS_DIR
    if not folder.is_dir():
        raise UserError(f"{run.stage('tokenizer')}: no semantic ids; run `cemg tokenize` for this run first")
    ids = SemanticIds.load(folder)
    keys = None
    if run.has("data"):
        keys = InteractionDataset.load(run.stage("data")).items.keys
    elif item_keys:
        raise UserError(f"{run.stage('data')}: missing, so --item-keys has no keys to write")
    write_index_json(ids, out, keys if item_keys else None)
    print(f"wrote {ids.n_items:,} items x {ids.levels} levels (codebook sizes {ids.codebook_sizes}) to {out}")
    if keys is not None and not item_keys:
        print(f"key k is item k of {run.stage('data')}: key 0 = item {keys[0]!r}, "
              f"key {len(keys) - 1} = item {keys[-1]!r}")


@ids_app.command("check")
def ids_check(
    file: Path = typer.Argument(..., help="An index.json file (.gz allowed)."),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Read an index.json file: items, levels, codebook sizes, collisions.

    With --config, map it onto that dataset's items as `tokenizer.ids_file` does (key k = item k).
    """
    from cemg.tokenizer.index_json import read_index_entries, read_index_json

    cfg = _config(config, set_, quiet)
    if config is None:
        keys = list(read_index_entries(file))
        ids, report = read_index_json(file, keys, key_map={k: k for k in keys})
    else:
        from cemg.data.load import load_dataset

        keys = load_dataset(cfg.data, seed=cfg.seed, cache_dir=cfg.cache_dir).items.keys
        ids, report = read_index_json(file, keys)
    learned = len(report["levels"])
    print(f"{file}: {report['source']['entries']:,} entries, {learned} levels, "
          f"codebook sizes {report['semantic_ids']['codebook_sizes'][:learned]}")
    for level in report["levels"]:
        print(f"level {level['level']}: {level['used_codes']} codes used, perplexity {level['perplexity']:.1f}")
    col = report["collisions"]
    fix = f"-> a disambiguation level of {ids.codebook_sizes[-1]} codes" if col["extra_level"] else "-> no extra level"
    print(f"collisions: {col['colliding_items']:,} items in {col['groups']:,} groups share all codes "
          f"(largest group {col['max_group_size']}) {fix}")
    if config is not None:
        print(f"mapped onto the {len(keys):,} items of {cfg.data.name}: key 0 = item {keys[0]!r}, "
              f"key {len(keys) - 1} = item {keys[-1]!r}")


# --- baselines --------------------------------------------------------------------------------


@app.command("baseline")
def baseline(
    name: str = typer.Argument(..., help="pop, sasrec or gru4rec"),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Train a sequential baseline on the training split, select it on validation, score valid and test."""
    cfg = _config(config, set_, quiet)
    from cemg.baselines import BASELINES, SequentialRecommender, train_baseline
    from cemg.data.load import load_dataset
    from cemg.data.split import leave_one_out
    from cemg.evaluation.protocol import evaluate

    if name not in BASELINES:
        raise UserError(f"unknown baseline {name!r}; choose one of {', '.join(BASELINES)}")
    dataset = load_dataset(cfg.data, seed=cfg.seed, cache_dir=cfg.cache_dir)
    split = leave_one_out(dataset, cfg.data.max_history)
    model, report = train_baseline(name, split, cfg)
    folder = cfg.run_dir / "baselines" / name
    results = {part: evaluate(model, split, part, cfg.evaluation) for part in ("valid", "test")}
    for part, result in results.items():
        result.save(folder, part)
    if report is not None:
        report.save(folder / "training.json")
    if isinstance(model, SequentialRecommender):
        model.save(folder)
    names = list(results["test"].metrics)
    print(f"{name} on {cfg.data.name}" + "".join(f"  {m:>8}" for m in names))
    for part, result in results.items():
        print(f"{part:<10} all " + "".join(f"  {result.metrics[m]:8.4f}" for m in names))
        print(f"{part:<10} cold" + "".join(f"  {result.cold_start[m]:8.4f}" for m in names)
              + f"  ({result.n_cold:,} of {result.n_users:,} users)")
    print(f"results in {folder}")


# --- the whole pipeline ------------------------------------------------------------------------


def _print_generator(run) -> None:
    """Which model produced the numbers that follow: the generator's mode, backbone and size."""
    generator = run.artifacts.get("generator")
    info = getattr(generator, "info", None) or {}
    if info:
        from cemg.generator.recommender import describe_generator

        reads_content = getattr(getattr(generator, "model", None), "content_in", None) is not None
        prior = (getattr(run.artifacts.get("ranker"), "info", None) or {}).get("content_prior") or {}
        print("generator: " + describe_generator(info, reads_content, prior))


def _print_results(run, k_names: list[str] | None = None) -> None:
    evaluation = run.artifacts["evaluation"]
    test = evaluation.results["test"]
    names = k_names or list(test.metrics)
    _print_generator(run)
    print(f"{'':<16}" + "".join(f"{m:>9}" for m in names))
    for part, result in evaluation.results.items():
        print(f"{part + ' (all)':<16}" + "".join(f"{result.metrics[m]:9.4f}" for m in names))
        print(f"{part + ' (cold)':<16}" + "".join(f"{result.cold_start[m]:9.4f}" for m in names)
              + f"   {result.n_cold:,} of {result.n_users:,} users")


def _print_spread(record: dict) -> None:
    """Mean ± std over seeds of every metric (RUN_DIR/seeds.json), then the per-seed test values."""
    results = record["results"]
    names = list(results["test"]["all"])
    print(f"over seeds {', '.join(map(str, record['seeds']))}: mean ± std")
    print(f"{'':<16}" + "".join(f"{m:>18}" for m in names))
    for part, entry in results.items():
        for subset, label in (("all", "all"), ("cold_start", "cold")):
            cells = []
            for m in names:
                value = entry[subset][m]
                cells.append(f"{value['mean']:.4f}" + ("" if value["std"] is None else f" ± {value['std']:.4f}"))
            print(f"{f'{part} ({label})':<16}" + "".join(f"{c:>18}" for c in cells))
    for seed in record["seeds"]:
        test = results["test"]["all"]
        print(f"{f'test, seed {seed}':<16}" + "".join(f"{test[m]['per_seed'][str(seed)]:18.4f}" for m in names))


def _print_stage_times(run) -> None:
    parts = []
    for stage, seconds in run.seconds.items():
        parts.append(f"{stage} {seconds:.1f}s" + (" (reused)" if stage in run.reused else ""))
    print("stages: " + ", ".join(parts))


@app.command("run")
def run(
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    until: str = typer.Option("evaluation", "--until", help="Last stage: data, features, collab, tokenizer, generator, evaluation."),
    force: Optional[list[str]] = typer.Option(None, "--force", help="Rebuild this stage even if up to date (repeatable)."),
    seeds: Optional[str] = typer.Option(
        None, "--seeds", help="Comma-separated seeds, e.g. 42,43,44: data, features and LightGCN are built once "
                              "(with the config's seed), the tokenizer, generator and evaluation once per seed; "
                              "writes RUN_DIR/seeds.json (mean, std and per-seed values of every metric)."),
    quiet: bool = QuietOpt,
) -> None:
    """Run data -> encoders -> collab -> tokenizer -> generator -> evaluation, reusing cached stages."""
    from cemg.pipeline import STAGES, parse_seeds, run_pipeline, run_seeds

    cfg = _config(config, set_, quiet)
    if until not in STAGES:
        raise UserError(f"--until {until!r}: choose one of {', '.join(STAGES)}")
    if seeds is not None:
        try:
            many = run_seeds(cfg, parse_seeds(seeds), stop_after=until, force=tuple(force or ()))
        except ValueError as err:
            raise UserError(f"--seeds: {err}") from None
        for seed, result in many.runs.items():
            print(f"seed {seed}: ", end="")
            _print_stage_times(result)
        if many.record is not None:
            _print_generator(next(iter(many.runs.values())))
            _print_spread(many.record)
            print(f"seeds summary: {many.run_dir / 'seeds.json'}")
        print(f"run directory: {many.run_dir}")
        return
    result = run_pipeline(cfg, stop_after=until, force=tuple(force or ()))
    _print_stage_times(result)
    if "evaluation" in result.artifacts:
        _print_results(result)
    print(f"run directory: {result.run_dir}")


@app.command("evaluate")
def evaluate_cmd(
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Score the run's generator on validation and test (full catalogue, cold-start subset)."""
    from cemg.pipeline import run_pipeline

    cfg = _config(config, set_, quiet)
    result = run_pipeline(cfg, stop_after="evaluation")
    _print_results(result)
    print(f"per-user results in {result.run_dir / 'evaluation'}")


def _demo_config_path() -> Path:
    from importlib.resources import files

    return Path(str(files("cemg") / "configs" / "demo.yaml"))


@app.command("demo")
def demo(
    set_: Optional[list[str]] = SetOpt,
    quiet: bool = QuietOpt,
) -> None:
    """The whole pipeline on the embedded synthetic demo data: results table and example recommendations."""
    from cemg.baselines.popularity import Popularity
    from cemg.evaluation.protocol import evaluate
    from cemg.pipeline import run_pipeline

    cfg = _config(_demo_config_path(), set_, quiet)
    result = run_pipeline(cfg)
    dataset, split = result.artifacts["data"], result.artifacts["split"]
    stats = dataset.stats()
    print(f"demo data: {stats['users']:,} users, {stats['items']:,} items, "
          f"{stats['interactions']:,} interactions, avg length {stats['avg_length']:.1f}")
    _print_stage_times(result)
    print("\nCEMG (generative, semantic ids):")
    _print_results(result)
    pop = evaluate(Popularity.fit(split), split, "test", cfg.evaluation)
    print("popularity (test): " + ", ".join(f"{m} {v:.4f}" for m, v in pop.metrics.items()))
    _print_examples(result, n_users=3, k=5)
    print(f"\nrun directory: {result.run_dir}")


def _print_examples(result, n_users: int, k: int) -> None:
    dataset, split = result.artifacts["data"], result.artifacts["split"]
    generator = result.artifacts["ranker"]
    score_name = "score" if generator is not result.artifacts["generator"] else "log-prob"  # the prior adds to it
    test = split.test
    items = dataset.items
    recs, scores = generator.recommend_with_scores(test.histories[:n_users], k, test.histories[:n_users])
    for row in range(min(n_users, len(test))):
        user = dataset.user_keys[int(test.users[row])]
        print(f"\nuser {user}: last items " + " | ".join(items.title(int(i)) for i in test.histories[row][-3:]))
        print(f"  held-out next item: {items.title(int(test.targets[row]))}")
        for rank, (item, score) in enumerate(zip(recs[row], scores[row]), 1):
            if item >= 0:
                print(f"  {rank}. {items.title(int(item))}  ({score_name} {score:.2f})")


@app.command("recommend")
def recommend(
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    user: Optional[str] = typer.Option(None, "--user", help="A user key of the dataset: recommend after their full history."),
    history: Optional[str] = typer.Option(None, "--history", help="Comma-separated item keys, oldest first."),
    k: int = typer.Option(10, "--k", help="How many items."),
    quiet: bool = QuietOpt,
) -> None:
    """Recommend the next items for a dataset user or an explicit history, with titles."""
    import numpy as np

    from cemg.pipeline import run_pipeline

    cfg = _config(config, set_, quiet)
    if (user is None) == (history is None):
        raise UserError("give exactly one of --user KEY or --history KEY,KEY,...")
    result = run_pipeline(cfg, stop_after="generator")
    dataset, generator = result.artifacts["data"], result.artifacts["ranker"]
    if user is not None:
        try:
            seq = dataset.sequences[dataset.user_keys.index(user)]
        except ValueError:
            raise UserError(f"--user {user!r}: no such user in {cfg.data.name}") from None
    else:
        index = {key: i for i, key in enumerate(dataset.items.keys)}
        keys = [key.strip() for key in history.split(",") if key.strip()]
        unknown = [key for key in keys if key not in index]
        if unknown or not keys:
            raise UserError(f"--history: unknown item keys {unknown[:5]}" if unknown else "--history is empty")
        seq = np.array([index[key] for key in keys], dtype=np.int64)
    hist = seq[-cfg.data.max_history :]
    recs, scores = generator.recommend_with_scores([hist], k, [seq])
    for rank, (item, score) in enumerate(zip(recs[0], scores[0]), 1):
        if item >= 0:
            print(f"{rank:>3}. {dataset.items.keys[item]}  {dataset.items.title(int(item))}  ({score:.2f})")


# --- using a finished run --------------------------------------------------------------------------


@app.command("serve")
def serve(
    run_dir: Path = typer.Argument(..., help="A finished run folder (e.g. runs/demo after `cemg demo`)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (0.0.0.0 for all)."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda, or auto."),
    batching: bool = typer.Option(True, "--batching/--no-batching",
                                  help="Score concurrent /recommend requests together in one generator call."),
    max_batch: int = typer.Option(64, "--max-batch", min=1, help="Most requests in one generator call."),
    max_wait_ms: float = typer.Option(0.0, "--max-wait-ms", min=0.0, max=1000.0,
                                      help="How long a request that finds the generator idle waits for "
                                           "others (ms); 0: batch only what queues while it is busy."),
    quiet: bool = QuietOpt,
) -> None:
    """Serve the run's generator over HTTP: POST /recommend, GET /items/{id}, /health, /metrics, /docs."""
    import uvicorn

    from cemg.api import Recommender
    from cemg.serve.app import create_app
    from cemg.serve.batching import BatchingConfig

    _config(None, None, quiet)
    batching_cfg = BatchingConfig(batching, max_batch, max_wait_ms)
    recommender = Recommender.load(run_dir, device=device)
    how = f"batches of up to {max_batch}, {max_wait_ms:g} ms wait" if batching else "no batching"
    print(f"serving {run_dir} ({recommender.n_items:,} items) on http://{host}:{port}  ({how}; OpenAPI: /docs)")
    uvicorn.run(create_app(recommender, batching_cfg), host=host, port=port,
                log_level="warning" if quiet else "info")


@items_app.command("add")
def items_add(
    run_dir: Path = typer.Argument(..., help="A finished run folder (semantic-mode generator)."),
    items: Path = typer.Option(..., "--items", help="Item table (jsonl, csv/tsv, parquet, RecBole .item), read "
                                                     "with the run's key column and text fields."),
    images: Optional[Path] = typer.Option(None, "--images", help="Folder or .tar holding the image refs "
                                                                  "(default: the run's image root)."),
    collab: str = typer.Option("content", "--collab", help="Collaborative stand-in: content (ridge prediction "
                                                          "from text and image) or zeros."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Which seed of a run made with --seeds "
                                                           "(default: the config's)."),
    device: str = typer.Option("cpu", "--device", help="Device of the text and image encoders."),
    quiet: bool = QuietOpt,
) -> None:
    """Give new items semantic ids with the run's trained encoders, PCA, fusion and RQ-VAE, and add
    them to its catalogue; `cemg serve` picks them up on POST /admin/reload (docs/own-data.md)."""
    from cemg.added_items import AddItemsRefused, add_items

    _config(None, None, quiet)
    try:
        summary = add_items(run_dir, items, images, collab, seed, device)
    except AddItemsRefused as err:
        raise UserError(str(err)) from None
    for row in summary.added:
        print(f"{row.key}\t{row.title}\tcodes {row.codes}\timage {row.image}")
    print(f"added {len(summary.added)} items ({summary.items_before:,} -> {summary.items_after:,}; collab stand-in "
          f"{summary.collab}) into {summary.folder}")
    if summary.images_not_found:
        print(f"image not found for {', '.join(summary.images_not_found)}: coded from text alone")


@app.command("compare")
def compare(
    run_a: Path = typer.Argument(..., help="Run folder of configuration A (ideally made with --seeds)."),
    run_b: Path = typer.Argument(..., help="Run folder of configuration B."),
    metric: str = typer.Option("NDCG@10", "--metric", help="The metric the verdict is about (all are tabulated)."),
    part: str = typer.Option("test", "--part", help="valid or test."),
    out: Optional[Path] = typer.Option(None, "--json", help="Also write every comparison to this JSON file."),
    quiet: bool = QuietOpt,
) -> None:
    """Compare two configurations over seeds (paired t-test) and users (paired by user); say when the
    difference is within noise."""
    import json

    from cemg.artifacts import atomic_write_text
    from cemg.evaluation.seeds import compare_seeds
    from cemg.run_folder import seed_evaluations

    _config(None, None, quiet)
    if part not in ("valid", "test"):
        raise UserError(f"--part {part!r}: choose valid or test")
    try:
        # Read once: cemg.api.compare_runs does the same for one metric.
        a = {seed: e.results for seed, e in seed_evaluations(run_a).items()}
        b = {seed: e.results for seed, e in seed_evaluations(run_b).items()}
        names = list(next(iter(a.values()))[part].metrics)
        if metric not in names:
            raise UserError(f"--metric {metric!r}: choose one of {', '.join(names)}")
        rows = [compare_seeds(a, b, name, part, subset) for subset in ("all", "cold_start") for name in names]
    except ValueError as err:
        raise UserError(str(err)) from None
    print(f"A: {run_a}\nB: {run_b}")
    print(f"{part + ' ' + 'metric':<22}{'A':>18}{'B':>18}{'A - B':>9}{'p seeds':>9}{'p users':>9}  verdict")
    for c in rows:
        mean_std = lambda m, s: f"{m:.4f}" + ("" if s is None else f" ± {s:.4f}")  # noqa: E731
        p_seeds = "-" if c.seed_test is None else f"{c.seed_test['pvalue']:.3g}"
        p_users = "-" if c.user_test is None else f"{c.user_test['t_pvalue']:.3g}"
        label = f"{c.metric}" + (" (cold)" if c.subset == "cold_start" else "")
        print(f"{label:<22}{mean_std(c.mean_a, c.std_a):>18}{mean_std(c.mean_b, c.std_b):>18}{c.difference:+9.4f}"
              f"{p_seeds:>9}{p_users:>9}  {c.label}")
    main = next(c for c in rows if c.metric == metric and c.subset == "all")
    print("\n" + main.verdict)
    for note in main.notes:
        print(f"  note: {note}")
    if out is not None:
        atomic_write_text(out, json.dumps({"run_a": str(run_a), "run_b": str(run_b),
                                           "comparisons": [c.to_dict() for c in rows]}, indent=2))
        print(f"comparisons: {out}")


@app.command("report")
def report(
    run_dir: Path = typer.Argument(..., help="A run folder (stages that are missing are reported as such)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default: RUN_DIR/report)."),
    examples: int = typer.Option(3, "--examples", help="Test users shown with their recommendations."),
    quiet: bool = QuietOpt,
) -> None:
    """Write RUN_DIR/report/report.html and report.md: data, curves, codebooks, fusion weights, results, examples."""
    _config(None, None, quiet)
    from cemg.report import write_report

    files = write_report(run_dir, out, n_examples=examples)
    print(f"report: {files.html}")
    print(f"        {files.markdown} ({len(files.figures)} figures)")
