"""The `cemg` command: wires stages together, nothing more (each command calls one stage's entry point)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from cemg.config import CEMGConfig, ConfigError, load_config

app = typer.Typer(help="CEMG: collaborative-enhanced multimodal generative recommendation.", no_args_is_help=True)
data_app = typer.Typer(help="Datasets: statistics, download.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console(stderr=True)

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config file (see configs/).")
SetOpt = typer.Option(None, "--set", "-s", help="Override a config value: section.key=value (repeatable).")
QuietOpt = typer.Option(False, "--quiet", "-q", help="Only warnings and results; no progress bars.")


class UserError(Exception):
    """An error the user can fix; printed as one line without a traceback."""


def _config(config: Optional[Path], overrides: Optional[list[str]], quiet: bool = False) -> CEMGConfig:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if quiet:
        import os

        os.environ["TQDM_DISABLE"] = "1"
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
    from cemg.artifacts import is_fresh
    from cemg.data.load import load_dataset
    from cemg.features.encode import encode_items, features_inputs_hash, save_item_features
    from cemg.features.encoded import EncoderUnavailable
    from cemg.features.pca import PCADimensionError

    cfg = _config(config, set_, quiet)
    switches = {
        "use_text": cfg.features.use_text and not skip_text,
        "use_image": cfg.features.use_image and not skip_image,
    }
    cfg = cfg.model_copy(update={"features": cfg.features.model_copy(update=switches)})
    dataset = load_dataset(cfg.data, seed=cfg.seed, cache_dir=cfg.cache_dir)
    if cfg.features.use_text or cfg.features.use_image:
        folder = cfg.run_dir / "features"
        inputs = features_inputs_hash(dataset, cfg)
        if is_fresh(folder, inputs) and not force:
            print(f"features: up to date in {folder}")
        else:
            try:
                features = encode_items(dataset, cfg)
            except (EncoderUnavailable, PCADimensionError) as err:
                raise UserError(str(err)) from None
            save_item_features(features, folder, inputs, cfg)
            for name in ("text", "image"):
                part = features.info.get(name, {})
                if "pca" in part:
                    print(f"{name:6s} {part['model']}: {part['present']:,}/{part['items']:,} items, "
                          f"{part['raw_dim']} -> {part['pca']['dim']} dims, "
                          f"explained variance {part['pca']['explained_variance']:.3f}, {part['seconds']:.1f} s")
                else:
                    print(f"{name:6s} skipped: {part.get('skipped', '')}")
            print(f"features: {folder} (peak memory {features.info['peak_rss_mb']:,.0f} MB)")
    if not skip_collab:
        _encode_collab(cfg, dataset, force)


def _encode_collab(cfg: CEMGConfig, dataset, force: bool) -> None:
    import hashlib

    import numpy as np

    from cemg.artifacts import atomic_dir, fingerprint, is_fresh, write_manifest
    from cemg.config import resolve_device
    from cemg.data.split import leave_one_out

    try:
        from cemg.collab.lightgcn import train_lightgcn
    except ImportError as err:
        raise UserError(f"the collab stage is not available ({err}); rerun with --skip-collab") from None
    split = leave_one_out(dataset, cfg.data.max_history)
    digest = hashlib.sha256()
    for seq in split.train:
        digest.update(np.asarray(seq, np.int64).tobytes() + b"|")
    inputs = fingerprint("collab", digest.hexdigest(), dataset.n_items, cfg.collab.model_dump(), cfg.seed)
    folder = cfg.run_dir / "collab"
    if is_fresh(folder, inputs) and not force:
        print(f"collab: up to date in {folder}")
        return
    embeddings = train_lightgcn(split, cfg.collab, cfg.seed, resolve_device(cfg.device))
    with atomic_dir(folder) as tmp:
        embeddings.save(tmp)
        write_manifest(tmp, "collab", inputs, cfg.collab.model_dump())
    print(f"collab: {embeddings.items.shape[0]:,} item embeddings of dim {embeddings.items.shape[1]} in {folder}")


# --- tokenizer --------------------------------------------------------------------------------


@app.command("tokenize")
def tokenize(
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    force: bool = typer.Option(False, "--force", help="Rebuild even when RUN_DIR/tokenizer is up to date."),
    quiet: bool = QuietOpt,
) -> None:
    """Fuse RUN_DIR/features with RUN_DIR/collab, train the RQ-VAE and write semantic ids to RUN_DIR/tokenizer."""
    from cemg.artifacts import atomic_dir, fingerprint, is_fresh, read_manifest, write_manifest
    from cemg.collab.artifact import CollabEmbeddings
    from cemg.config import resolve_device
    from cemg.features.artifact import ItemFeatures
    from cemg.tokenizer.build import build_tokenizer

    cfg = _config(config, set_, quiet)
    folders = {"features": cfg.run_dir / "features", "collab": cfg.run_dir / "collab"}
    needed = ["features", "collab"] if cfg.tokenizer.use_collab else ["features"]
    for name in needed:
        if read_manifest(folders[name]) is None:
            hint = " (or set tokenizer.use_collab=false)" if name == "collab" else ""
            raise UserError(f"{folders[name]}: no {name} artifact; run `cemg encode` first{hint}")
    features = ItemFeatures.load(folders["features"])
    collab = CollabEmbeddings.load(folders["collab"]) if cfg.tokenizer.use_collab else None
    # Same recipe as the pipeline runner, so either can reuse the other's tokenizer artifact.
    upstream = [(read_manifest(folders[name]) or {}).get("inputs_hash") for name in ("features", "collab")]
    inputs = fingerprint("tokenizer", *upstream, cfg.tokenizer.model_dump(mode="json"), cfg.seed)
    folder = cfg.run_dir / "tokenizer"
    if is_fresh(folder, inputs) and not force:
        print(f"tokenizer: up to date in {folder}")
        return
    try:
        artifact = build_tokenizer(features, collab, cfg.tokenizer, cfg.seed, resolve_device(cfg.device))
    except ValueError as err:
        raise UserError(str(err)) from None
    with atomic_dir(folder) as tmp:
        artifact.save(tmp)
        write_manifest(tmp, "tokenizer", inputs, cfg.tokenizer.model_dump(mode="json"),
                       seconds=artifact.report["training"]["seconds"])
    report = artifact.report
    for level in report["levels"]:
        print(f"level {level['level']}: {level['used_codes']}/{cfg.tokenizer.codebook_size} codes used, "
              f"perplexity {level['perplexity']:.1f}, relative latent error {level['relative_latent_error']:.3f}")
    col = report["collisions"]
    print(f"collisions before the fix: {100 * col['rate_before_fix']:.2f}% of items "
          f"(largest group {col['max_group_size']}); ids have {report['semantic_ids']['levels']} levels")
    if "mean_alpha_text" in report["alphas"]:
        print(f"mean alpha: image {report['alphas']['mean_alpha_image']:.3f}, text {report['alphas']['mean_alpha_text']:.3f}")
    print(f"tokenizer: {report['n_items']:,} items in {folder}")


# --- baselines --------------------------------------------------------------------------------


@app.command("baseline")
def baseline(
    name: str = typer.Argument(..., help="pop, sasrec or gru4rec"),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Train a sequential baseline on the training split, select it on validation, score valid and test."""
    cfg = _config(config, set_, quiet)  # before the imports: it sets the progress-bar switch tqdm reads
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
