"""Stage runner: data -> features -> collab -> tokenizer -> generator -> evaluation.

Each stage's artifact lives in `run_dir/<stage>/` with a manifest whose `inputs_hash` covers the
stage's config section, the seed and the hashes of the artifacts it reads. A rerun loads every stage
whose hash still matches and rebuilds from the first one that changed; artifacts are written
atomically, so an interrupted stage is simply run again, and its training resumes from the last
checkpoint in `run_dir/checkpoints/<stage>-<inputs hash>/` (removed once the artifact is written).

With seeds (`run_seeds`, `cemg run --seeds 42,43,44`) the shared stages (data, features, collab) are
built once with the config's seed and the seeded ones (tokenizer, generator, evaluation) once per
seed, each re-seeded; where each seed's folders are is cemg.run_folder's business. Every seed's stages
are cached and resumed exactly like a single run's.

Under torchrun (cemg.distributed) every rank runs this function: rank 0 alone builds and writes the
stages that do not scale out; the tokenizer and the generator train on every rank; the others wait
at a barrier and load what rank 0 wrote, so all ranks go on with the same artifacts.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cemg import distributed
from cemg.artifacts import (SOURCE_DIGESTS, atomic_dir, atomic_write_text, fingerprint, is_fresh, read_manifest, source_digest,
                            write_manifest)
from cemg.checkpoint import TrainingCheckpoint
from cemg.config import CEMGConfig, resolve_device
from cemg.evaluation.protocol import RunEvaluation, evaluate
from cemg.run_folder import (CONFIG_FILE, INFERENCE_ONLY, SEEDED_STAGES, SEEDS_FILE, SHARED_STAGES, STAGES, RunFolder,
                             write_seeds)

# RunEvaluation, STAGES and CONFIG_FILE are imported from here by older scripts; they live in
# cemg.evaluation.protocol and cemg.run_folder so that reading a run never needs the runner.
__all__ = ["CONFIG_FILE", "STAGES", "RunEvaluation", "RunResult", "SeedsResult", "run_pipeline", "run_seeds"]

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What a pipeline run produced, stage by stage."""

    run_dir: Path
    artifacts: dict[str, Any] = field(default_factory=dict)
    hashes: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)
    folder: RunFolder | None = None  # where the stages are; default: the run of the config's seed
    seed: int | None = None  # the seed of the seeded stages, when run by run_seeds

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        if self.folder is None:
            self.folder = RunFolder(self.run_dir)


def _data_source_digest(cfg: CEMGConfig) -> list[Any]:
    # By content, remembered by file stats in the cache folder: a dataset copied or restored
    # with new mtimes keeps every stage built on it (size and mtime alone rebuilt them all).
    memo = Path(cfg.cache_dir) / SOURCE_DIGESTS
    return [[str(path), source_digest(Path(path), memo)]
            for path in (cfg.data.path, cfg.data.items_path, cfg.data.image_root)
            if path is not None and Path(path).exists()]


def _stage(
    result: RunResult,
    name: str,
    inputs_hash: str,
    build: Callable[[], Any],
    load: Callable[[Path], Any],
    config: Any,
    force: bool = False,
    parallel: bool = False,
) -> Any:
    """Load the stage's artifact when fresh, else build and write it. `parallel` stages are built
    by every rank under torchrun; the others by rank 0 alone."""
    folder = result.folder.stage(name)
    result.hashes[name] = inputs_hash
    # Rank 0 decides: a slower rank checking after rank 0 wrote the folder would skip the barrier.
    if distributed.broadcast_object(not force and is_fresh(folder, inputs_hash)):
        log.info("%s: reusing %s", name, folder)
        artifact = load(folder)
        result.reused.append(name)
        result.seconds[name] = float((read_manifest(folder) or {}).get("seconds", 0.0))
    else:
        start = time.perf_counter()
        artifact = build() if parallel or distributed.is_main() else None
        seconds = time.perf_counter() - start
        if distributed.is_main():
            with atomic_dir(folder) as tmp:
                artifact.save(tmp)
                write_manifest(tmp, name, inputs_hash, config, seconds=seconds)
            log.info("%s: built in %.1fs, wrote %s", name, seconds, folder)
            checkpoints = result.folder.checkpoint(name, inputs_hash)
            shutil.rmtree(checkpoints, ignore_errors=True)
            if checkpoints.parent.is_dir() and not any(checkpoints.parent.iterdir()):
                checkpoints.parent.rmdir()
        distributed.barrier()
        if not distributed.is_main():
            artifact = load(folder)
        result.seconds[name] = seconds
    result.artifacts[name] = artifact
    return artifact


