"""The paper's Table 2 (overall) and Table 3 (cold start) rows on Amazon Beauty.

Run from the repository root (configs/beauty.yaml reads ../shared/data):

    python bench/beauty_tables.py            # train what is missing, then write the tables
    python bench/beauty_tables.py --no-train # tables from finished runs only

Rows:
- CEMG: `cemg run --config configs/beauty.yaml` (the pipeline; cached stages are reused).
- TIGER configuration: the same pipeline and generator with text-only semantic ids
  (`tokenizer.use_collab=false`), in runs/beauty-tiger; its data and features stages are copied
  from runs/beauty when fresh there (the stage hashes decide, so nothing stale is reused).
- Pop, SASRec, GRU4Rec: bench/results/baselines_beauty.json (`python bench/baselines_beauty.py`).

Writes bench/results/beauty_tables.json and the "## Beauty: overall and cold start" section of
docs/results.md.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see bench/baselines_beauty.py

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from cemg.artifacts import atomic_write_text, read_manifest  # noqa: E402
from cemg.config import load_config  # noqa: E402
from cemg.evaluation.protocol import EvalResult, paired_test  # noqa: E402
from cemg.pipeline import RunEvaluation, run_pipeline  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from baselines_beauty import machine  # noqa: E402

log = logging.getLogger("bench.beauty_tables")
RESULTS = Path("bench/results/beauty_tables.json")
BASELINES = Path("bench/results/baselines_beauty.json")
DOCS = Path("docs/results.md")
DOCS_SECTION = "## Beauty: overall and cold start"
# Paper Table 2, Beauty (HR@10, NDCG@10); HR@5/NDCG@5 and Table 3 did not survive in our copy.
PAPER = {"CEMG (paper)": {"HR@10": 0.0665, "NDCG@10": 0.0348}, "TIGER (paper)": {"HR@10": 0.0648, "NDCG@10": 0.0384}}
VARIANTS = {"CEMG": [], "TIGER configuration": ["tokenizer.use_collab=false", "run_dir=runs/beauty-tiger"]}
SHARED_STAGES = ("data", "features")


def seed_stages(source: Path, target: Path) -> None:
    """Copy the stages a variant shares with the main run; run_pipeline re-checks their hashes."""
    for stage in SHARED_STAGES:
        if (source / stage / "manifest.json").is_file() and not (target / stage).exists():
            shutil.copytree(source / stage, target / stage)
            log.info("copied %s to %s", source / stage, target / stage)


def run_variant(config: str, overrides: list[str], train: bool, main_run: Path) -> dict | None:
    cfg = load_config(config, overrides)
    run_dir = Path(cfg.run_dir)
    if run_dir != main_run:
        seed_stages(main_run, run_dir)
    if train:
        result = run_pipeline(cfg)
        evaluation: RunEvaluation = result.artifacts["evaluation"]
        seconds = result.seconds
    elif (run_dir / "evaluation" / "test.json").is_file():
        evaluation = RunEvaluation.load(run_dir / "evaluation")
        seconds = {s: float((read_manifest(run_dir / s) or {}).get("seconds", 0.0))
                   for s in ("data", "features", "collab", "tokenizer", "generator", "evaluation")}
    else:
        log.warning("%s: no finished run (run without --no-train)", run_dir)
        return None
    test, valid = evaluation.results["test"], evaluation.results["valid"]
    return {
        "run_dir": str(run_dir), "overrides": overrides, "test": test.metrics, "valid": valid.metrics,
        "test_cold_start": test.cold_start, "n_test_users": test.n_users, "n_cold_start_users": test.n_cold,
        "stage_seconds": seconds,
        "command": " ".join(["cemg run --config", config, *[f"--set {o}" for o in overrides]]),
    }


def markdown(rows: dict[str, dict], baselines: dict[str, dict]) -> str:
    ks = ("HR@5", "HR@10", "NDCG@5", "NDCG@10")
    fmt = lambda m: " | ".join(f"{m[k]:.4f}" if k in m else "" for k in ks)  # noqa: E731
    lines = [DOCS_SECTION, "",
             "Test split, full catalogue, items already in the history excluded; each model selected by "
             "validation NDCG@10. Command: `python bench/beauty_tables.py` (rows below name their own "
             f"commands); machine: {machine()}.", "",
             "| model | " + " | ".join(ks) + " |", "|---|" + "---|" * len(ks)]
    for name, m in PAPER.items():
        lines.append(f"| {name} | {fmt(m)} |")
    for name, entry in {**baselines, **rows}.items():
        lines.append(f"| {name} | {fmt(entry['test'])} |")
    lines += ["", "Cold start (paper Table 3): test users whose target has at most 5 training "
              "interactions; the paper's values did not survive in our copy.", "",
              "| model | cold users | " + " | ".join(ks) + " |", "|---|---|" + "---|" * len(ks)]
    for name, entry in {**baselines, **rows}.items():
        lines.append(f"| {name} | {entry['n_cold_start_users']} | {fmt(entry['test_cold_start'])} |")
    if "paired" in rows.get("CEMG", {}):
        lines += ["", "CEMG vs the TIGER configuration on the same test users (paired, "
                  "`cemg.evaluation.protocol.paired_test`): " + "; ".join(
                      f"{m} {t['mean_a']:.4f} vs {t['mean_b']:.4f}, t-test p = {t['t_pvalue']:.2g}, "
                      f"Wilcoxon p = {t['wilcoxon_pvalue']:.2g}" for m, t in rows["CEMG"]["paired"].items())]
    lines += ["", "Rows: " + "; ".join(f"{n}: `{e['command']}`" for n, e in {**baselines, **rows}.items()), ""]
    return "\n".join(lines)


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
    parser.add_argument("--config", default="configs/beauty.yaml")
    parser.add_argument("--no-train", action="store_true", help="only collect finished runs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    main_run = Path(load_config(args.config).run_dir)

    rows = {}
    for name, overrides in VARIANTS.items():
        entry = run_variant(args.config, overrides, not args.no_train, main_run)
        if entry is not None:
            rows[name] = entry
            log.info("%s: test %s", name, {k: round(v, 4) for k, v in entry["test"].items()})
    if "CEMG" in rows and "TIGER configuration" in rows:
        ranks = [EvalResult.load(Path(rows[n]["run_dir"]) / "evaluation", "test").ranks
                 for n in ("CEMG", "TIGER configuration")]
        rows["CEMG"]["paired"] = {m: paired_test(*ranks, m) for m in ("HR@10", "NDCG@10")}
    baselines = {}
    if BASELINES.is_file():
        saved = json.loads(BASELINES.read_text(encoding="utf-8"))
        labels = {"pop": "Pop", "sasrec": "SASRec (full softmax)", "gru4rec": "GRU4Rec"}
        baselines = {labels.get(k, k): {**v, "command": saved.get("command", "bench/baselines_beauty.py")}
                     for k, v in saved["models"].items()}
    atomic_write_text(RESULTS, json.dumps({"machine": machine(), "command": "python " + " ".join(sys.argv),
                                           "paper": PAPER, "runs": rows}, indent=2, default=str))
    log.info("wrote %s", RESULTS)
    section = markdown(rows, baselines)
    print(section)
    if not args.no_docs:
        write_docs(section)
        log.info("wrote %s (%s)", DOCS, DOCS_SECTION)


if __name__ == "__main__":
    main()
