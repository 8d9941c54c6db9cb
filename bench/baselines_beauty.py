"""Popularity, SASRec and GRU4Rec on Amazon Beauty: full-catalogue leave-one-out HR@K / NDCG@K.

Run from the repository root (configs/beauty.yaml reads ../shared/data):

    python bench/baselines_beauty.py                           # the run reported in docs/results.md
    python bench/baselines_beauty.py --models sasrec baseline.dropout=0.3   # one model, tuned

Each model trains on the training sequences only, is selected by validation NDCG@10 and scored on
the test targets. Writes bench/results/baselines_beauty.json (test and validation metrics, epochs,
wall time, the machine) and, unless --no-docs, the "## Baselines on Beauty" table in
docs/results.md. Results of models not rerun are kept from the previous JSON.
"""

from __future__ import annotations

import os

# On a shared, oversubscribed CPU, OpenMP threads that spin at barriers waste their time slices:
# measured here at 5.9-9.6 s per SASRec step with the default policy and 1.8 s with PASSIVE. It must
# be set before torch loads the OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from cemg.artifacts import atomic_write_text  # noqa: E402
from cemg.baselines import BASELINES, train_baseline  # noqa: E402
from cemg.config import load_config, resolve_device  # noqa: E402
from cemg.data.load import load_dataset  # noqa: E402
from cemg.data.split import leave_one_out  # noqa: E402
from cemg.evaluation.protocol import evaluate  # noqa: E402

log = logging.getLogger("bench.baselines_beauty")

# One GRU layer as in Hidasi et al. (2016); a recurrent state needs less dropout than attention.
MODEL_DEFAULTS = {"gru4rec": ["baseline.layers=1", "baseline.dropout=0.3"]}
DOCS_SECTION = "## Baselines on Beauty"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():  # platform.processor() is empty on most Linux systems
        names = re.findall(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.M)
        cpu = names[0].strip() if names else cpu
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30 if hasattr(os, "sysconf") else 0
    return (f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} CPU cores, {ram:.0f} GiB, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads, "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'default')}), {gpu}")


def run_model(name: str, config: str, overrides: list[str], device: str) -> dict:
    cfg = load_config(config, MODEL_DEFAULTS.get(name, []) + overrides + [f"device={device}"])
    dataset = load_dataset(cfg.data, seed=cfg.seed, cache_dir=cfg.cache_dir)
    split = leave_one_out(dataset, cfg.data.max_history)
    start = time.perf_counter()
    model, report = train_baseline(name, split, cfg)
    train_seconds = time.perf_counter() - start
    valid = evaluate(model, split, "valid", cfg.evaluation)
    test = evaluate(model, split, "test", cfg.evaluation)
    log.info("%s test %s", name, {k: round(v, 4) for k, v in test.metrics.items()})
    return {
        "test": test.metrics,
        "test_cold_start": test.cold_start,
        "valid": valid.metrics,
        "n_test_users": test.n_users,
        "n_cold_start_users": test.n_cold,
        "epochs_run": report.epochs_run if report else 0,
        "best_epoch": report.best_epoch if report else 0,
        "train_seconds": train_seconds,
        "eval_seconds": valid.seconds + test.seconds,
        "config": cfg.baseline.model_dump() if report else None,
        "overrides": MODEL_DEFAULTS.get(name, []) + overrides,
        "history": report.history if report else [],
    }


def markdown_table(results: dict) -> str:
    lines = [
        "| model | test HR@5 | test HR@10 | test NDCG@5 | test NDCG@10 | valid NDCG@10 | epochs (best) | train time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in BASELINES:
        if name not in results["models"]:
            continue
        r = results["models"][name]
        t = r["test"]
        epochs = f"{r['epochs_run']} ({r['best_epoch']})" if r["epochs_run"] else "-"
        lines.append(
            f"| {name} | {t['HR@5']:.4f} | {t['HR@10']:.4f} | {t['NDCG@5']:.4f} | {t['NDCG@10']:.4f} "
            f"| {r['valid']['NDCG@10']:.4f} | {epochs} | {r['train_seconds'] / 60:.1f} min |"
        )
    return "\n".join(lines)


def write_docs(path: Path, results: dict) -> None:
    section = "\n".join([
        DOCS_SECTION,
        "",
        f"Command: `{results['command']}` (writes `bench/results/baselines_beauty.json`).",
        f"Machine: {results['machine']}.",
        "",
        "Full-catalogue ranking over all 12,101 items, leave-one-out (train on `seq[:-2]`, select by",
        "validation NDCG@10, report the last item), histories capped at 20, items already in the",
        "user's history excluded from the ranking. SASRec and GRU4Rec use a full softmax over all items",
        "at every position of the training window (hidden 64, Adam lr 1e-3, batch 128, validation every",
        "2 epochs, stop after 5 evaluations without a better NDCG@10). SASRec: 2 pre-LN blocks, 1 head,",
        "dropout 0.5 (the `baseline` config defaults); GRU4Rec: "
        + ", ".join(MODEL_DEFAULTS["gru4rec"]) + ".",
        "The machine was shared with other jobs during the run (load average 4 to 8 on its 2 cores), so",
        "train times are several times what an idle machine would take.",
        "",
        markdown_table(results),
        "",
    ])
    text = path.read_text(encoding="utf-8") if path.is_file() else "# Results\n\n"
    # Replace only our own section (up to the next "## " heading); other sections belong to others.
    pattern = re.compile(rf"^{re.escape(DOCS_SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    atomic_write_text(path, text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. baseline.dropout=0.3")
    parser.add_argument("--models", nargs="+", default=["sasrec", "gru4rec", "pop"], choices=BASELINES)
    parser.add_argument("--config", default="configs/beauty.yaml")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--out", type=Path, default=Path("bench/results/baselines_beauty.json"))
    parser.add_argument("--docs", type=Path, default=Path("docs/results.md"))
    parser.add_argument("--no-docs", action="store_true", help="do not touch docs/results.md")
    parser.add_argument("--docs-only", action="store_true", help="rewrite the docs table from --out; train nothing")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.docs_only:
        write_docs(args.docs, json.loads(args.out.read_text()))
        log.info("updated %s from %s", args.docs, args.out)
        return
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)

    results = json.loads(args.out.read_text()) if args.out.is_file() else {"models": {}}
    results["command"] = "python bench/baselines_beauty.py " + " ".join(
        [f"--threads {args.threads}", f"--models {' '.join(args.models)}", *args.overrides])
    results["machine"] = machine()
    for name in args.models:
        tic = time.perf_counter()
        results["models"][name] = run_model(name, args.config, args.overrides, device)
        results["models"][name]["wall_seconds"] = time.perf_counter() - tic
        results["models"][name]["command"] = results["command"]
        # Written after every model so a long run that is stopped keeps what it finished.
        atomic_write_text(args.out, json.dumps(results, indent=2))
        log.info("wrote %s (%s done in %.0fs)", args.out, name, time.perf_counter() - tic)
    print(markdown_table(results))
    if not args.no_docs:
        write_docs(args.docs, results)
        log.info("updated %s", args.docs)


if __name__ == "__main__":
    main()
