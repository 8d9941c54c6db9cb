"""The paper's Table 2 (overall) and Table 3 (cold start) on one dataset, over seeds: the machinery
behind bench/beauty_tables.py and bench/toys_tables.py, which only say which rows a dataset has.

Every CEMG-family row is one `cemg run --config <dataset config> --seeds ...` with its overrides:
data, features and LightGCN once, the tokenizer, generator and evaluation once per seed. A row's
folder starts as a copy of the stages it shares with the default run (data, features, collab and,
when the ids are the same, the per-seed tokenizers); the stage hashes decide what is reused.
Baselines are `cemg baseline NAME --set seed=S`, one folder per seed.

Each row reports mean ± std over its seeds of the test metrics (all users and the cold-start
targets, <= 5 training interactions); the semantic mode is compared with every other row by a
paired test across seeds and across users (cemg.evaluation.seeds.compare_seeds).

Every seed collected from a run folder is also kept in bench/results/per_user (bench/kept_results.py),
and a seed whose run folder is gone is read from there: a table's rows can be trained in different
sessions. A row with fewer seeds than the earlier JSON has keeps the earlier row.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from baselines_beauty import machine  # noqa: E402  (bench/ is on sys.path when run as a script)
from kept_results import FROM_KEPT, with_kept  # noqa: E402
from cemg.artifacts import atomic_write_text  # noqa: E402
from cemg.evaluation.protocol import EvalResult  # noqa: E402
from cemg.evaluation.seeds import NO_PER_USER, compare_seeds  # noqa: E402
from cemg.run_folder import RunFolder, load_run_config, read_seeds, seed_evaluations  # noqa: E402

log = logging.getLogger("bench.tables")
DOCS = ROOT / "docs" / "results.md"
SEEDS = (42, 43, 44)
KS = ("HR@5", "HR@10", "NDCG@5", "NDCG@10")


def run_command(config: str, seeds, overrides) -> list[str]:
    """`cemg run` of `config` over `seeds` with `overrides`: how every row's command is written (and
    matched against earlier tables' commands)."""
    return ["cemg", "run", "--config", config, "--seeds", ",".join(map(str, seeds)), "--quiet",
            *sum((["--set", o] for o in overrides), [])]


# The content prior as a sum, what every row ranked with before the configs took the mixture: said in
# the commands of rows measured that way, so they stay the models measured.
PRIOR_AS_SUM = "generator.content_prior.mixture=0"
# A row that ranks the default run's own generators another way: every stage but the evaluation copied.
SHARED_GENERATORS = dict(shared_stages=("data", "features", "collab", "tokenizer", "generator"), shared_tokenizers=True,
                         shared_seeded=("tokenizer", "generator"))


@dataclass(frozen=True)
class Row:
    """A CEMG-family row: `cemg run` of the dataset's config with `overrides`."""

    label: str
    overrides: tuple[str, ...] = ()
    shared_stages: tuple[str, ...] = ()  # stages copied from the default run before training
    shared_tokenizers: bool = False  # the same ids as the default run: per-seed tokenizers copied too
    shared_seeded: tuple[str, ...] = ("tokenizer",)  # which per-seed stages `shared_tokenizers` copies
    seeds: tuple[int, ...] = SEEDS
    # the row it is tested against: the default row, or one measured with the same inference settings
    compare_to: str = "semantic"
    # earlier commands that measured this same model (e.g. before an override made explicit a setting
    # whose config default changed since): their metrics-only seeds still count (seeds_from_earlier)
    same_as: tuple[str, ...] = ()


@dataclass(frozen=True)
class Baseline:
    """`cemg baseline NAME` once per seed, in runs/<dataset>-NAME/seed-S."""

    label: str
    seeds: tuple[int, ...] = SEEDS