def run_pipeline(
    cfg: CEMGConfig, stop_after: str = "evaluation", force: tuple[str, ...] = (), seed: int | None = None
) -> RunResult:
    """Run (or resume) every stage up to and including `stop_after`; return the artifacts.

    `force` names stages to rebuild even when their artifact is up to date (later stages follow,
    since their inputs' hashes change only when the content does: a forced rebuild with the same
    seed reproduces the same artifact and the rest is reused).

    `seed` re-seeds the seeded stages (tokenizer, generator, evaluation) while the shared ones keep
    `cfg.seed`; a seed other than `cfg.seed` writes its seeded stages to their own folder
    (cemg.run_folder). Several seeds at once: `run_seeds`.
    """
    from cemg.data.dataset import InteractionDataset
    from cemg.data.load import load_dataset
    from cemg.data.split import leave_one_out

    if stop_after not in STAGES:
        raise ValueError(f"unknown stage {stop_after!r}; stages are {', '.join(STAGES)}")
    last = STAGES.index(stop_after)
    device = distributed.setup(resolve_device(cfg.device))
    seed = cfg.seed if seed is None else int(seed)
    result = RunResult(Path(cfg.run_dir), folder=RunFolder.of_seed(cfg.run_dir, seed, cfg.seed), seed=seed)
    dump = lambda section: section.model_dump(mode="json")  # noqa: E731

    def checkpoint(stage: str, inputs_hash: str, collective: bool = True) -> TrainingCheckpoint:
        folder = result.folder.checkpoint(stage, inputs_hash)
        return TrainingCheckpoint(folder, cfg.checkpoint_seconds, collective)

    if distributed.is_main():
        atomic_write_text(result.folder.config_file, yaml.safe_dump(dump(cfg), sort_keys=False))

    h_data = fingerprint("data", dump(cfg.data), cfg.seed, _data_source_digest(cfg))
    dataset = _stage(
        result, "data", h_data,
        lambda: load_dataset(cfg.data, seed=cfg.seed, cache_dir=cfg.cache_dir),
        InteractionDataset.load, dump(cfg.data), "data" in force,
    )
    split = leave_one_out(dataset, cfg.data.max_history)
    result.artifacts["split"] = split
    if last < STAGES.index("features"):
        return result

    from cemg.features.artifact import ItemFeatures
    from cemg.features.encode import encode_items, features_inputs_hash

    h_feat = features_inputs_hash(dataset, cfg)
    features = _stage(
        result, "features", h_feat, lambda: encode_items(dataset, cfg),
        ItemFeatures.load, dump(cfg.features), "features" in force,
    )

    if last < STAGES.index("collab"):
        return result
    collab, h_collab = None, None
    if cfg.tokenizer.use_collab or last == STAGES.index("collab"):
        from cemg.collab.artifact import CollabEmbeddings
        from cemg.collab.lightgcn import train_lightgcn

        h_collab = fingerprint("collab", h_data, dump(cfg.collab), cfg.seed)
        collab = _stage(
            result, "collab", h_collab,
            # LightGCN trains on rank 0 alone under torchrun: its checkpoint takes no collective step.
            lambda: train_lightgcn(split, cfg.collab, cfg.seed, device, checkpoint("collab", h_collab, False)),
            CollabEmbeddings.load, dump(cfg.collab), "collab" in force,
        )
    if last <= STAGES.index("collab"):
        return result
    # From here on every stage is seeded: it reads cfg.seed, which is now this run's seed (the
    # shared stages above, and config.yaml, keep the config's own).
    cfg = cfg.model_copy(update={"seed": seed})

    from cemg.tokenizer.build import TokenizerArtifact, build_tokenizer

    if cfg.tokenizer.ids_file is not None:
        # Published ids (LC-Rec / LETTER index.json): read, not trained, so only the item list and
        # the file's content decide them.
        from cemg.artifacts import file_digest
        from cemg.tokenizer.index_json import tokenizer_from_index_json

        ids_file = Path(cfg.tokenizer.ids_file)
        if not ids_file.is_file():
            raise FileNotFoundError(f"tokenizer.ids_file: {ids_file} not found")
        h_tok = fingerprint("tokenizer", h_data, "ids_file", file_digest(ids_file))
        build_tok = lambda: tokenizer_from_index_json(ids_file, dataset.items.keys)  # noqa: E731
    else:
        # Options added after tokenizers were trained are left out of the hash at their defaults, so
        # adding them did not invalidate those tokenizers.
        later = ({"ids_file"} | ({"collab_calibration", "collab_prior_weight"}
                                 if cfg.tokenizer.collab_calibration == "none" else set())
                 | ({"fusion"} if cfg.tokenizer.fusion == "attention" else set()))
        tok_section = cfg.tokenizer.model_dump(mode="json", exclude=later)
        h_tok = fingerprint("tokenizer", h_feat, h_collab, tok_section, cfg.seed)
        build_tok = lambda: build_tokenizer(  # noqa: E731
            features, collab, cfg.tokenizer, cfg.seed, device, checkpoint("tokenizer", h_tok))
    tokenizer = _stage(
        result, "tokenizer", h_tok, build_tok,
        TokenizerArtifact.load, dump(cfg.tokenizer), "tokenizer" in force, parallel=True,
    )
    if last <= STAGES.index("tokenizer"):
        return result

    from cemg.generator import backbone_family, load_generator

    # generator.t5_decoder is left out unless that family trains, and causal.content_features while
    # off: both were added after generators were trained, and adding them must not invalidate those.
    family = backbone_family(cfg.generator.backbone)
    reads_content = family == "causal" and cfg.generator.causal.content_features
    # generator.content_prior acts at inference only: the evaluation's hash holds it.
    later: dict[str, Any] = {key: True for key in INFERENCE_ONLY["generator"]}
    if family != "t5-decoder":
        later["t5_decoder"] = True
    if not cfg.generator.causal.content_features:
        later["causal"] = {"content_features"}
    gen_section = cfg.generator.model_dump(mode="json", exclude=later)
    h_gen = fingerprint("generator", h_tok, h_data, gen_section, cfg.data.max_history, cfg.seed,
                        *([h_feat, cfg.tokenizer.content_modalities] if reads_content else []))
    item_content = features.content_matrix(cfg.tokenizer.content_modalities) if reads_content else None
    generator = _stage(
        result, "generator", h_gen,
        lambda: _train_generator(cfg, split, tokenizer.semantic_ids, device, checkpoint("generator", h_gen),
                                 item_content),
        lambda folder: load_generator(folder, cfg.generator.backbone, device), dump(cfg.generator),
        "generator" in force, parallel=True,
    )
    from cemg.generator.content_prior import with_content_prior

    # What recommendations and the evaluation rank with: the generator, under the content prior when set.
    ranker = result.artifacts["ranker"] = with_content_prior(generator, cfg, features, split.train_item_counts())
    if last <= STAGES.index("generator"):
        return result

    prior = cfg.generator.content_prior
    # image_weight, popularity_adjustment, cold_weight and the mixture were added after runs were evaluated: each
    # is left out at its default, as above, so those runs keep their evaluation.
    added_later = {"image_weight": 1.0, "popularity_adjustment": 0.0, "cold_weight": 0.0, "mixture": 0.0,
                   "mixture_sharpness": 10.0}
    # The new-item mixture acts on items added after training only, never on an evaluation.
    added_only = {"new_item_share", "new_item_sharpness", "new_item_prefix_levels", "new_item_gate",
                  "new_item_gate_sharpness"}
    # The mixture's sharpness does nothing without the mixture.
    idle = set() if prior.mixture else {"mixture_sharpness"}
    prior_section = prior.model_dump(mode="json", exclude={k for k, v in added_later.items() if getattr(prior, k) == v}
                                     | added_only | idle)
    h_eval = fingerprint("evaluation", h_gen, dump(cfg.evaluation),
                         *([prior_section, h_feat, cfg.tokenizer.content_modalities] if prior.weight or prior.mixture
                           else []))
    _stage(
        result, "evaluation", h_eval,
        lambda: RunEvaluation({part: evaluate(ranker, split, part, cfg.evaluation) for part in ("valid", "test")}),
        RunEvaluation.load, dump(cfg.evaluation), "evaluation" in force,
    )
    return result


