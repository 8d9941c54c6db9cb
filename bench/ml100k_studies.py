"""The paper's studies (section 5: Table 3, Figures 2-4) on MovieLens-100K with ML-1M posters.

Every run is `cemg.pipeline.run_pipeline` on configs/ml100k.yaml (the causal generator) with a few
overrides; results go to bench/results/ml100k_<study>.json, rewritten after every run so a killed
study keeps what it finished. From the repository root, venv active:

    python bench/ml100k_studies.py tune                    # generator settings, by validation
    python bench/ml100k_studies.py full                    # Table 3: overall + cold start, vs Pop / SASRec
    python bench/ml100k_studies.py ablation                # Figure 2: w/o collab / image / text, generator size
    python bench/ml100k_studies.py sensitivity             # Figure 4: M, K, beta, gamma one at a time
    python bench/ml100k_studies.py efficiency              # Figure 3: time per stage, users/s, peak RSS
    python bench/ml100k_studies.py report                  # markdown tables + docs/img/ml100k_*.png

Why ML-100K: it is the one dataset here with real images, so every modality can be ablated, and its
943 users make a whole pipeline run a few minutes on a CPU. The paper's studies use Amazon data, so
only the direction of an effect can be compared with the paper, never the value.

Run sharing. A run lives in runs/ml100k-studies/<study>/<variant>-s<seed>/. Before it starts, the
stage folders it lacks are copied from runs/ml100k-studies/base-s<seed>/ (the full model at the
config's settings); the pipeline keeps a copied stage only when its inputs hash matches the
variant's config, so an ablation of the tokenizer reuses data, features and LightGCN, and a
generator-only change reuses the tokenizer too. Text and image vectors come from the encoder cache
(--cache-dir), so the features stage is PCA only.
"""

from __future__ import annotations

import os

# One thread, and passive OpenMP waits: the machine is shared (see cemg/cli.py); set before torch loads.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import cemg  # noqa: E402
from baselines_beauty import machine  # noqa: E402  (bench/ is on sys.path when run as a script)
from cemg.artifacts import atomic_write_text  # noqa: E402
from cemg.config import CEMGConfig, load_config  # noqa: E402
from cemg.evaluation.metrics import summarize  # noqa: E402
from cemg.evaluation.protocol import EvalResult, evaluate, paired_test  # noqa: E402
from cemg.pipeline import STAGES, RunResult, run_pipeline  # noqa: E402

log = logging.getLogger("bench.ml100k_studies")

CONFIG = Path("configs/ml100k.yaml")
WORK = Path("runs/ml100k-studies")
RESULTS = Path("bench/results")
IMAGES = Path("docs/img")
METRICS = ("HR@5", "HR@10", "NDCG@5", "NDCG@10")
# Paper Table 3's cold start (targets with <= 5 training interactions) leaves 5 of 943 ML-100K test
# users after 5-core filtering: too few to say anything. The long tail (<= 20 training interactions,
# 91 test users; 20 is about the 35th percentile of items' training counts) is our addition.
LONG_TAIL_MAX_TRAIN = 20

# Figure 2. A pretrained T5 cannot be loaded offline, so "small vs large" compares the default
# causal generator (d 64, 2 layers, 2 heads) with a 4x wider-and-deeper one built from scratch.
ABLATIONS: dict[str, list[str]] = {
    "full": [],
    "w/o collab": ["tokenizer.use_collab=false"],
    "w/o image": ["tokenizer.use_image=false"],
    "w/o text": ["tokenizer.use_text=false"],
    "large generator": ["generator.causal.hidden=128", "generator.causal.layers=4", "generator.causal.heads=4"],
}
# Figure 4: the paper's grids for M and K; beta and gamma around our defaults (1.0, 0.1).
SENSITIVITY: dict[str, tuple[str, list[Any]]] = {
    "M": ("tokenizer.levels", [2, 3, 4, 5]),
    "K": ("tokenizer.codebook_size", [64, 128, 256, 512]),
    "beta": ("tokenizer.beta", [0.25, 0.5, 1.0, 2.0]),
    "gamma": ("tokenizer.gamma", [0.0, 0.05, 0.1, 0.5]),
}
# Generator candidates for configs/ml100k.yaml, scored on validation only (`tune`). Beauty's
# defaults (batch 256) give ML-100K's 943 training windows just 4 steps per epoch.
_PROTOCOL = ["generator.backbone=causal", "generator.eval_every=2", "generator.patience=5",
             "generator.valid_users=null", "generator.causal.epochs=60"]
