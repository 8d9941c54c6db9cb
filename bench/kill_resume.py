"""Kill -9 a real `cemg run` at random moments, rerun it until it finishes, and check that it ends
exactly where an uninterrupted run with the same seed ends.

    python bench/kill_resume.py                  # 2 threads per run; writes bench/results/kill_resume.json
    python bench/kill_resume.py --threads 1      # one thread, as the first version of this bench ran

Every run uses the demo config (src/cemg/configs/demo.yaml) with fewer epochs (see SMALL) and
`checkpoint_seconds=0`, so every training stage saves its state after each epoch. All runs share
one encoder cache, filled before the reference run: the comparison is about resuming, and the
text and image encoders' outputs are cached by content anyway. Each trial starts from an empty run
folder and kills the command `--kills` times, then lets it finish. The first kill of a trial aims at
one stage's training (`--targets`): once the run logs that the stage has started, it waits a time
drawn uniformly from [0, that stage's duration in the reference run) and kills; "any" draws from
[0, reference wall time) after launch, as do all later kills.
It records which stage each kill hit and the checkpoint that stage had, and compares the finished
run with the reference: every array file of the run folder byte for byte (`cemg.reproducibility`:
features, LightGCN embeddings, RQ-VAE weights, semantic ids, generator weights, per-user ranks) and
the valid/test metrics. A second uninterrupted run is compared with the reference the same way
first: resuming can only be judged where two plain runs agree, and with more than one thread they
did not before LightGCN's backward was made deterministic (docs/reliability.md).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from baselines_beauty import machine  # noqa: E402  (bench/ is on sys.path when run as a script)
from cemg.artifacts import atomic_write_text  # noqa: E402
from cemg.pipeline import STAGES  # noqa: E402
from cemg.reproducibility import compare_runs  # noqa: E402

CONFIG = ROOT / "src" / "cemg" / "configs" / "demo.yaml"
# Log lines that each training stage writes when its training starts (after its imports and setup).
STARTED = {
    "collab": "cemg.collab.lightgcn: LightGCN graph:",
    "tokenizer": "cemg.tokenizer.build: tokenizer: ",
    "generator": "cemg.generator.train: causal generator, ",
}
SMALL = ["collab.epochs=30", "tokenizer.epochs=40", "generator.causal.epochs=12", "checkpoint_seconds=0"]


def cemg_command(run_dir: Path, cache_dir: Path, until: str = "evaluation") -> list[str]:
    sets = [*SMALL, f"run_dir={run_dir}", f"cache_dir={cache_dir}"]
    return [str(Path(sys.executable).with_name("cemg")), "run", "--config", str(CONFIG), "--until", until,
            *sum((["--set", s] for s in sets), [])]


def launch(cmd: list[str], log: Path, threads: int) -> subprocess.Popen:
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": str(threads)}
    with open(log, "w") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def run_to_end(cmd: list[str], log: Path, threads: int) -> float:
    """Run to completion; the wall seconds it took."""
    start = time.perf_counter()
    proc = launch(cmd, log, threads)
    if proc.wait() != 0:
        sys.exit(f"{' '.join(cmd)} failed; see {log}")
    return time.perf_counter() - start


def stage_spans(log: Path, launched: float) -> dict[str, tuple[float, float]]:
    """Seconds after launch at which each built stage started and ended, from the run's log lines
    `HH:MM:SS cemg.pipeline: STAGE: built in S.Ss` (one-second resolution)."""
    day = datetime.datetime.fromtimestamp(launched).date()
    spans = {}
    for clock, stage, seconds in re.findall(r"^(\d\d:\d\d:\d\d) cemg\.pipeline: (\w+): built in ([\d.]+)s",
                                            log.read_text(), flags=re.M):
        end = datetime.datetime.combine(day, datetime.time.fromisoformat(clock)).timestamp() + 0.5 - launched
        spans[stage] = (max(0.0, end - float(seconds)), end)
    return spans


def wait_for(log: Path, marker: str, proc: subprocess.Popen) -> float | None:
    """Seconds until `marker` shows up in the log; None if the process ended first."""
    start = time.perf_counter()
    while proc.poll() is None:
        if marker in log.read_text(errors="replace"):
            return time.perf_counter() - start
        time.sleep(0.05)
    return None


def where(run_dir: Path) -> dict:
    """The first stage without a finished artifact, and the epoch its checkpoint holds (if any)."""
    import torch

    stage = next((s for s in STAGES if not (run_dir / s / "manifest.json").is_file()), None)
    state = None
    if stage is not None:
        files = list((run_dir / "checkpoints").glob(f"{stage}-*/state.pt"))
        if files:
            progress = torch.load(files[0], map_location="cpu", weights_only=True)["progress"]
            state = {k: progress[k] for k in ("epoch", "step") if k in progress}
    return {"stage": stage or "done", "checkpoint": state}


def metrics(run_dir: Path) -> dict:
    return {part: json.loads((run_dir / "evaluation" / f"{part}.json").read_text())["metrics"]
            for part in ("valid", "test")}


def compare(ref_dir: Path, run_dir: Path) -> dict:
    """Array files byte for byte, and metrics; `all_identical` only if both agree."""
    files = compare_runs(ref_dir, run_dir)
    same_metrics = metrics(ref_dir) == metrics(run_dir)
    return {"array_files": len(files.identical), "different_files": sorted(files.different),
            "missing_files": files.only_in_a + files.only_in_b, "metrics": same_metrics,
            "all_identical": files.same and same_metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", nargs="+", default=["collab", "tokenizer", "generator", "any"],
                        help="one trial per entry: the stage its first kill aims at, or 'any'")
    parser.add_argument("--kills", type=int, default=2, help="kills per trial before it may finish")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads of every run")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "kill_resume")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "kill_resume.json")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    work, cache = args.work, args.work / "cache"
    work.mkdir(parents=True, exist_ok=True)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)

    print("filling the encoder cache ...", flush=True)
    run_to_end(cemg_command(work / "warmup", cache, until="features"), logs / "warmup.txt", args.threads)
    ref_dir, rerun_dir = work / "reference", work / "rerun"
    for folder in (ref_dir, rerun_dir):
        if folder.exists():
            import shutil

            shutil.rmtree(folder)
    launched = time.time()
    ref_seconds = run_to_end(cemg_command(ref_dir, cache), logs / "reference.txt", args.threads)
    spans = stage_spans(logs / "reference.txt", launched)
    print(f"reference run: {ref_seconds:.1f}s, stage spans {spans}, test {metrics(ref_dir)['test']}", flush=True)
    run_to_end(cemg_command(rerun_dir, cache), logs / "rerun.txt", args.threads)
    rerun = compare(ref_dir, rerun_dir)
    print(f"uninterrupted rerun vs reference: {json.dumps(rerun)}", flush=True)

    trials = []
    for trial, target in enumerate(args.targets):
        run_dir = work / f"trial{trial}"
        if run_dir.exists():
            import shutil

            shutil.rmtree(run_dir)
        kills, attempt, start = [], 0, time.perf_counter()
        for k in range(args.kills):
            log = logs / f"trial{trial}-attempt{attempt}.txt"
            proc = launch(cemg_command(run_dir, cache), log, args.threads)
            aimed = k == 0 and target != "any"
            if aimed:
                lo, hi = spans[target]
                delay = float(rng.uniform(0.0, hi - lo))
                waited = wait_for(log, STARTED[target], proc)
                if waited is None:
                    sys.exit(f"{target} never logged {STARTED[target]!r} (see {log}); update STARTED")
                at = delay + waited
            else:
                at = float(rng.uniform(0.0, ref_seconds))
            try:
                proc.wait(timeout=delay if aimed else at)
                finished = True  # it ended before the kill time
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                finished = False
            resumed = re.findall(r"resuming from \S+/checkpoints/(\w+)-", log.read_text())
            kills.append({"after_s": round(at, 2), "finished_first": finished, "resumed_stages": resumed,
                          **({} if finished else where(run_dir))})
            attempt += 1
            if finished:
                break
        log = logs / f"trial{trial}-attempt{attempt}.txt"
        run_to_end(cemg_command(run_dir, cache), log, args.threads)
        final_resumed = re.findall(r"resuming from \S+/checkpoints/(\w+)-", log.read_text())
        same = compare(ref_dir, run_dir)
        trials.append({"trial": trial, "target": target, "kills": kills, "final_attempt_resumed": final_resumed,
                       "wall_s": round(time.perf_counter() - start, 1), "identical": same,
                       "all_identical": same["all_identical"],
                       "checkpoints_left": (run_dir / "checkpoints").exists()})
        print(json.dumps(trials[-1]), flush=True)

    result = {
        "command": " ".join(["python bench/kill_resume.py", *sys.argv[1:]]),
        "cemg_run": " ".join(["cemg", *cemg_command(Path("<run_dir>"), Path("<cache>"))[1:]]).replace(f"{ROOT}/", ""),
        "machine": machine(),
        "threads": args.threads,
        "reference_seconds": round(ref_seconds, 1),
        "reference_stage_spans_s": {k: [round(a, 1), round(b, 1)] for k, (a, b) in spans.items()},
        "reference_test_metrics": metrics(ref_dir)["test"],
        "uninterrupted_rerun": rerun,
        "trials": trials,
        "kills": sum(1 for t in trials for k in t["kills"] if not k["finished_first"]),
        "all_identical": rerun["all_identical"] and all(t["all_identical"] for t in trials),
    }
    atomic_write_text(args.out, json.dumps(result, indent=2))
    print(f"{result['kills']} kills over {len(trials)} trials; all identical: {result['all_identical']}; "
          f"wrote {args.out}")


if __name__ == "__main__":
    main()
