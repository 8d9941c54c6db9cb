"""A run folder's layout, shared by the stage runner that writes it (cemg.pipeline) and everything
that reads a finished run (cemg.api, `cemg serve`, `cemg report`, `cemg compare`), so that reading a
run never needs the runner.

    RUN_DIR/
      config.yaml                  the whole config of the latest run into this folder
      data/ features/ collab/      shared stages: built once, with the config's seed
      tokenizer/ generator/ evaluation/
                                   the seeded stages of the config's own seed
      seeds/<seed>/{tokenizer,generator,evaluation}/
                                   the seeded stages of every other seed (`cemg run --seeds`)
      seeds.json                   every metric's mean, std and per-seed values; where each seed's
                                   per-user ranks are
      [seeds/<seed>/]items/        items added after training (`cemg items add`), per seed, since
                                   their semantic ids come from that seed's tokenizer:
          current.json             {"generation": "added-0003"}: the one generation readers use,
                                   replaced in one os.replace when an add commits
          added-0003/              every item added so far (cemg.added_items), immutable once named
      checkpoints/<stage>-<inputs hash>/
                                   training state of an interrupted stage (removed once it is built)
      report/                      `cemg report`

Every stage folder holds its artifact and a manifest (cemg.artifacts). The config's own seed keeps
its seeded stages at the top, so a run with seeds is also a complete plain run (served, reported and
cached as one), and `cemg run --seeds 42,43,44` after `cemg run` (seed 42) reuses that seed's work.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from cemg.artifacts import atomic_write_text, read_manifest
from cemg.config import CEMGConfig, ConfigError, load_config
from cemg.evaluation.protocol import PARTS, RunEvaluation, per_user_file

log = logging.getLogger(__name__)

# Data, features and LightGCN are what configurations under comparison usually share; the tokenizer
# and the generator are where seed-to-seed variation of the ids and the metrics arises (issue 15),
# so `--seeds` re-runs those (and their evaluation) and shares the rest.
SHARED_STAGES = ("data", "features", "collab")
SEEDED_STAGES = ("tokenizer", "generator", "evaluation")
STAGES = SHARED_STAGES + SEEDED_STAGES
# Settings a stage's section holds that act after the stage, at inference: the stage does not depend
# on them (its input hash leaves them out; the evaluation's holds them), so a run that changes them
# reuses the stage and its recorded values are not a mismatch.
INFERENCE_ONLY: dict[str, tuple[str, ...]] = {"generator": ("content_prior",)}
# The manifests hold only each stage's own section; cemg.api, `cemg serve` and `cemg report` need
# the whole config.
CONFIG_FILE = "config.yaml"
SEEDS_DIR = "seeds"
SEEDS_FILE = "seeds.json"
CHECKPOINTS_DIR = "checkpoints"
ADDED_ITEMS_DIR = "items"
ADDED_ITEMS_POINTER = "current.json"


@dataclass(frozen=True)
class RunFolder:
    """The stage folders of one seed of a run: the shared stages always at the root; the seeded ones at
    the root for the config's seed (`seed` None), else under seeds/<seed>/."""

    root: Path
    seed: int | None = None

    @classmethod
    def of_seed(cls, root: Path | str, seed: int, config_seed: int) -> RunFolder:
        return cls(Path(root), None if int(seed) == int(config_seed) else int(seed))

    @classmethod
    def open(cls, run_dir: Path | str, seed: int | None = None) -> RunFolder:
        """The folder a reader shows: `seed`'s, or with None the root's seeded stages, else (a run whose
        seeds all differ from its config's) the first seed's. FileNotFoundError names what is missing."""
        root = Path(run_dir)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: run directory not found")
        record = read_seeds(root)
        runs = (record or {}).get("runs", {})
        if seed is None:
            if RunFolder(root).has("tokenizer") or not runs:
                return cls(root)
            first = min(runs, key=int)
            log.info("%s: no seeded stages at the top; showing seed %s (%s)", root, first, root / runs[first]["folder"])
            return cls._from_record(root, first, runs[first])
        if str(seed) in runs:
            return cls._from_record(root, str(seed), runs[str(seed)])
        if record is not None and int(seed) == int(record["config_seed"]):
            return cls(root)
        if record is None and int(seed) == load_run_config(root).seed:
            return cls(root)
        known = ", ".join(sorted(runs, key=int)) or "only the config's seed"
        raise FileNotFoundError(f"{root}: no seed {seed} in this run (it has {known})")

    @classmethod
    def _from_record(cls, root: Path, seed: str, entry: dict) -> RunFolder:
        return cls(root, None if entry["folder"] == "." else int(seed))

    @property
    def seed_dir(self) -> Path:
        """Where this seed's seeded stages are."""
        return self.root if self.seed is None else self.root / SEEDS_DIR / str(self.seed)

    def stage(self, name: str) -> Path:
        if name in SHARED_STAGES:
            return self.root / name
        if name in SEEDED_STAGES:
            return self.seed_dir / name
        raise ValueError(f"unknown stage {name!r}; stages are {', '.join(STAGES)}")

    def checkpoint(self, stage: str, inputs_hash: str) -> Path:
        # The inputs hash covers the seed, so every seed's checkpoints can share one folder.
        return self.root / CHECKPOINTS_DIR / f"{stage}-{inputs_hash}"

    @property
    def added_items_dir(self) -> Path:
        return self.seed_dir / ADDED_ITEMS_DIR

    def added_items(self) -> Path | None:
        """The folder of the current generation of added items, or None when nothing was added.
        Generations not named by the pointer (an add killed before its commit) are never read."""
        pointer = self.added_items_dir / ADDED_ITEMS_POINTER
        if not pointer.is_file():
            return None
        try:
            name = json.loads(pointer.read_text(encoding="utf-8"))["generation"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{pointer}: not a readable pointer ({err})") from None
        folder = self.added_items_dir / str(name)
        if "/" in str(name) or not folder.is_dir():
            raise FileNotFoundError(f"{pointer}: names {name!r}, which is not a folder beside it")
        return folder

    def commit_added_items(self, written: Path) -> Path:
        """Publish `written` (a complete generation built inside `added_items_dir` under a hidden
        name) as the current one: rename it to the next generation's name, then replace the pointer
        in one os.replace, so a reader sees the old generation or the new one, never a mix. Older
        generations are removed afterwards (a process that loaded one keeps it in memory)."""
        base = self.added_items_dir
        numbers = [int(p.name.split("-")[1]) for p in base.glob("added-*") if p.name.split("-")[1].isdigit()]
        final = base / f"added-{max(numbers, default=0) + 1:04d}"
        os.replace(written, final)
        atomic_write_text(base / ADDED_ITEMS_POINTER, json.dumps({"generation": final.name}))
        for old in base.glob("added-*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
        return final

    @property
    def config_file(self) -> Path:
        return self.root / CONFIG_FILE

    def has(self, stage: str) -> bool:
        """The stage's artifact is complete (its manifest is written last, inside an atomic folder)."""
        return read_manifest(self.stage(stage)) is not None

    def stages(self) -> dict[str, bool]:
        return {stage: self.has(stage) for stage in STAGES}

    def evaluation(self) -> RunEvaluation:
        folder = self.stage("evaluation")
        if not self.has("evaluation"):
            raise FileNotFoundError(f"{folder}: no evaluation; run `cemg run` to the end first")
        return RunEvaluation.load(folder)

    def ranks_file(self, part: str) -> Path:
        return per_user_file(self.stage("evaluation"), part)


# --- the run's config ---------------------------------------------------------------------------


def lenient_section(model: type[BaseModel], values: dict[str, Any] | None, where: str) -> BaseModel:
    """Validate a section recorded by an older version: keys this version no longer knows are dropped
    (logged), so an old run stays loadable."""
    values = dict(values or {})
    unknown = sorted(set(values) - set(model.model_fields))
    if unknown:
        log.warning("%s: ignoring config keys this version does not know: %s", where, unknown)
    try:
        return model.model_validate({k: v for k, v in values.items() if k in model.model_fields})
    except ValidationError as err:
        log.warning("%s: recorded config does not validate (%s); using defaults", where, err.errors()[0]["msg"])
        return model()


def _lenient_config_file(path: Path) -> CEMGConfig:
    """config.yaml read section by section with `lenient_section`, for one an older version wrote."""
    import yaml

    tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    sections = {name: lenient_section(fields.annotation, tree[name], f"{path}: {name}")
                for name, fields in CEMGConfig.model_fields.items()
                if isinstance(tree.get(name), dict) and isinstance(fields.annotation, type)
                and issubclass(fields.annotation, BaseModel)}
    top = lenient_section(CEMGConfig, {k: v for k, v in tree.items() if k not in sections}, str(path))
    return top.model_copy(update=sections)


def _differs(current: dict, recorded: dict) -> bool:
    """Whether a stage's recorded section disagrees with the config. Only keys the stage recorded
    count, at every depth of a nested section: a field added to the config after the stage was built is
    missing from its record without the stage having used other settings."""
    for key, value in recorded.items():
        now = current.get(key, value)
        if isinstance(now, dict) and isinstance(value, dict):
            if _differs(now, value):
                return True
        elif now != value:
            return True
    return False


def load_run_config(run_dir: Path | str) -> CEMGConfig:
    """The config a run was built with: `run_dir/config.yaml`, else rebuilt from the stage manifests
    (runs made before config.yaml existed)."""
    root = RunFolder(Path(run_dir))
    if not root.root.is_dir():
        raise FileNotFoundError(f"{root.root}: run directory not found")
    if root.config_file.is_file():
        try:
            cfg = load_config(root.config_file)
        except ConfigError as err:
            # Written by an older version whose keys this one dropped: the run's artifacts are still
            # readable, so a report or a service should not refuse it.
            log.warning("%s; reading it key by key instead", err)
            cfg = _lenient_config_file(root.config_file)
        # config.yaml describes the LATEST pipeline call; an earlier full run may have left stages
        # that a later, shorter call (e.g. `--until tokenizer` with other settings) did not rebuild.
        for name in STAGES:
            recorded = (read_manifest(root.stage(name)) or {}).get("config")
            if recorded is not None:
                recorded = {k: v for k, v in recorded.items() if k not in INFERENCE_ONLY.get(name, ())}
            current = getattr(cfg, name).model_dump(mode="json")
            if recorded is not None and _differs(current, recorded):
                log.warning("%s: stage %r was built with other %s settings than %s records",
                            root.root, name, name, CONFIG_FILE)
        return cfg.model_copy(update={"run_dir": root.root})
    fields = CEMGConfig.model_fields
    sections = {}
    for name in STAGES:
        manifest = read_manifest(root.stage(name))
        if manifest is not None:
            sections[name] = lenient_section(fields[name].annotation, manifest.get("config"), f"{root.stage(name)}")
    if not sections:
        raise FileNotFoundError(f"{root.root}: neither {CONFIG_FILE} nor any stage manifest; is this a run directory?")
    log.info("%s: no %s (a run from an older version); config rebuilt from the stage manifests", root.root, CONFIG_FILE)
    return CEMGConfig(run_dir=root.root, **sections)


# --- seeds ----------------------------------------------------------------------------------------


def write_seeds(run_dir: Path | str, config_seed: int, folders: dict[int, RunFolder],
                hashes: dict[int, dict[str, str]], results: dict) -> dict:
    """Write RUN_DIR/seeds.json: `results` (cemg.evaluation.seeds.spread) and, per seed, its folder,
    per-user ranks and the inputs hashes of its seeded stages (paths relative to the run folder, so the
    folder can be moved). Returns what was written."""
    root = Path(run_dir)
    runs = {}
    for seed in sorted(folders):
        folder = folders[seed]
        runs[str(seed)] = {
            "folder": folder.seed_dir.relative_to(root).as_posix() or ".",
            "per_user_ranks": {part: folder.ranks_file(part).relative_to(root).as_posix() for part in PARTS},
            "inputs_hash": {stage: hashes[seed][stage] for stage in SEEDED_STAGES if stage in hashes[seed]},
        }
    record = {
        "seeds": sorted(folders),
        "config_seed": int(config_seed),
        "shared_stages": list(SHARED_STAGES),
        "std": "sample standard deviation over the seeds (n - 1); null with one seed",
        "runs": runs,
        "results": results,
    }
    atomic_write_text(root / SEEDS_FILE, json.dumps(record, indent=2))
    return record


def read_seeds(run_dir: Path | str) -> dict | None:
    """RUN_DIR/seeds.json, or None for a run made without `--seeds`. A seed whose stages were rebuilt
    since the file was written is logged: its numbers there are stale."""
    root = Path(run_dir)
    path = root / SEEDS_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not readable JSON ({err}); rerun `cemg run --seeds ...` to rewrite it") from None
    for key in ("seeds", "config_seed", "runs", "results"):
        if key not in record:
            raise ValueError(f"{path}: field {key!r} is missing; rerun `cemg run --seeds ...` to rewrite it")
    for seed, entry in record["runs"].items():
        for stage, recorded in entry.get("inputs_hash", {}).items():
            manifest = read_manifest(root / entry["folder"] / stage)
            if manifest is not None and manifest.get("inputs_hash") != recorded:
                log.warning("%s: seed %s's %s was rebuilt after this file was written; its numbers are stale",
                            path, seed, stage)
    return record


def seed_folders(run_dir: Path | str) -> dict[int, RunFolder]:
    """Every seed of a run with an evaluation: the seeds of seeds.json, else the config's seed alone."""
    root = Path(run_dir)
    record = read_seeds(root)
    if record is not None:
        return {int(s): RunFolder._from_record(root, s, entry) for s, entry in record["runs"].items()}
    if not RunFolder(root).has("evaluation"):
        raise FileNotFoundError(f"{root}: no evaluation and no {SEEDS_FILE}; run `cemg run` to the end first")
    return {load_run_config(root).seed: RunFolder(root)}


def seed_evaluations(run_dir: Path | str) -> dict[int, RunEvaluation]:
    """Seed -> the evaluation artifact of that seed (see `seed_folders`)."""
    return {seed: folder.evaluation() for seed, folder in seed_folders(run_dir).items()}