TUNE: dict[str, list[str]] = {
    "batch 128, codebook softmax": [*_PROTOCOL, "generator.batch_size=128", "generator.causal.trie_softmax=false"],
    "batch 128, trie softmax": [*_PROTOCOL, "generator.batch_size=128", "generator.causal.trie_softmax=true"],
    "batch 256, codebook softmax": [*_PROTOCOL, "generator.batch_size=256", "generator.causal.trie_softmax=false"],
}


# --- running one variant ------------------------------------------------------------------------


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def study_config(args: argparse.Namespace, run_dir: Path, seed: int, overrides: list[str]) -> CEMGConfig:
    return load_config(args.config, [*overrides, f"seed={seed}", f"run_dir={run_dir}", f"cache_dir={args.cache_dir}"])


def seed_run_dir(run_dir: Path, donor: Path) -> list[str]:
    """Copy the donor's stage folders that `run_dir` lacks; returns the stages copied. A copied stage
    whose inputs hash differs from the variant's is rebuilt by the pipeline, so this only saves time."""
    copied = []
    if run_dir.resolve() == donor.resolve() or not donor.is_dir():
        return copied
    for stage in STAGES:
        if (donor / stage / "manifest.json").is_file() and not (run_dir / stage).exists():
            shutil.copytree(donor / stage, run_dir / stage)
            copied.append(stage)
    return copied


def subgroup(result: EvalResult, mask: np.ndarray, ks: list[int]) -> dict[str, Any]:
    return {**summarize(result.ranks[mask], ks), "n_users": int(mask.sum())}


def summarise_run(result: RunResult, cfg: CEMGConfig) -> dict[str, Any]:
    """The numbers the studies report, from one pipeline run that went at least to the tokenizer."""
    record: dict[str, Any] = {"tokenizer": tokenizer_summary(result.artifacts["tokenizer"].report),
                              "stage_seconds": {k: round(v, 2) for k, v in result.seconds.items()},
                              "reused": list(result.reused)}
    if "evaluation" not in result.artifacts:
        return record
    split = result.artifacts["split"]
    counts = split.train_item_counts()
    evaluation = result.artifacts["evaluation"].results
    for part in ("valid", "test"):
        res = evaluation[part]
        targets = split.part(part).targets
        if not np.array_equal(res.users, split.part(part).users):
            raise RuntimeError(f"{result.run_dir}: {part} results do not follow the split's user order")
        record[part] = res.metrics
        record[f"{part}_cold_start"] = {**res.cold_start, "n_users": res.n_cold}
        record[f"{part}_long_tail"] = subgroup(res, counts[targets] <= LONG_TAIL_MAX_TRAIN, cfg.evaluation.ks)
    info = result.artifacts["generator"].info
    record["generator"] = {k: info.get(k) for k in ("best_epoch", "epochs_run", "n_parameters", "seconds",
                                                     "train_seconds_per_epoch", "best_valid_ndcg10")}
    test = evaluation["test"]
    record["inference_users_per_s"] = test.n_users / test.seconds if test.seconds > 0 else None
    return record


def tokenizer_summary(report: dict[str, Any]) -> dict[str, Any]:
    return {
        "collision_rate": report["collisions"]["rate_before_fix"],
        "max_group_size": report["collisions"]["max_group_size"],
        "id_levels": report["semantic_ids"]["levels"],
        "utilisation": [round(level["utilisation"], 4) for level in report["levels"]],
        "perplexity": [round(level["perplexity"], 1) for level in report["levels"]],
        "recon_mse": report["reconstruction"]["mse"],
        "modalities": report["inputs"]["modalities"],
        "mean_alpha_image": report["alphas"].get("mean_alpha_image"),
    }


