"""Stage runner: data -> features -> collab -> tokenizer -> generator -> evaluation.

Each stage's artifact lives in `run_dir/<stage>/` with a manifest whose `inputs_hash` covers the
stage's config section, the seed and the hashes of the artifacts it reads. A rerun loads every stage
whose hash still matches and rebuilds from the first one that changed; artifacts are written
atomically, so an interrupted stage is simply run again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cemg.artifacts import atomic_dir, fingerprint, is_fresh, read_manifest, write_manifest
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


def _stage(
    result: RunResult,
    name: str,
    inputs_hash: str,
    build: Callable[[], Any],
    load: Callable[[Path], Any],
    config: Any,
    force: bool = False,
) -> Any:
    folder = result.run_dir / name
    result.hashes[name] = inputs_hash
    if not force and is_fresh(folder, inputs_hash):
        log.info("%s: reusing %s", name, folder)
        artifact = load(folder)
        result.reused.append(name)
        result.seconds[name] = float((read_manifest(folder) or {}).get("seconds", 0.0))
    else:
        start = time.perf_counter()
        artifact = build()
        seconds = time.perf_counter() - start
        with atomic_dir(folder) as tmp:
            artifact.save(tmp)
            write_manifest(tmp, name, inputs_hash, config, seconds=seconds)
        log.info("%s: built in %.1fs, wrote %s", name, seconds, folder)
        result.seconds[name] = seconds
    result.artifacts[name] = artifact
    return artifact


STAGES = ("data", "features", "collab", "tokenizer", "generator", "evaluation")


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
    device = resolve_device(cfg.device)
    result = RunResult(Path(cfg.run_dir))
    dump = lambda section: section.model_dump(mode="json")  # noqa: E731

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
            result, "collab", h_collab, lambda: train_lightgcn(split, cfg.collab, cfg.seed, device),
            CollabEmbeddings.load, dump(cfg.collab), "collab" in force,
        )
    if last <= STAGES.index("collab"):
        return result

    from cemg.tokenizer.build import TokenizerArtifact, build_tokenizer

    h_tok = fingerprint("tokenizer", h_feat, h_collab, dump(cfg.tokenizer), cfg.seed)
    tokenizer = _stage(
        result, "tokenizer", h_tok,
        lambda: build_tokenizer(features, collab, cfg.tokenizer, cfg.seed, device),
        TokenizerArtifact.load, dump(cfg.tokenizer), "tokenizer" in force,
    )
    if last <= STAGES.index("tokenizer"):
        return result

    h_gen = fingerprint("generator", h_tok, h_data, dump(cfg.generator), cfg.data.max_history, cfg.seed)
    generator = _stage(
        result, "generator", h_gen,
        lambda: _train_generator(cfg, split, tokenizer.semantic_ids, device),
        lambda folder: _load_generator(cfg, folder, device), dump(cfg.generator),
        "generator" in force,
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


def _train_generator(cfg: CEMGConfig, split, semantic_ids, device: str):
    """`generator.backbone: causal` picks the decoder-only item-level generator; any other value
    is a T5 preset or checkpoint (the paper's seq2seq generator)."""
    if cfg.generator.backbone == "causal":
        from cemg.generator.causal import train_causal_generator

        return train_causal_generator(split, semantic_ids, cfg.generator, cfg.seed, device, eval_cfg=cfg.evaluation)
    from cemg.generator import train_generator

    return train_generator(split, semantic_ids, cfg.generator, cfg.seed, device, eval_cfg=cfg.evaluation)[0]


def _load_generator(cfg: CEMGConfig, folder: Path, device: str):
    if cfg.generator.backbone == "causal":
        from cemg.generator.causal import CausalGenerativeRecommender

        return CausalGenerativeRecommender.load(folder, device=device)
    from cemg.generator import GenerativeRecommender

    return GenerativeRecommender.load(folder, device=device)
