"""Fusion variants (issue 12, point 4): does the paper's collaborative-guided attention beat simpler
ways of fusing an item's image v, text t and collaborative e_c, over seeds?

Run from the repository root (the configs read ../shared/data):

    python bench/fusion_variants.py --config configs/ml100k.yaml
    python bench/fusion_variants.py --config configs/toys.yaml
    python bench/fusion_variants.py --config configs/toys.yaml --no-train      # collect finished runs only

Variants (`tokenizer.fusion`, src/cemg/tokenizer/fusion.py): "attention" (the paper's: q = W_Q e_c),
"content_attention" (the same attention, q = W_Q [v; t]), "mean" (a_v = a_t = 1/2), "concat"
([v; t; e_c]). Each is one `cemg run --config C --seeds 42,43,44 --set tokenizer.fusion=V --set
run_dir=runs/<base>-fusion-V`: the tokenizer, generator and evaluation are retrained per seed,
everything else is the config's. A variant's folder starts as a copy of the base run's (the
config's run_dir, or --base) data, features and collab stages, so LightGCN and the encoders run
once for all four; "attention" is the default, so its folder also takes the base run's tokenizer,
generator and evaluation stages of every seed. The pipeline rechecks every copied stage's input
hash and rebuilds the ones whose inputs differ, so a copy is never trusted blindly. Without a
finished base run, the first variant builds the shared stages and the others copy them from it.

"attention" is also a row of the dataset's table (bench/<dataset>_tables.py: the default row, or the
row with the same --set overrides): seeds its own folder lacks are taken from that row
(`reference_from_table`), so `--variants concat mean content_attention` need not retrain it. On Toys
the variants ran before configs/toys.yaml took Lite2 images and the content prior's cold weight and
mixture, so they are collected with `--set features.image_model=efficientnet-lite0 --set
generator.content_prior.cold_weight=0 --set generator.content_prior.mixture=0` (the table's
"lite0_no_cold" row).

Reports test HR@5/10 and NDCG@5/10 (all users and cold-start targets, <= 5 training interactions)
as mean ± std over the seeds, and each variant against attention by a paired test across seeds and
across users (cemg.evaluation.seeds.compare_seeds). Writes bench/results/fusion_variants_<dataset>.json
with the command and the machine, and prints a markdown table. Finished seeds are also kept in
bench/results/per_user/fusion_<dataset> (bench/kept_results.py), so the variants can be trained in
different sessions.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from baselines_beauty import machine  # noqa: E402  (bench/ is on sys.path when run as a script)
from dataset_tables import cell, copy_shared, evaluation_hashes, run_command, seed_results, seeds_from_earlier  # noqa: E402
from kept_results import kept, with_kept  # noqa: E402
from cemg.artifacts import atomic_write_text  # noqa: E402
from cemg.config import load_config  # noqa: E402
from cemg.evaluation.seeds import compare_seeds, spread  # noqa: E402
from cemg.run_folder import SEEDED_STAGES, SHARED_STAGES  # noqa: E402
from cemg.tokenizer.fusion import FUSIONS  # noqa: E402

log = logging.getLogger("bench.fusion_variants")
KS = ("HR@5", "HR@10", "NDCG@5", "NDCG@10")
REFERENCE = "attention"
LABELS = {
    "attention": "attention (paper: q = W_Q e_c)",
    "content_attention": "content attention (q = W_Q [v; t])",
    "mean": "mean (a_v = a_t = 1/2)",
    "concat": "concat [v; t; e_c]",
}


def variant_dir(work: Path, base: Path, variant: str) -> Path:
    return work / f"{base.name}-fusion-{variant}"


def copy_stages(source: Path, target: Path, variant: str) -> None:
    """Start a variant's folder from the base run's stages (the pipeline rechecks their hashes); the
    reference variant has the base run's hash, so its trained stages are taken too."""
    reference = variant == REFERENCE
    copy_shared(target, (*SHARED_STAGES, *(SEEDED_STAGES if reference else ())), reference, source, SEEDED_STAGES)