@dataclass(frozen=True)
class Tables:
    """What one dataset's tables hold."""

    dataset: str  # run folder prefix and JSON name: runs/<dataset>, bench/results/<dataset>_tables.json
    config: str
    n_items: str  # as printed in the docs, e.g. "12,101"
    docs_section: str
    rows: dict[str, Row]
    baselines: dict[str, Baseline]
    published: dict[str, dict[str, float]] = field(default_factory=dict)  # HR@10 / NDCG@10, same protocol
    # single-seed rows kept from another bench's JSON: key in its "models" -> label
    saved_baselines: tuple[Path, dict[str, str]] | None = None
    notes: tuple[str, ...] = ()  # sentences printed under the tables
    # more pairs (A, B) compared like "semantic vs B", e.g. the hybrid against SASRec
    extra_comparisons: tuple[tuple[str, str], ...] = ()

    @property
    def main_run(self) -> Path:
        return Path("runs") / self.dataset

    @property
    def results(self) -> Path:
        return ROOT / "bench" / "results" / f"{self.dataset}_tables.json"

    @property
    def script(self) -> str:
        return f"bench/{self.dataset}_tables.py"

    def run_dir(self, row: Row) -> Path:
        return next((Path(o.split("=", 1)[1]) for o in row.overrides if o.startswith("run_dir=")), self.main_run)

    def command(self, row: Row) -> list[str]:
        return run_command(self.config, row.seeds, row.overrides)

    def baseline_folder(self, name: str, seed: int) -> Path:
        return Path("runs") / f"{self.dataset}-{name}" / f"seed-{seed}"


def copy_shared(target: Path, stages: tuple[str, ...], tokenizers: bool, source: Path,
                seeded: tuple[str, ...] = ("tokenizer",)) -> None:
    """Start a row's folder from the stages it shares with the `source` run (hashes are rechecked):
    `stages` at the top level and, with `tokenizers`, the `seeded` stages of every seed."""
    if target == source:
        return
    for stage in stages:
        if (source / stage / "manifest.json").is_file() and not (target / stage).exists():
            shutil.copytree(source / stage, target / stage)
    if tokenizers:
        for seed_dir in sorted((source / "seeds").glob("*")):
            for stage in seeded:
                origin, dest = seed_dir / stage, target / "seeds" / seed_dir.name / stage
                if (origin / "manifest.json").is_file() and not dest.exists():
                    shutil.copytree(origin, dest)


def _cemg(args: list[str]) -> None:
    subprocess.run([sys.executable, "-m", "cemg", *args], check=True, cwd=ROOT,
                   env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})


def train_row(tables: Tables, name: str) -> None:
    row = tables.rows[name]
    copy_shared(tables.run_dir(row), row.shared_stages, row.shared_tokenizers, tables.main_run, row.shared_seeded)
    cmd = tables.command(row)
    log.info("%s: %s", name, " ".join(cmd))
    _cemg(cmd[1:])


def train_baseline(tables: Tables, name: str, seed: int) -> None:
    folder = tables.baseline_folder(name, seed)
    if not (folder / "baselines" / name / "test.json").is_file():
        _cemg(["baseline", name, "--config", tables.config, "--quiet", "--set", f"run_dir={folder}",
               "--set", f"seed={seed}"])


def seed_results(run_dir: Path, seeds: tuple[int, ...] | list[int]) -> dict[int, dict[str, EvalResult]]:
    """The finished seeds among `seeds`: from seeds.json when it covers them, else every seed folder
    that holds an evaluation (seeds run by separate `cemg run --seeds S` processes, or interrupted)."""
    if not run_dir.is_dir():
        return {}
    record = read_seeds(run_dir)
    if record is not None and set(record["seeds"]) >= set(seeds):
        return {s: dict(e.results) for s, e in seed_evaluations(run_dir).items() if s in seeds}
    config_seed = load_run_config(run_dir).seed
    out = {}
    for seed in seeds:
        folder = RunFolder.of_seed(run_dir, seed, config_seed)
        if folder.has("evaluation"):
            out[seed] = dict(folder.evaluation().results)
    return out


def evaluation_hashes(run_dir: Path, seeds) -> dict[int, str | None]:
    """The input hash of each seed's evaluation stage (what a kept copy of its results records)."""
    out = {}
    for seed in seeds:
        try:
            manifest = RunFolder.open(run_dir, seed).stage("evaluation") / "manifest.json"
        except FileNotFoundError:
            continue
        out[seed] = json.loads(manifest.read_text(encoding="utf-8")).get("inputs_hash") if manifest.is_file() else None
    return out