def run_variant(args: argparse.Namespace, study: str, name: str, seed: int, overrides: list[str],
                stop_after: str = "evaluation") -> dict[str, Any]:
    """Run (or resume) one variant of a study; `name` "base" is the shared donor run itself."""
    base = WORK / f"base-s{seed}"
    run_dir = base if name == "base" else WORK / study / f"{slug(name)}-s{seed}"
    cfg = study_config(args, run_dir, seed, overrides)
    if name != "base":
        base_cfg = study_config(args, base, seed, [])
        if not (base / "evaluation").is_dir():
            log.info("building the shared base run %s first", base)
            run_pipeline(base_cfg)
    copied = seed_run_dir(run_dir, base)
    start = time.perf_counter()
    log.info("%s / %s (seed %d): %s -> %s%s", study, name, seed, overrides or "config defaults", run_dir,
             f" (copied {', '.join(copied)} from {base})" if copied else "")
    result = run_pipeline(cfg, stop_after=stop_after)
    record = {"name": name, "seed": seed, "overrides": overrides, "run_dir": str(run_dir),
              **summarise_run(result, cfg), "wall_seconds": round(time.perf_counter() - start, 1)}
    scores = (f"valid NDCG@10 {record['valid']['NDCG@10']:.4f}, test HR@10 {record['test']['HR@10']:.4f} "
              f"NDCG@10 {record['test']['NDCG@10']:.4f}, ") if "test" in record else ""
    log.info("%s / %s (seed %d): %scollisions %.2f%%, %.0fs (reused %s)", study, name, seed, scores,
             100 * record["tokenizer"]["collision_rate"], record["wall_seconds"], ", ".join(record["reused"]) or "nothing")
    return record


# --- results files --------------------------------------------------------------------------------


def results_path(study: str) -> Path:
    return RESULTS / f"ml100k_{study}.json"


def load_results(study: str) -> dict[str, Any]:
    path = results_path(study)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"runs": {}}


def save_results(study: str, results: dict[str, Any], args: argparse.Namespace) -> None:
    cfg = load_config(args.config)
    results.update({
        "study": study,
        "dataset": "ML-100K (RecBole atomic files, 5-core: 943 users, 1,349 items) with ML-1M posters",
        "config": str(args.config),
        "generator_config": cfg.generator.model_dump(mode="json"),
        "tokenizer_config": cfg.tokenizer.model_dump(mode="json"),
        "command": "python " + " ".join(sys.argv),
        "machine": machine(),
        "cemg_source": str(Path(cemg.__file__).parent),  # the studies may run from a snapshot of a commit
        "long_tail_max_train": LONG_TAIL_MAX_TRAIN,
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
    })
    atomic_write_text(results_path(study), json.dumps(results, indent=2, default=str))
    log.info("wrote %s (%d runs)", results_path(study), len(results.get("runs", {})))


def record_run(study: str, key: str, record: dict[str, Any], args: argparse.Namespace) -> None:
    results = load_results(study)
    results.setdefault("runs", {})[key] = record
    save_results(study, results, args)


