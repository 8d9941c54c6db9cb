"""Stage runner: data -> features -> collab -> tokenizer -> generator -> evaluation.

Each stage's artifact lives in `run_dir/<stage>/` with a manifest whose `inputs_hash` covers the
stage's config section, the seed and the hashes of the artifacts it reads. A rerun loads every stage
whose hash still matches and rebuilds from the first one that changed; artifacts are written
atomically, so an interrupted stage is simply run again, and its training resumes from the last
checkpoint in `run_dir/checkpoints/<stage>-<inputs hash>/` (removed once the artifact is written).

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
from cemg.artifacts import atomic_dir, atomic_write_text, fingerprint, is_fresh, read_manifest, write_manifest
from cemg.checkpoint import TrainingCheckpoint
from cemg.config import CEMGConfig, resolve_device
from cemg.evaluation.protocol import EvalResult, evaluate

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What a pipeline run produced, stage by stage."""

    run_dir: Path
    artifacts: dict[str, Any] = field(default_factory=dict)
    hashes: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)


def _data_source_digest(cfg: CEMGConfig) -> list[Any]:
    # Size and mtime stand in for content: hashing gigabytes of images on every run would cost
    # more than the stages it lets us skip.
    parts: list[Any] = []
    for path in (cfg.data.path, cfg.data.items_path, cfg.data.image_root):
        if path is not None and Path(path).exists():
            st = Path(path).stat()
            parts.append([str(path), st.st_size, int(st.st_mtime)])
    return parts


def checkpoint_folder(run_dir: Path, stage: str, inputs_hash: str) -> Path:
    return Path(run_dir) / "checkpoints" / f"{stage}-{inputs_hash}"


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
    folder = result.run_dir / name
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
            checkpoints = checkpoint_folder(result.run_dir, name, inputs_hash)
            shutil.rmtree(checkpoints, ignore_errors=True)
            if checkpoints.parent.is_dir() and not any(checkpoints.parent.iterdir()):
                checkpoints.parent.rmdir()
        distributed.barrier()
        if not distributed.is_main():
            artifact = load(folder)
        result.seconds[name] = seconds
    result.artifacts[name] = artifact
    return artifact


STAGES = ("data", "features", "collab", "tokenizer", "generator", "evaluation")
# The whole config of the latest run_pipeline call, beside the stage folders: the manifests hold
# only each stage's own section, and cemg.api / `cemg serve` / `cemg report` need the rest.
CONFIG_FILE = "config.yaml"


@dataclass
class RunEvaluation:
    """The evaluation stage's artifact: validation and test results of the trained generator."""

    results: dict[str, EvalResult]

    def save(self, folder: Path) -> None:
        for part, result in self.results.items():
            result.save(folder, part)

    @classmethod
    def load(cls, folder: Path) -> RunEvaluation:
        return cls({part: EvalResult.load(folder, part) for part in ("valid", "test")})


def run_pipeline(cfg: CEMGConfig, stop_after: str = "evaluation", force: tuple[str, ...] = ()) -> RunResult:
    """Run (or resume) every stage up to and including `stop_after`; return the artifacts.

    `force` names stages to rebuild even when their artifact is up to date (later stages follow,
    since their inputs' hashes change only when the content does: a forced rebuild with the same
    seed reproduces the same artifact and the rest is reused).
    """
    from cemg.data.dataset import InteractionDataset
    from cemg.data.load import load_dataset
    from cemg.data.split import leave_one_out

    if stop_after not in STAGES:
        raise ValueError(f"unknown stage {stop_after!r}; stages are {', '.join(STAGES)}")
    last = STAGES.index(stop_after)
    device = distributed.setup(resolve_device(cfg.device))
    result = RunResult(Path(cfg.run_dir))
    dump = lambda section: section.model_dump(mode="json")  # noqa: E731

    def checkpoint(stage: str, inputs_hash: str, collective: bool = True) -> TrainingCheckpoint:
        folder = checkpoint_folder(result.run_dir, stage, inputs_hash)
        return TrainingCheckpoint(folder, cfg.checkpoint_seconds, collective)

    if distributed.is_main():
        atomic_write_text(result.run_dir / CONFIG_FILE, yaml.safe_dump(dump(cfg), sort_keys=False))

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

    from cemg.tokenizer.build import TokenizerArtifact, build_tokenizer

    h_tok = fingerprint("tokenizer", h_feat, h_collab, dump(cfg.tokenizer), cfg.seed)
    tokenizer = _stage(
        result, "tokenizer", h_tok,
        lambda: build_tokenizer(features, collab, cfg.tokenizer, cfg.seed, device, checkpoint("tokenizer", h_tok)),
        TokenizerArtifact.load, dump(cfg.tokenizer), "tokenizer" in force, parallel=True,
    )
    if last <= STAGES.index("tokenizer"):
        return result

    from cemg.generator import load_generator

    h_gen = fingerprint("generator", h_tok, h_data, dump(cfg.generator), cfg.data.max_history, cfg.seed)
    generator = _stage(
        result, "generator", h_gen,
        lambda: _train_generator(cfg, split, tokenizer.semantic_ids, device, checkpoint("generator", h_gen)),
        lambda folder: load_generator(folder, cfg.generator.backbone, device), dump(cfg.generator),
        "generator" in force, parallel=True,
    )
    if last <= STAGES.index("generator"):
        return result

    h_eval = fingerprint("evaluation", h_gen, dump(cfg.evaluation))
    _stage(
        result, "evaluation", h_eval,
        lambda: RunEvaluation({part: evaluate(generator, split, part, cfg.evaluation) for part in ("valid", "test")}),
        RunEvaluation.load, dump(cfg.evaluation), "evaluation" in force,
    )
    return result


def _train_generator(cfg: CEMGConfig, split, semantic_ids, device: str, checkpoint: TrainingCheckpoint):
    """`generator.backbone: causal` picks the decoder-only item-level generator; any other value
    is a T5 preset or checkpoint (the paper's seq2seq generator)."""
    if cfg.generator.backbone == "causal":
        from cemg.generator.causal import train_causal_generator

        return train_causal_generator(split, semantic_ids, cfg.generator, cfg.seed, device, eval_cfg=cfg.evaluation,
                                      checkpoint=checkpoint)
    from cemg.generator import train_generator

    return train_generator(split, semantic_ids, cfg.generator, cfg.seed, device, eval_cfg=cfg.evaluation,
                           checkpoint=checkpoint)[0]