def seed_results_of_row(tables: Tables, name: str) -> dict[int, dict[str, EvalResult]] | None:
    """The row's finished seeds: from its run folder, else as bench/results/per_user kept them."""
    row, run_dir = tables.rows[name], ROOT / tables.run_dir(tables.rows[name])
    from_runs = seed_results(run_dir, row.seeds)
    return with_kept(tables.dataset, name, row.seeds, from_runs, " ".join(tables.command(row)),
                     evaluation_hashes(run_dir, from_runs)) or None


def seeds_from_earlier(row: dict | None, command: str, seeds: list[int],
                       same_as: tuple[str, ...] = ()) -> dict[int, dict[str, EvalResult]]:
    """`seeds` of the earlier table's `row`, as metrics only: seeds measured before their per-user ranks
    were kept (bench/kept_results.py), whose run folders are gone. Only when the row's command is
    `command` or one of `same_as`. They count in the row's mean and in the test across seeds, not in
    the test across users (cemg.evaluation.seeds says so in the comparison's notes)."""
    import numpy as np

    if not row or row.get("command") not in (command, *same_as):
        return {}
    out = {}
    for index, seed in enumerate(row["seeds"]):
        if seed not in seeds:
            continue
        out[seed] = {
            part: EvalResult(
                part=part,
                metrics={k: row[f"{part}_all"][k]["per_seed"][index] for k in KS},
                cold_start={k: row[f"{part}_cold_start"][k]["per_seed"][index] for k in KS},
                n_users=row["n_test_users"] if part == "test" else 0,
                n_cold=row["n_cold_start_users"] if part == "test" else 0,
                users=np.empty(0, np.int64), ranks=np.empty(0, np.int64), seconds=0.0,
                extra={NO_PER_USER: True})
            for part in ("valid", "test")}
    return out


def baseline_command(tables: Tables, name: str) -> str:
    return (f"cemg baseline {name} --config {tables.config} --set seed=S "
            f"--set run_dir={tables.baseline_folder(name, 0).parent}/seed-S")


def baseline_seed_results(tables: Tables, name: str) -> dict[int, dict[str, EvalResult]]:
    out = {}
    for seed in tables.baselines[name].seeds:
        folder = ROOT / tables.baseline_folder(name, seed) / "baselines" / name
        if (folder / "test.json").is_file():
            out[seed] = {part: EvalResult.load(folder, part) for part in ("valid", "test")}
    return with_kept(tables.dataset, name, tables.baselines[name].seeds, out, baseline_command(tables, name))


def summary(per_seed: dict[int, dict[str, EvalResult]]) -> dict:
    import numpy as np

    def stats(values: list[float]) -> dict:
        return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
                "per_seed": values}

    out = {"seeds": sorted(per_seed)}
    for part in ("valid", "test"):
        for subset in ("all", "cold_start"):
            out[f"{part}_{subset}"] = {
                k: stats([getattr(per_seed[s][part], "metrics" if subset == "all" else "cold_start")[k]
                          for s in sorted(per_seed)]) for k in KS}
    first = per_seed[min(per_seed)]["test"]
    out["n_test_users"], out["n_cold_start_users"] = first.n_users, first.n_cold
    return out


def cell(entry: dict) -> str:
    return f"{entry['mean']:.4f}" + (f" ± {entry['std']:.4f}" if entry["std"] is not None else "")


def is_earlier(row: dict) -> bool:
    """The row was measured by an earlier invocation: taken from the earlier JSON, or every seed kept."""
    return "kept_from" in row or bool(row.get("earlier_run"))


