"""The paper's Table 2 (overall) and Table 3 (cold start) on Amazon Beauty, over seeds.

Run from the repository root (configs/beauty.yaml reads ../shared/data):

    python bench/beauty_tables.py                 # train what is missing (hours on 2 CPU cores), then the tables
    python bench/beauty_tables.py --no-train      # tables from finished runs only
    python bench/beauty_tables.py --rows semantic hybrid --no-docs

Every CEMG-family row is one `cemg run --config configs/beauty.yaml --seeds 42,43,44 ...`: data,
features and LightGCN once, the tokenizer, generator and evaluation once per seed; a row's folder
starts as a copy of the stages it shares with the default run (data, features, collab and, when
the ids are the same, the per-seed tokenizers), and the stage hashes decide what is reused. SASRec
is `cemg baseline sasrec` once per seed. GRU4Rec and Popularity come from
bench/results/baselines_beauty.json (one seed, `python bench/baselines_beauty.py`).

Each row reports mean ± std over its seeds of the test metrics (all users and the cold-start
targets, <= 5 training interactions); the semantic mode is compared with every other row by a
paired test across seeds and across users (cemg.evaluation.seeds.compare_seeds). Writes
bench/results/beauty_tables.json and the "## Beauty: overall and cold start" section of
docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from baselines_beauty import machine  # noqa: E402  (bench/ is on sys.path when run as a script)
from cemg.artifacts import atomic_write_text  # noqa: E402
from cemg.evaluation.protocol import EvalResult  # noqa: E402
from cemg.evaluation.seeds import compare_seeds  # noqa: E402
from cemg.run_folder import RunFolder, load_run_config, read_seeds, seed_evaluations  # noqa: E402

log = logging.getLogger("bench.beauty_tables")
RESULTS = ROOT / "bench" / "results" / "beauty_tables.json"
BASELINES = ROOT / "bench" / "results" / "baselines_beauty.json"
DOCS = ROOT / "docs" / "results.md"
DOCS_SECTION = "## Beauty: overall and cold start"
CONFIG = "configs/beauty.yaml"
SEEDS = (42, 43, 44)
MAIN_RUN = Path("runs/beauty")
KS = ("HR@5", "HR@10", "NDCG@5", "NDCG@10")

# Published rows, HR@10 / NDCG@10, same protocol (leave-one-out, full ranking). The CEMG and TIGER
# rows are the paper's Table 2; the others are from their own papers, as quoted in issue 13.
PUBLISHED = {
    "CEMG (paper, Table 2)": {"HR@10": 0.0665, "NDCG@10": 0.0348},
    "TIGER (paper, Table 2)": {"HR@10": 0.0648, "NDCG@10": 0.0384},
    "LETTER (published)": {"HR@10": 0.0672, "NDCG@10": 0.0364},
    "ActionPiece (published)": {"HR@10": 0.0775, "NDCG@10": 0.0424},
    "RPG (published, best small semantic-id generator)": {"HR@10": 0.0809, "NDCG@10": 0.0464},
}

# name -> (label, overrides, stages copied from the default run, per-seed tokenizers copied too)
ROWS = {
    "semantic": ("CEMG, semantic generator (default; no per-item parameter)", [], (), False),
    "hybrid": ("CEMG ids, hybrid generator (per-item input and output vectors; beyond the paper)",
               ["generator.mode=hybrid", "run_dir=runs/beauty-hybrid"], ("data", "features", "collab", "tokenizer"), True),
    "letter": ("LETTER's published ids, our semantic generator",
               ["tokenizer.ids_file=../shared/data/beauty/letter_Beauty.index.json.gz", "run_dir=runs/beauty-letter-ids"],
               ("data", "features", "collab"), False),
    "text_ids": ("Text-only RQ-VAE ids (no LightGCN), our semantic generator",
                 ["tokenizer.use_collab=false", "run_dir=runs/beauty-text-ids"], ("data", "features", "collab"), False),
}


def run_dir_of(overrides: list[str]) -> Path:
    return next((Path(o.split("=", 1)[1]) for o in overrides if o.startswith("run_dir=")), MAIN_RUN)


def copy_shared(target: Path, stages: tuple[str, ...], tokenizers: bool) -> None:
    """Start a row's folder from the stages it shares with the default run (hashes are rechecked)."""
    if target == MAIN_RUN:
        return
    for stage in stages:
        if (MAIN_RUN / stage / "manifest.json").is_file() and not (target / stage).exists():
            shutil.copytree(MAIN_RUN / stage, target / stage)
    if tokenizers:
        for seed_dir in sorted((MAIN_RUN / "seeds").glob("*")):
            source, dest = seed_dir / "tokenizer", target / "seeds" / seed_dir.name / "tokenizer"
            if (source / "manifest.json").is_file() and not dest.exists():
                shutil.copytree(source, dest)


