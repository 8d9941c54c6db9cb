"""Finished seeds kept in the repository, so a results table can grow across sessions and machines.

Run folders stay on the machine that trained them (runs/ is not committed), and a table of 3 seeds
per row on Toys takes more 2-core CPU hours than one session has. So each table script copies every
finished seed's valid and test `EvalResult` (the summary and the per-user ranks, a few KB
compressed) to bench/results/per_user/<table>/<row>/seed-<S>/ when it collects it, and reads it back
where the run is gone: the row keeps its seeds and the paired tests across users still run.

A kept seed is only as current as the command that made it: `source.json` beside it records that
command and the evaluation stage's input hash, and a run folder present on the machine always wins.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from cemg.artifacts import atomic_write_text
from cemg.evaluation.protocol import EvalResult, per_user_file
from cemg.evaluation.seeds import SeedResults

log = logging.getLogger("bench.kept_results")
KEPT = Path(__file__).resolve().parent / "results" / "per_user"
PARTS = ("valid", "test")
SOURCE = "source.json"
FROM_KEPT = "kept_copy"  # EvalResult.extra key of a result read back from here


def kept_folder(table: str, row: str, seed: int) -> Path:
    return KEPT / table / row / f"seed-{seed}"


def _same(folder: Path, part: str, result: EvalResult) -> bool:
    """The kept result holds the same users, ranks and metrics (its timing may differ): rewriting it
    would only churn the repository."""
    if not (folder / f"{part}.json").is_file() or not per_user_file(folder, part).is_file():
        return False
    old = EvalResult.load(folder, part)
    return (old.metrics == result.metrics and old.cold_start == result.cold_start
            and np.array_equal(old.users, result.users) and np.array_equal(old.ranks, result.ranks))


def keep(table: str, row: str, results: SeedResults, command: str, hashes: dict[int, str | None]) -> None:
    """Copy each seed's results (collected from its run folder) into the repository."""
    for seed, parts in results.items():
        folder = kept_folder(table, row, seed)
        changed = False
        for part in PARTS:
            if part in parts and not _same(folder, part, parts[part]):
                parts[part].save(folder, part)
                changed = True
        if changed or not (folder / SOURCE).is_file():
            atomic_write_text(folder / SOURCE, json.dumps(
                {"command": command, "seed": seed, "evaluation_inputs_hash": hashes.get(seed)}, indent=2) + "\n")


def kept(table: str, row: str, seeds) -> SeedResults:
    """The kept seeds among `seeds` that have both parts, each result marked `extra[FROM_KEPT]`
    (measured by an earlier invocation)."""
    out: SeedResults = {}
    for seed in seeds:
        folder = kept_folder(table, row, seed)
        if all((folder / f"{part}.json").is_file() for part in PARTS):
            out[seed] = {part: EvalResult.load(folder, part) for part in PARTS}
            for result in out[seed].values():
                result.extra = {**result.extra, FROM_KEPT: True}
    return out


def with_kept(table: str, row: str, seeds, from_runs: SeedResults, command: str,
              hashes: dict[int, str | None] | None = None) -> SeedResults:
    """`from_runs` (kept now) completed by the kept seeds whose run folders are gone."""
    keep(table, row, from_runs, command, hashes or {})
    missing = [s for s in seeds if s not in from_runs]
    earlier = kept(table, row, missing)
    if earlier:
        log.info("%s/%s: seeds %s from bench/results/per_user (their run folders are not here)",
                 table, row, sorted(earlier))
    return {**from_runs, **earlier}