def markdown(tables: Tables, rows: dict, comparisons: dict, single: dict) -> str:
    lines = [
        tables.docs_section, "",
        f"Test split, full catalogue ({tables.n_items} items), items already in the history excluded; each "
        "model selected by validation NDCG@10. Mean ± standard deviation over the seeds in the `seeds` "
        f"column, from {', '.join(map(str, SEEDS))} (the tokenizer and generator retrained per seed; data, "
        "features and LightGCN shared; the seeds each row has are in "
        f"bench/results/{tables.results.name}). Command: `python {tables.script}`; each row's own command "
        f"is listed below. Machine: {machine()}, shared with other jobs.", "",
        "| model | seeds | HR@5 | HR@10 | NDCG@5 | NDCG@10 |", "|---|---|---|---|---|---|",
    ]
    for r in rows.values():
        label = r["label"] + (" (earlier run)" if is_earlier(r) else "")
        lines.append(f"| {label} | {len(r['seeds'])} | " + " | ".join(cell(r["test_all"][k]) for k in KS) + " |")
    for name, r in single.items():
        lines.append(f"| {name} | 1 | " + " | ".join(f"{r['test'][k]:.4f}" for k in KS) + " |")
    for name, m in tables.published.items():
        lines.append(f"| {name} | | " + " | ".join(f"{m[k]:.4f}" if k in m else "" for k in KS) + " |")
    lines += ["", "Cold start (the paper's Table 3): test users whose target has at most 5 training interactions.", "",
              "| model | cold users | HR@5 | HR@10 | NDCG@5 | NDCG@10 |", "|---|---|---|---|---|---|"]
    for r in rows.values():
        label = r["label"] + (" (earlier run)" if is_earlier(r) else "")
        lines.append(f"| {label} | {r['n_cold_start_users']:,} | "
                     + " | ".join(cell(r["test_cold_start"][k]) for k in KS) + " |")
    for name, r in single.items():
        lines.append(f"| {name} | {r['n_cold_start_users']:,} | "
                     + " | ".join(f"{r['test_cold_start'][k]:.4f}" for k in KS) + " |")
    if comparisons:
        lines += ["", "Each row against the semantic row with the same inference settings (A; the row's `compare_to`), "
                  "and the pairs a dataset adds (`cemg.evaluation.seeds.compare_seeds`: "
                  "paired t-test across seeds, and across users on per-user values averaged over seeds):", ""]
        lines += [f"- {key}: {c['verdict']}" for key, c in comparisons.items()]
    if any(is_earlier(r) for r in rows.values()):
        lines += ["", "Rows marked (earlier run) were measured by an earlier invocation whose runs are not on this "
                  "machine (their results are kept in this JSON or in bench/results/per_user)."]
    lines += [*(["", *tables.notes] if tables.notes else []), "", "Commands:"]
    lines += [f"- {r['label']}: `{r['command']}`"
              + (f" (measured by an earlier `{r['kept_from']}`; its runs are not in this checkout)" if "kept_from" in r
                 else " (measured by an earlier invocation; its runs are not on this machine, its results are kept "
                 "in bench/results/per_user)" if r.get("earlier_run") else "")
              + (f" (seeds {', '.join(map(str, r['seeds_without_per_user_ranks']))}: the metrics an earlier table "
                 "measured, before per-user ranks were kept)" if r.get("seeds_without_per_user_ranks") else "")
              for r in rows.values()]
    lines += [f"- {name}: `{r['command']}`" for name, r in single.items()]
    return "\n".join(lines) + "\n"