def cemg_command(overrides: list[str]) -> list[str]:
    return ["cemg", "run", "--config", CONFIG, "--seeds", ",".join(map(str, SEEDS)), "--quiet",
            *sum((["--set", o] for o in overrides), [])]


def train_row(name: str) -> None:
    _, overrides, stages, tokenizers = ROWS[name]
    copy_shared(run_dir_of(overrides), stages, tokenizers)
    cmd = cemg_command(overrides)
    log.info("%s: %s", name, " ".join(cmd))
    subprocess.run([sys.executable, "-m", "cemg", *cmd[1:]], check=True, cwd=ROOT,
                   env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})


def train_sasrec(seed: int) -> Path:
    folder = Path(f"runs/beauty-sasrec/seed-{seed}")
    if not (folder / "baselines" / "sasrec" / "test.json").is_file():
        subprocess.run([sys.executable, "-m", "cemg", "baseline", "sasrec", "--config", CONFIG, "--quiet",
                        "--set", f"run_dir={folder}", "--set", f"seed={seed}"], check=True, cwd=ROOT,
                       env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    return folder / "baselines" / "sasrec"


def seed_results_of_row(name: str) -> dict[int, dict[str, EvalResult]] | None:
    """The finished seeds of a row: those of its seeds.json, else every seed of SEEDS whose folder
    holds an evaluation (seeds run by separate `cemg run --seeds S` processes)."""
    run_dir = ROOT / run_dir_of(ROWS[name][1])
    if not run_dir.is_dir():
        return None
    record = read_seeds(run_dir)
    if record is not None and set(record["seeds"]) >= set(SEEDS):
        return {seed: dict(evaluation.results) for seed, evaluation in seed_evaluations(run_dir).items()}
    config_seed = load_run_config(run_dir).seed
    out = {}
    for seed in SEEDS:
        folder = RunFolder.of_seed(run_dir, seed, config_seed)
        if folder.has("evaluation"):
            out[seed] = dict(folder.evaluation().results)
    return out or None


def sasrec_seed_results() -> dict[int, dict[str, EvalResult]]:
    out = {}
    for seed in SEEDS:
        folder = ROOT / "runs" / "beauty-sasrec" / f"seed-{seed}" / "baselines" / "sasrec"
        if (folder / "test.json").is_file():
            out[seed] = {part: EvalResult.load(folder, part) for part in ("valid", "test")}
    return out


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


def markdown(rows: dict, comparisons: dict, single: dict) -> str:
    lines = [
        DOCS_SECTION, "",
        "Test split, full catalogue (12,101 items), items already in the history excluded; each model "
        "selected by validation NDCG@10. Mean ± standard deviation over the seeds in the `seeds` column, "
        "from 42, 43, 44 (the tokenizer and generator retrained per seed; data, text features and LightGCN "
        "shared; the seeds each row has are in bench/results/beauty_tables.json). Command: "
        f"`python bench/beauty_tables.py`; each row's own command is listed below. Machine: {machine()}, "
        "shared with other jobs.", "",
        "| model | seeds | HR@5 | HR@10 | NDCG@5 | NDCG@10 |", "|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(f"| {r['label']} | {len(r['seeds'])} | " + " | ".join(cell(r["test_all"][k]) for k in KS) + " |")
    for name, r in single.items():
        lines.append(f"| {name} | 1 | " + " | ".join(f"{r['test'][k]:.4f}" for k in KS) + " |")
    for name, m in PUBLISHED.items():
        lines.append(f"| {name} | | | {m['HR@10']:.4f} | | {m['NDCG@10']:.4f} |")
    lines += ["", "Cold start (the paper's Table 3): test users whose target has at most 5 training interactions.", "",
              "| model | cold users | HR@5 | HR@10 | NDCG@5 | NDCG@10 |", "|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {r['label']} | {r['n_cold_start_users']:,} | "
                     + " | ".join(cell(r["test_cold_start"][k]) for k in KS) + " |")
    for name, r in single.items():
        lines.append(f"| {name} | {r['n_cold_start_users']:,} | "
                     + " | ".join(f"{r['test_cold_start'][k]:.4f}" for k in KS) + " |")
    if comparisons:
        lines += ["", "The semantic generator against each other row (`cemg.evaluation.seeds.compare_seeds`: "
                  "paired t-test across seeds, and across users on per-user values averaged over seeds):", ""]
        for key, c in comparisons.items():
            lines.append(f"- {key}: {c['verdict']}")
    lines += ["", "Commands:"]
    for name, r in rows.items():
        lines.append(f"- {r['label']}: `{r['command']}`")
    lines += [f"- {name}: `{r['command']}`" for name, r in single.items()]
    return "\n".join(lines) + "\n"


def write_docs(section: str) -> None:
    text = DOCS.read_text(encoding="utf-8") if DOCS.is_file() else "# Results\n"
    start = text.find(DOCS_SECTION)
    if start >= 0:
        end = text.find("\n## ", start + len(DOCS_SECTION))
        text = text[:start] + section + (text[end + 1 :] if end >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    atomic_write_text(DOCS, text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", default=[*ROWS, "sasrec"], choices=[*ROWS, "sasrec"])
    parser.add_argument("--no-train", action="store_true", help="only collect finished runs")
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.chdir(ROOT)
    if not args.no_train:
        for name in [r for r in args.rows if r in ROWS]:
            train_row(name)
        if "sasrec" in args.rows:
            for seed in SEEDS:
                train_sasrec(seed)

    per_row = {}
    rows = {}
    for name in [r for r in args.rows if r in ROWS]:
        results = seed_results_of_row(name)
        if results is None:
            log.warning("%s: no finished seeds run in %s", name, run_dir_of(ROWS[name][1]))
            continue
        per_row[name] = results
        rows[name] = {"label": ROWS[name][0], "command": " ".join(cemg_command(ROWS[name][1])), **summary(results)}
    if "sasrec" in args.rows and sasrec_seed_results():
        per_row["sasrec"] = sasrec_seed_results()
        rows["sasrec"] = {"label": "SASRec, full softmax (ours)",
                          "command": "cemg baseline sasrec --config configs/beauty.yaml --set seed=S "
                                     "--set run_dir=runs/beauty-sasrec/seed-S", **summary(per_row["sasrec"])}
    comparisons = {}
    if "semantic" in per_row:
        for name in per_row:
            if name == "semantic":
                continue
            for subset in ("all", "cold_start"):
                for metric in ("HR@10", "NDCG@10"):
                    c = compare_seeds(per_row["semantic"], per_row[name], metric, "test", subset)
                    comparisons[f"semantic vs {name}, {metric}{' (cold start)' if subset == 'cold_start' else ''}"] = c.to_dict()
    single = {}
    if BASELINES.is_file():
        saved = json.loads(BASELINES.read_text(encoding="utf-8"))
        for key, label in (("gru4rec", "GRU4Rec (ours)"), ("pop", "Popularity")):
            if key in saved.get("models", {}):
                single[label] = {**saved["models"][key], "command": saved.get("command", "python bench/baselines_beauty.py")}
    atomic_write_text(RESULTS, json.dumps({"machine": machine(), "command": "python " + " ".join(sys.argv),
                                           "seeds": list(SEEDS), "published": PUBLISHED, "rows": rows,
                                           "comparisons": comparisons}, indent=2, default=str) + "\n")
    section = markdown(rows, comparisons, single)
    print(section)
    if not args.no_docs:
        write_docs(section)


if __name__ == "__main__":
    main()