def reference_from_table(dataset: str, config: str, seeds: list[int], overrides: list[str]) -> tuple[dict, str | None]:
    """The paper's attention is the config's default fusion, so the row of the dataset's table
    (bench/<dataset>_tables.py) run with the same overrides (its own run_dir aside: e.g. the default
    row, or the one without the content prior's cold weight) is the same configuration, trained from
    the same base run: its seeds stand in for those the reference's own folder lacks. They come from
    that row's run folder, else from bench/results/per_user, else as metrics only from the table's
    JSON (then they count in the test across seeds, not in the one across users). Returns ({}, None)
    where the table has no such row."""
    table = ROOT / "bench" / "results" / f"{dataset}_tables.json"
    if not table.is_file():
        return {}, None
    wanted = " ".join(run_command(config, seeds, overrides))
    for name, row in json.loads(table.read_text(encoding="utf-8")).get("rows", {}).items():
        words = row.get("command", "").split()
        run_dir = next((w.split("=", 1)[1] for w in words if w.startswith("run_dir=")), None)
        if run_dir is not None:
            at = words.index(f"run_dir={run_dir}")
            words = words[: at - 1] + words[at + 1 :]
        if " ".join(words) != wanted:
            continue
        folder = ROOT / (run_dir or load_config(config, overrides).run_dir)
        results = seed_results(folder, seeds)
        results.update({s: r for s, r in kept(dataset, name, seeds).items() if s not in results})
        results.update(seeds_from_earlier(row, row["command"], [s for s in seeds if s not in results]))
        return results, row["command"]
    return {}, None


def cemg_command(config: str, seeds: list[int], variant: str, run_dir: Path, extra: list[str]) -> list[str]:
    return run_command(config, seeds, [f"tokenizer.fusion={variant}", f"run_dir={run_dir}", *extra])


def train(cmd: list[str]) -> None:
    log.info("%s", " ".join(cmd))
    subprocess.run([sys.executable, "-m", "cemg", *cmd[1:]], check=True, cwd=ROOT,
                   env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})