def write_docs(section_title: str, section: str) -> None:
    text = DOCS.read_text(encoding="utf-8") if DOCS.is_file() else "# Results\n"
    start = text.find(section_title)
    if start >= 0:
        end = text.find("\n## ", start + len(section_title))
        text = text[:start] + section + (text[end + 1 :] if end >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    atomic_write_text(DOCS, text)


def kept_from_earlier(tables: Tables, rows: dict, comparisons: dict, choices: list[str]) -> tuple[dict, dict]:
    """Rows of the earlier JSON that this invocation did not collect (not asked for, or their runs
    are gone), each marked with the command that measured it, and their comparisons, renamed to say
    they were made against that command's semantic row. A row collected now replaces its old self."""
    if not tables.results.is_file():
        return {}, {}
    earlier = json.loads(tables.results.read_text(encoding="utf-8"))
    kept = {name: {**row, "kept_from": row.get("kept_from", earlier.get("command"))}
            for name, row in earlier.get("rows", {}).items() if name not in rows and name in choices}
    for name, row in kept.items():  # the command that trains the row now (the same model, as configured today)
        if name in tables.rows:
            row["command"] = " ".join(tables.command(tables.rows[name]))
    kept_comparisons = {}
    for key, c in earlier.get("comparisons", {}).items():
        other = key.split(" vs ", 1)[1].split(",")[0]
        if other in kept:
            tag = key if "[" in key else f"{key} [semantic row of `{kept[other]['kept_from']}`]"
            kept_comparisons[tag] = c
    return kept, {k: v for k, v in kept_comparisons.items() if k not in comparisons}


def main(tables: Tables, doc: str) -> None:
    choices = [*tables.rows, *tables.baselines]
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", default=choices, choices=choices)
    parser.add_argument("--no-train", action="store_true", help="only collect finished runs")
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.chdir(ROOT)
    if not args.no_train:
        for name in args.rows:
            if name in tables.rows:
                train_row(tables, name)
            else:
                for seed in tables.baselines[name].seeds:
                    train_baseline(tables, name, seed)

    earlier_rows = json.loads(tables.results.read_text(encoding="utf-8")).get("rows", {}) if tables.results.is_file() else {}
    per_row, rows = {}, {}
    for name in args.rows:
        if name in tables.rows:
            results, row = seed_results_of_row(tables, name), tables.rows[name]
            label, command = row.label, " ".join(tables.command(row))
        else:
            results, label = baseline_seed_results(tables, name) or None, tables.baselines[name].label
            command = baseline_command(tables, name)
        if results is None:
            log.warning("%s: no finished seeds", name)
            continue
        seeds = tables.rows[name].seeds if name in tables.rows else tables.baselines[name].seeds
        numbers_only = seeds_from_earlier(earlier_rows.get(name), command, [s for s in seeds if s not in results],
                                          tables.rows[name].same_as if name in tables.rows else ())
        if numbers_only:
            log.info("%s: seeds %s as the earlier table measured them (metrics only, no per-user ranks)",
                     name, sorted(numbers_only))
            results = {**results, **numbers_only}
        if len(results) < len(earlier_rows.get(name, {}).get("seeds", ())):
            log.warning("%s: only seeds %s are here, the earlier table had %s; keeping the earlier row",
                        name, sorted(results), earlier_rows[name]["seeds"])
            continue
        per_row[name] = results
        rows[name] = {"label": label, "command": command, **summary(results)}
        if all(r["test"].extra.get(FROM_KEPT) or r["test"].extra.get(NO_PER_USER) for r in results.values()):
            rows[name]["earlier_run"] = True  # no seed's run folder is on this machine
        if numbers_only:
            rows[name]["seeds_without_per_user_ranks"] = sorted(numbers_only)
    comparisons = {}
    for name in per_row:
        base = tables.rows[name].compare_to if name in tables.rows else "semantic"
        if name == base or base not in per_row:
            continue
        for subset in ("all", "cold_start"):
            for metric in ("HR@10", "NDCG@10"):
                c = compare_seeds(per_row[base], per_row[name], metric, "test", subset)
                comparisons[f"{base} vs {name}, {metric}{' (cold start)' if subset == 'cold_start' else ''}"] = c.to_dict()
    for a, b in tables.extra_comparisons:
        # a row not collected now comes back from the earlier table as metrics only
        results = {name: per_row.get(name) or seeds_from_earlier(earlier_rows.get(name),
                                                                 earlier_rows.get(name, {}).get("command", ""), SEEDS)
                   for name in (a, b)}
        if all(results.values()):
            for subset in ("all", "cold_start"):
                for metric in ("HR@10", "NDCG@10"):
                    c = compare_seeds(results[a], results[b], metric, "test", subset)
                    comparisons[f"{a} vs {b}, {metric}{' (cold start)' if subset == 'cold_start' else ''}"] = c.to_dict()
    kept_rows, kept_comparisons = kept_from_earlier(tables, rows, comparisons, choices)
    rows.update(kept_rows)
    comparisons.update(kept_comparisons)
    single = {}
    if tables.saved_baselines is not None and tables.saved_baselines[0].is_file():
        path, labels = tables.saved_baselines
        saved = json.loads(path.read_text(encoding="utf-8"))
        for key, label in labels.items():
            if key in saved.get("models", {}):
                single[label] = {**saved["models"][key], "command": saved.get("command", f"python bench/{path.stem}.py")}
    atomic_write_text(tables.results, json.dumps({"machine": machine(), "command": "python " + " ".join(sys.argv),
                                                  "seeds": list(SEEDS), "published": tables.published, "rows": rows,
                                                  "comparisons": comparisons}, indent=2, default=str) + "\n")
    section = markdown(tables, rows, comparisons, single)
    print(section)
    if not args.no_docs:
        write_docs(tables.docs_section, section)