def _train_generator(cfg: CEMGConfig, split, semantic_ids, device: str, checkpoint: TrainingCheckpoint,
                     item_content=None):
    """The generator `generator.backbone` names (cemg.generator.backbone_family), by the shared trainer."""
    from cemg.generator import train_generator

    return train_generator(split, semantic_ids, cfg.generator, cfg.seed, device, eval_cfg=cfg.evaluation,
                           checkpoint=checkpoint, item_content=item_content)[0]


@dataclass
class SeedsResult:
    """What `run_seeds` produced: one RunResult per seed (sharing the shared stages) and, when every
    seed was evaluated, the record written to RUN_DIR/seeds.json."""

    run_dir: Path
    runs: dict[int, RunResult]
    record: dict | None = None


def parse_seeds(text: str) -> list[int]:
    """`42,43,44` -> [42, 43, 44]; ValueError naming the bad part."""
    seeds = []
    for part in text.split(","):
        part = part.strip()
        try:
            seeds.append(int(part))
        except ValueError:
            raise ValueError(f"seeds {text!r}: {part!r} is not an integer (expected e.g. 42,43,44)") from None
    return seeds


def run_seeds(
    cfg: CEMGConfig, seeds: list[int], stop_after: str = "evaluation", force: tuple[str, ...] = ()
) -> SeedsResult:
    """Run the seeded stages once per seed, sharing the stages built with `cfg.seed` (see the module
    docstring); after the evaluation of every seed, write RUN_DIR/seeds.json (cemg.run_folder) with
    every metric's mean, standard deviation and per-seed values."""
    from cemg.evaluation.seeds import spread

    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds: give at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds {seeds}: a seed is repeated")
    if stop_after not in STAGES:
        raise ValueError(f"unknown stage {stop_after!r}; stages are {', '.join(STAGES)}")
    if stop_after in SHARED_STAGES:
        raise ValueError(f"seeds change only the {', '.join(SEEDED_STAGES)} stages; "
                         f"stopping after {stop_after!r} would run none of them")
    runs: dict[int, RunResult] = {}
    for i, seed in enumerate(seeds):
        log.info("seed %d (%d of %d)", seed, i + 1, len(seeds))
        # A forced shared stage is rebuilt once, with the first seed; the seeded ones for every seed.
        forced = tuple(stage for stage in force if i == 0 or stage in SEEDED_STAGES)
        runs[seed] = run_pipeline(cfg, stop_after, forced, seed=seed)
    out = SeedsResult(Path(cfg.run_dir), runs)
    if stop_after == "evaluation" and distributed.is_main():
        results = spread({seed: run.artifacts["evaluation"].results for seed, run in runs.items()})
        out.record = write_seeds(cfg.run_dir, cfg.seed, {seed: run.folder for seed, run in runs.items()},
                                 {seed: run.hashes for seed, run in runs.items()}, results)
        log.info("seeds %s: wrote %s", ", ".join(map(str, seeds)), Path(cfg.run_dir) / SEEDS_FILE)
    return out