def mean_std(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=float)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0, "n": len(arr)}


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample std over seeds of every reported metric."""
    out: dict[str, Any] = {"seeds": [r["seed"] for r in runs]}
    for group in ("valid", "test", "test_cold_start", "test_long_tail"):
        out[group] = {m: mean_std([r[group][m] for r in runs]) for m in METRICS}
        if "n_users" in runs[0][group]:
            out[group]["n_users"] = runs[0][group]["n_users"]
    if "tokenizer" in runs[0]:  # CEMG runs; baselines have no semantic ids
        out["collision_rate"] = mean_std([r["tokenizer"]["collision_rate"] for r in runs])
    return out


# --- studies --------------------------------------------------------------------------------------


def cmd_tune(args: argparse.Namespace) -> None:
    for name, overrides in TUNE.items():
        record_run("tune", name, run_variant(args, "tune", name, args.seed, overrides), args)


def cmd_full(args: argparse.Namespace) -> None:
    """Table 3: the full model over seeds, and the baselines in the same protocol."""
    from cemg.baselines import train_baseline

    for seed in args.seeds:
        record_run("full", f"CEMG-s{seed}", run_variant(args, "full", "base", seed, []), args)
    for name in args.baselines:
        for seed in ([args.seeds[0]] if name == "pop" else args.seeds):
            if f"{name}-s{seed}" in load_results("full")["runs"] and not args.retrain:
                log.info("%s (seed %d): already in %s; --retrain to train it again", name, seed, results_path("full"))
                continue
            # The base run's data stage: the same split the CEMG runs of this seed were scored on.
            cfg = study_config(args, WORK / f"base-s{seed}", seed, [])
            result = run_pipeline(cfg, stop_after="data")
            split = result.artifacts["split"]
            start = time.perf_counter()
            model, report = train_baseline(name, split, cfg)
            seconds = time.perf_counter() - start
            counts = split.train_item_counts()
            record: dict[str, Any] = {"name": name, "seed": seed, "train_seconds": round(seconds, 1),
                                      "best_epoch": getattr(report, "best_epoch", None)}
            for part in ("valid", "test"):
                res = evaluate(model, split, part, cfg.evaluation)
                record[part] = res.metrics
                record[f"{part}_cold_start"] = {**res.cold_start, "n_users": res.n_cold}
                record[f"{part}_long_tail"] = subgroup(res, counts[split.part(part).targets] <= LONG_TAIL_MAX_TRAIN,
                                                       cfg.evaluation.ks)
            log.info("%s (seed %d): test HR@10 %.4f NDCG@10 %.4f, %.0fs", name, seed, record["test"]["HR@10"],
                     record["test"]["NDCG@10"], seconds)
            record_run("full", f"{name}-s{seed}", record, args)
    results = load_results("full")
    groups: dict[str, list] = {}
    for record in results["runs"].values():
        groups.setdefault("CEMG" if record["name"] == "base" else record["name"], []).append(record)
    results["summary"] = {name: aggregate(runs) for name, runs in groups.items()}
    save_results("full", results, args)


def cmd_ablation(args: argparse.Namespace) -> None:
    names = args.variants or list(ABLATIONS)
    for seed in args.seeds:
        for name in names:
            run_name = "base" if name == "full" else name
            record = run_variant(args, "ablation", run_name, seed, ABLATIONS[name])
            record["name"] = name
            record_run("ablation", f"{name}-s{seed}", record, args)
    results = load_results("ablation")
    by_name: dict[str, list] = {}
    for record in results["runs"].values():
        by_name.setdefault(record["name"], []).append(record)
    results["summary"] = {name: aggregate(runs) for name, runs in by_name.items()}
    # Seeds are few, so also test each variant against the full model on the same test users
    # (paired over users, per seed): the user-sampling part of the noise, which seeds do not show.
    for name, runs in by_name.items():
        if name == "full":
            continue
        tests = {}
        for record in runs:
            full = results["runs"].get(f"full-s{record['seed']}")
            if full is not None:
                tests[str(record["seed"])] = paired_test(test_ranks(full), test_ranks(record), "NDCG@10")
        results["summary"][name]["paired_vs_full_test_NDCG@10"] = tests
    save_results("ablation", results, args)


def test_ranks(record: dict[str, Any]) -> np.ndarray:
    return EvalResult.load(Path(record["run_dir"]) / "evaluation", "test").ranks


def cmd_sensitivity(args: argparse.Namespace) -> None:
    for param in args.params:
        field, values = SENSITIVITY[param]
        for value in (args.values or values):
            name = f"{param}={value}"
            record = run_variant(args, "sensitivity", name, args.seed, [f"{field}={value}"],
                                 "tokenizer" if args.tokenizer_only else "evaluation")
            record.update(param=param, value=value)
            record_run("sensitivity", f"{name}-s{args.seed}", record, args)


def cmd_efficiency(args: argparse.Namespace) -> None:
    """Figure 3: one fresh end-to-end run, stage by stage, then inference at several beam widths.

    Each stage is its own run_pipeline call (stop_after), so wall time, CPU time and the process's
    peak RSS so far are read between stages; earlier stages are loaded, not rebuilt, by later calls.
    """
    run_dir = WORK / f"base-s{args.seed}" if args.reuse else WORK / "efficiency" / f"s{args.seed}"
    if not args.reuse:
        shutil.rmtree(run_dir, ignore_errors=True)
    cfg = study_config(args, run_dir, args.seed, [])
    stages: dict[str, Any] = {}
    result = None
    for stage in STAGES:
        if stage == "collab" and not cfg.tokenizer.use_collab:
            continue
        cpu, wall = time.process_time(), time.perf_counter()
        result = run_pipeline(cfg, stop_after=stage)
        stages[stage] = {"stage_seconds": round(result.seconds[stage], 2), "reused": stage in result.reused,
                         "call_wall_seconds": round(time.perf_counter() - wall, 2),
                         "call_cpu_seconds": round(time.process_time() - cpu, 2),
                         "peak_rss_mb_so_far": round(peak_rss_mb(), 1)}
        log.info("efficiency: %s %s", stage, stages[stage])
    assert result is not None
    generator, split = result.artifacts["generator"], result.artifacts["split"]
    inference = {}
    for beams in args.beams:
        generator.config = generator.config.model_copy(update={"beams": beams})
        runs = [evaluate(generator, split, "test", cfg.evaluation) for _ in range(args.repeats)]
        seconds = float(np.median([r.seconds for r in runs]))
        inference[str(beams)] = {"users": runs[0].n_users, "median_seconds": round(seconds, 3),
                                 "users_per_s": round(runs[0].n_users / seconds, 1),
                                 "test_NDCG@10": runs[0].metrics["NDCG@10"]}
        log.info("efficiency: beam %d, %.0f users/s", beams, runs[0].n_users / seconds)
    results = {"runs": {f"s{args.seed}": {
        "run_dir": str(run_dir), "stages": stages, "inference": inference,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "generator_parameters": generator.info.get("n_parameters"),
        "generator_epochs_run": generator.info.get("epochs_run"),
        "note": "features: PCA over cached encoder outputs (cache_dir); see docs/results.md Item features "
                "for the encoders' own times",
    }}}
    save_results("efficiency", results, args)


# --- report ---------------------------------------------------------------------------------------


def _pm(stat: dict[str, float], digits: int = 4) -> str:
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}" if stat["n"] > 1 else f"{stat['mean']:.{digits}f}"


def report_full() -> list[str]:
    results = load_results("full")
    if "summary" not in results:
        return []
    lines = ["| model | seeds | test HR@5 | test HR@10 | test NDCG@5 | test NDCG@10 | cold-start HR@10 | "
             "cold-start NDCG@10 | long-tail HR@10 | long-tail NDCG@10 |", "|" + "---|" * 10]
    for name, s in results["summary"].items():
        lines.append(f"| {name} | {len(s['seeds'])} | " + " | ".join(_pm(s["test"][m]) for m in METRICS) + " | "
                     + " | ".join(_pm(s[g][m]) for g in ("test_cold_start", "test_long_tail")
                                  for m in ("HR@10", "NDCG@10")) + " |")
    first = next(iter(results["summary"].values()))
    lines.append(f"\nCold start: {first['test_cold_start']['n_users']} test users; long tail: "
                 f"{first['test_long_tail']['n_users']} test users (of 943).")
    return lines


def report_ablation() -> list[str]:
    results = load_results("ablation")
    if "summary" not in results:
        return []
    lines = ["| variant | seeds | test HR@5 | test HR@10 | test NDCG@5 | test NDCG@10 | valid NDCG@10 | "
             "long-tail NDCG@10 | cold-start HR@10 | collisions | paired p vs full (t, per seed) |", "|" + "---|" * 11]
    for name, s in results["summary"].items():
        tests = s.get("paired_vs_full_test_NDCG@10", {})
        pvalues = ", ".join(f"{t['t_pvalue']:.2f}" for t in tests.values()) or "-"
        lines.append(f"| {name} | {len(s['seeds'])} | " + " | ".join(_pm(s["test"][m]) for m in METRICS)
                     + f" | {_pm(s['valid']['NDCG@10'])} | {_pm(s['test_long_tail']['NDCG@10'])} | "
                     f"{_pm(s['test_cold_start']['HR@10'])} | {100 * s['collision_rate']['mean']:.2f}% | {pvalues} |")
    _plot_ablation(results["summary"], list(results["runs"].values()))
    return lines


def report_sensitivity() -> list[str]:
    runs = sorted(load_results("sensitivity").get("runs", {}).values(),
                  key=lambda r: (list(SENSITIVITY).index(r["param"]), r["value"]))
    if not runs:
        return []
    lines = ["| parameter | value | collisions | codes used per level | recon MSE | valid HR@10 | valid NDCG@10 | "
             "test HR@10 | test NDCG@10 | tokenizer s |", "|" + "---|" * 10]
    for r in runs:
        t = r["tokenizer"]
        scores = [f"{r[part][m]:.4f}" if part in r else "-" for part in ("valid", "test") for m in ("HR@10", "NDCG@10")]
        lines.append(f"| {r['param']} | {r['value']} | {100 * t['collision_rate']:.2f}% | "
                     f"{' / '.join(f'{u:.2f}' for u in t['utilisation'])} | {t['recon_mse']:.3f} | "
                     + " | ".join(scores) + f" | {r['stage_seconds'].get('tokenizer', 0):.0f} |")
    _plot_sensitivity(runs)
    return lines


def report_efficiency() -> list[str]:
    runs = load_results("efficiency").get("runs", {})
    lines = []
    for key, r in runs.items():
        lines += ["| stage | wall s | CPU s | peak RSS so far (MB) |", "|---|---|---|---|"]
        for stage, s in r["stages"].items():
            cpu = "(reused)" if s.get("reused") else f"{s['call_cpu_seconds']:.1f}"
            lines.append(f"| {stage} | {s['stage_seconds']:.1f} | {cpu} | {s['peak_rss_mb_so_far']:.0f} |")
        lines += ["", "| beam | test users | users/s | test NDCG@10 |", "|---|---|---|---|"]
        for beams, s in r["inference"].items():
            lines.append(f"| {beams} | {s['users']} | {s['users_per_s']:.0f} | {s['test_NDCG@10']:.4f} |")
    return lines


def report_tune() -> list[str]:
    runs = load_results("tune").get("runs", {})
    if not runs:
        return []
    lines = ["| candidate | valid HR@10 | valid NDCG@10 | best epoch / run | generator s |", "|---|---|---|---|---|"]
    for name, r in runs.items():
        g = r["generator"]
        lines.append(f"| {name} | {r['valid']['HR@10']:.4f} | {r['valid']['NDCG@10']:.4f} | "
                     f"{g['best_epoch']} / {g['epochs_run']} | {g['seconds']:.0f} |")
    return lines


def _plot_ablation(summary: dict[str, Any], runs: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    x = np.arange(len(names))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, metric in zip(axes, ("HR@10", "NDCG@10")):
        means = [summary[n]["test"][metric]["mean"] for n in names]
        stds = [summary[n]["test"][metric]["std"] for n in names]
        ax.bar(x, means, yerr=stds, capsize=4, color=["#4c72b0"] + ["#9aa9c4"] * (len(names) - 1))
        for i, name in enumerate(names):  # one dot per seed: with 2-3 seeds the spread says more than a std
            seeds = [r["test"][metric] for r in runs if r["name"] == name]
            ax.plot([i] * len(seeds), seeds, "k.", markersize=5)
        ax.set_xticks(x, names, rotation=20, ha="right")
        ax.set_title(f"test {metric} (mean ± std over seeds)")
    fig.suptitle("CEMG ablations on ML-100K (causal generator)")
    fig.tight_layout()
    IMAGES.mkdir(parents=True, exist_ok=True)
    fig.savefig(IMAGES / "ml100k_ablation.png", dpi=110)
    plt.close(fig)


def _plot_sensitivity(runs: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params = [p for p in SENSITIVITY if any(r["param"] == p for r in runs)]
    fig, axes = plt.subplots(1, len(params), figsize=(3.4 * len(params), 3.2), squeeze=False)
    for ax, param in zip(axes[0], params):
        rows = [r for r in runs if r["param"] == param]
        xs = np.arange(len(rows))
        scored = [i for i, r in enumerate(rows) if "test" in r]
        for part, style in (("valid", "o-"), ("test", "s--")):
            if scored:
                ax.plot(xs[scored], [rows[i][part]["NDCG@10"] for i in scored], style, label=f"{part} NDCG@10")
        ax.set_xticks(xs, [str(r["value"]) for r in rows])
        ax.set_xlabel(param)
        twin = ax.twinx()
        collisions = [100 * r["tokenizer"]["collision_rate"] for r in rows]
        twin.plot(xs, collisions, "^:", color="grey", label="collisions")
        twin.set_ylim(0, max(1.0, 1.1 * max(collisions)))
        twin.set_ylabel("collisions (%)", color="grey")
        if scored:
            ax.legend(fontsize=7, loc="lower left")
        else:
            ax.set_yticks([])
            ax.set_title("tokenizer only", fontsize=8)
    fig.suptitle("Sensitivity on ML-100K (seed 42; one parameter at a time around M=4, K=64, beta=1, gamma=0.1)")
    fig.tight_layout()
    IMAGES.mkdir(parents=True, exist_ok=True)
    fig.savefig(IMAGES / "ml100k_sensitivity.png", dpi=110)
    plt.close(fig)


def cmd_report(args: argparse.Namespace) -> None:
    for title, lines in (("Generator tuning (validation)", report_tune()), ("Table 3: cold start", report_full()),
                         ("Figure 2: ablations", report_ablation()), ("Figure 4: sensitivity", report_sensitivity()),
                         ("Figure 3: efficiency", report_efficiency())):
        if lines:
            print(f"### {title}\n")
            print("\n".join(lines) + "\n")


# --- entry point ----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--cache-dir", type=Path, default=Path("runs/ml100k-all/cache"),
                        help="encoder cache (text and image vectors); see docs/results.md Item features")
    parser.add_argument("--threads", type=int, default=1)
    sub = parser.add_subparsers(dest="study", required=True)
    tune = sub.add_parser("tune", help="generator candidates for configs/ml100k.yaml (validation)")
    tune.add_argument("--seed", type=int, default=42)
    full = sub.add_parser("full", help="Table 3: full model and baselines, overall and cold start")
    full.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    full.add_argument("--baselines", nargs="*", default=["pop", "sasrec"])
    full.add_argument("--retrain", action="store_true", help="train baselines already in the results again")
    ablation = sub.add_parser("ablation", help="Figure 2")
    ablation.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    ablation.add_argument("--variants", nargs="*", choices=list(ABLATIONS), default=None)
    sens = sub.add_parser("sensitivity", help="Figure 4")
    sens.add_argument("--seed", type=int, default=42)
    sens.add_argument("--params", nargs="+", choices=list(SENSITIVITY), default=list(SENSITIVITY))
    sens.add_argument("--values", nargs="*", type=float, default=None, help="override the grid (one param)")
    sens.add_argument("--tokenizer-only", action="store_true",
                      help="stop after the tokenizer: collisions and code use, no generator")
    eff = sub.add_parser("efficiency", help="Figure 3")
    eff.add_argument("--seed", type=int, default=42)
    eff.add_argument("--beams", type=int, nargs="+", default=[10, 20, 50])
    eff.add_argument("--repeats", type=int, default=3)
    eff.add_argument("--reuse", action="store_true",
                     help="time stages from the base run's manifests (built earlier) instead of a fresh run; "
                          "CPU time and peak RSS then cover loading only")
    sub.add_parser("report", help="markdown tables and docs/img/ml100k_*.png from the JSON results")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    if args.study == "sensitivity" and args.values and len(args.params) != 1:
        parser.error("--values needs exactly one --params")
    if args.study == "sensitivity" and args.values:
        kind = type(SENSITIVITY[args.params[0]][1][0])
        args.values = [kind(v) for v in args.values]
    {"tune": cmd_tune, "full": cmd_full, "ablation": cmd_ablation, "sensitivity": cmd_sensitivity,
     "efficiency": cmd_efficiency, "report": cmd_report}[args.study](args)


if __name__ == "__main__":
    main()
