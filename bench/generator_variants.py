"""Generator variants on one set of semantic ids, each a real `cemg run`, selected by validation.

    python bench/generator_variants.py --base runs/beauty --name semantic-60ep \
        generator.causal.epochs=60
    python bench/generator_variants.py --base runs/beauty --name hybrid generator.mode=hybrid
    python bench/generator_variants.py --base runs/beauty --show          # the table so far (valid only)

Each variant copies the base run's finished upstream stages (data, features, collab, tokenizer)
into `<base>-variants/<name>`, so every variant reads the very same semantic ids, and then runs
`cemg run --config <the base run's config.yaml> --set run_dir=... <overrides>`, which retrains the
generator and evaluates it. Valid and test metrics (overall and on cold-start targets) are merged,
with the command, the run's generator info and the machine, into bench/results/generator_variants_<base>.json.
`--show` prints validation numbers only: settings are chosen on validation, and test is read once
per chosen setting (docs/results.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from baselines_beauty import machine  # noqa: E402  (bench/ is on sys.path when run as a script)
from cemg.artifacts import atomic_write_text  # noqa: E402

UPSTREAM = ("data", "features", "collab", "tokenizer")


def results_path(base: Path) -> Path:
    return ROOT / "bench" / "results" / f"generator_variants_{base.name}.json"


def prepare(base: Path, target: Path) -> None:
    """The base run's upstream stages and config in a fresh folder (nothing downstream)."""
    missing = [s for s in UPSTREAM if not (base / s / "manifest.json").is_file()]
    if missing:
        sys.exit(f"{base}: stages {missing} are not finished; run `cemg run --until tokenizer` there first")
    target.mkdir(parents=True, exist_ok=True)
    for stage in UPSTREAM:
        if not (target / stage).exists():
            shutil.copytree(base / stage, target / stage)
    shutil.copy(base / "config.yaml", target / "base_config.yaml")


def run_variant(base: Path, name: str, overrides: list[str], threads: int) -> dict:
    target = Path(f"{base}-variants") / name
    prepare(base, target)
    cmd = [sys.executable, "-m", "cemg", "run", "--config", str(target / "base_config.yaml"), "--quiet",
           "--set", f"run_dir={target}", *sum((["--set", o] for o in overrides), [])]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE"}
    start = time.perf_counter()
    with open(target / "variant.log", "w") as log:
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed; see {target / 'variant.log'}")
    for stage in UPSTREAM:  # the variant must not have rebuilt an upstream stage
        if json.loads((target / stage / "manifest.json").read_text())["inputs_hash"] != \
                json.loads((base / stage / "manifest.json").read_text())["inputs_hash"]:
            sys.exit(f"{name}: the override changed stage {stage}; this bench compares generators on fixed ids")
    evaluation = {part: json.loads((target / "evaluation" / f"{part}.json").read_text()) for part in ("valid", "test")}
    meta = next(p for p in ("causal.json", "generator.json") if (target / "generator" / p).is_file())
    info = json.loads((target / "generator" / meta).read_text())["info"]
    return {
        "command": "python bench/generator_variants.py --base " + f"{base} --name {name} " + " ".join(overrides),
        "overrides": overrides,
        "mode": info.get("mode"), "backbone": info.get("backbone"), "parameters": info.get("n_parameters"),
        "best_epoch": info.get("best_epoch"), "epochs_run": info.get("epochs_run"),
        "train_seconds": info.get("seconds"), "wall_seconds": round(time.perf_counter() - start, 1),
        "valid": {"metrics": evaluation["valid"]["metrics"], "cold_start": evaluation["valid"]["cold_start"]},
        "test": {"metrics": evaluation["test"]["metrics"], "cold_start": evaluation["test"]["cold_start"],
                 "n_cold_start_users": evaluation["test"]["n_cold_start_users"]},
        "threads": threads, "machine": machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, required=True, help="a run folder finished through the tokenizer")
    parser.add_argument("--name", help="the variant's name (its folder and JSON key)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--show", action="store_true", help="print the validation table and exit")
    parser.add_argument("overrides", nargs="*", help="config overrides, section.key=value")
    args = parser.parse_args()
    path = results_path(args.base)
    results = json.loads(path.read_text()) if path.is_file() else {}
    if args.show:
        print(f"{'variant':40s} {'mode':9s} {'params':>9s} {'best/run':>8s} {'vHR@10':>7s} {'vNDCG@10':>8s} {'vcoldHR@10':>10s}")
        for name, r in results.items():
            v, c = r["valid"]["metrics"], r["valid"]["cold_start"]
            print(f"{name:40s} {str(r['mode']):9s} {str(r['parameters']):>9s} "
                  f"{r['best_epoch']}/{r['epochs_run']:<5} {v['HR@10']:7.4f} {v['NDCG@10']:8.4f} {c['HR@10']:10.4f}")
        return
    if not args.name:
        parser.error("--name is required unless --show")
    results[args.name] = run_variant(args.base, args.name, args.overrides, args.threads)
    path.parent.mkdir(parents=True, exist_ok=True)
    # re-read: another variant may have finished meanwhile
    merged = json.loads(path.read_text()) if path.is_file() else {}
    merged[args.name] = results[args.name]
    atomic_write_text(path, json.dumps(merged, indent=2) + "\n")
    v = results[args.name]["valid"]
    print(f"{args.name}: valid HR@10 {v['metrics']['HR@10']:.4f} NDCG@10 {v['metrics']['NDCG@10']:.4f} "
          f"cold HR@10 {v['cold_start']['HR@10']:.4f}")


if __name__ == "__main__":
    main()