def markdown(dataset: str, rows: dict, comparisons: dict, machine_name: str) -> str:
    lines = [f"Fusion variants on {dataset}: test split, full catalogue, mean ± std over seeds "
             "(tokenizer, generator and evaluation retrained per seed; data, features and LightGCN shared). "
             f"Machine: {machine_name}.", ""]
    for subset, title in (("all", "all test users"), ("cold_start", "cold-start targets (<= 5 training interactions)")):
        lines += [f"{title}:", "", "| fusion | seeds | users | " + " | ".join(KS) + " |",
                  "|---|---|---|" + "---|" * len(KS)]
        for variant, r in rows.items():
            test = r["spread"]["test"]
            users = test["n_users"] if subset == "all" else test["n_cold_start_users"]
            lines.append(f"| {LABELS[variant]} | {len(r['seeds'])} | {users:,} | "
                         + " | ".join(cell(test[subset][k]) for k in KS) + " |")
        lines.append("")
    if comparisons:
        lines += [f"Each variant against {REFERENCE} (A = {REFERENCE}; paired across seeds and across users, "
                  "cemg.evaluation.seeds.compare_seeds):", ""]
        for key, c in comparisons.items():
            if "HR@10" in key or "NDCG@10" in key:
                lines.append(f"- {key}: {c['verdict']}")
        lines.append("")
    lines += ["Commands:", *[f"- {LABELS[v]}: `{r['command']}`"
                             + (f" (seeds {r['seeds_from_table_default_row']}: a row of "
                                f"bench/{dataset}_tables.py)" if r.get("seeds_from_table_default_row") else "")
                             for v, r in rows.items()]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="e.g. configs/ml100k.yaml or configs/toys.yaml")
    parser.add_argument("--seeds", default="42,43,44")
    parser.add_argument("--variants", nargs="+", default=list(FUSIONS), choices=FUSIONS)
    parser.add_argument("--base", type=Path, help="run whose shared stages each variant starts from "
                                                  "(default: the config's run_dir)")
    parser.add_argument("--work", type=Path, default=Path("runs"), help="where the variants' run folders go")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="more overrides for every variant's `cemg run`")
    parser.add_argument("--out", type=Path, help="JSON file (default: bench/results/fusion_variants_<dataset>.json)")
    parser.add_argument("--no-train", action="store_true", help="only collect finished runs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.chdir(ROOT)
    seeds = [int(s) for s in args.seeds.split(",")]
    cfg = load_config(args.config, args.overrides)
    base = args.base or Path(cfg.run_dir)
    out = args.out or ROOT / "bench" / "results" / f"fusion_variants_{cfg.data.name}.json"
    variants = sorted(args.variants, key=lambda v: v != REFERENCE)  # the reference first

    commands = {v: cemg_command(args.config, seeds, v, variant_dir(args.work, base, v), args.overrides)
                for v in variants}
    if not args.no_train:
        source = base
        missing = [s for s in SHARED_STAGES if not (base / s / "manifest.json").is_file()]
        if missing:
            source = variant_dir(args.work, base, variants[0])
            log.warning("%s lacks the finished stages %s: the first variant builds them, the others copy them "
                        "from %s", base, ", ".join(missing), source)
        for variant in variants:
            target = variant_dir(args.work, base, variant)
            copy_stages(source if target != source else base, target, variant)
            train(commands[variant])

    per_variant, rows = {}, {}
    for variant in variants:
        run_dir = variant_dir(args.work, base, variant)
        from_runs = seed_results(run_dir, seeds)
        results = with_kept(f"fusion_{cfg.data.name}", variant, seeds, from_runs, " ".join(commands[variant]),
                            evaluation_hashes(run_dir, from_runs))
        borrowed: list[int] = []
        if variant == REFERENCE and set(results) != set(seeds) and cfg.tokenizer.fusion == REFERENCE:
            from_table, table_command = reference_from_table(cfg.data.name, args.config, seeds, args.overrides)
            borrowed = sorted(set(from_table) - set(results))
            if borrowed:
                log.info("%s: seeds %s from a row of bench/%s_tables.py (%s)", variant, borrowed,
                         cfg.data.name, table_command)
                results = {**{s: from_table[s] for s in borrowed}, **results}
                commands[variant] = table_command.split()
        if not results:
            log.warning("%s: no finished seed in %s", variant, run_dir)
            continue
        if set(results) != set(seeds):
            log.warning("%s: only seeds %s of %s are finished", variant, sorted(results), seeds)
        per_variant[variant] = results
        rows[variant] = {"label": LABELS[variant], "run_dir": str(run_dir), "seeds": sorted(results),
                         "command": " ".join(commands[variant]), "spread": spread(results),
                         "seeds_from_table_default_row": borrowed}
    comparisons = {}
    if REFERENCE in per_variant:
        for variant in [v for v in per_variant if v != REFERENCE]:
            for subset in ("all", "cold_start"):
                for metric in KS:
                    c = compare_seeds(per_variant[REFERENCE], per_variant[variant], metric, "test", subset)
                    key = f"{REFERENCE} vs {variant}, {metric}" + (" (cold start)" if subset == "cold_start" else "")
                    comparisons[key] = c.to_dict()
    machine_name = machine()
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps({
        "dataset": cfg.data.name, "config": args.config, "base_run": str(base), "seeds": seeds,
        "machine": machine_name, "command": "python " + " ".join(sys.argv), "rows": rows,
        "comparisons": comparisons,
    }, indent=2, default=str) + "\n")
    log.info("wrote %s", out)
    print(markdown(cfg.data.name, rows, comparisons, machine_name))


if __name__ == "__main__":
    main()
