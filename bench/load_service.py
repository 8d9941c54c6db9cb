"""Load test of `cemg serve`: the real server in a subprocess, hammered with concurrent requests.

Run from the repository root:

    python bench/load_service.py                   # runs/demo; 1,000 requests 1,000 at once, then 64 at a time
    python bench/load_service.py --concurrency 64 --duration 30 --modes plain

For the plain and batched modes the script starts a uvicorn server on a free loopback port, waits for /health, sends
a fixed set of probe histories (also the warm-up) and `--sequential` requests one at a time,
then, for each `--concurrency` value, fires up to `--requests` POST /recommend requests with at
most that many in flight, stopping new ones after `--duration` seconds. In plain mode the same
burst against GET /health first measures what the HTTP stack alone costs at that concurrency.
It records throughput, client-side latency percentiles, responses by status (5xx counted
separately), transport errors, server and client CPU seconds, and the server's own /metrics.

Modes:
  plain    `cemg serve RUN_DIR --no-batching`: each request runs its own beam search, one at a time
           (the Recommender holds a lock around the generator).
  batched  `cemg serve RUN_DIR` with its default micro-batching (cemg.serve.batching.MicroBatcher):
           requests that arrive while the generator is busy are scored together in one
           `recommend_batch` call. The probe histories check it returns the same items.
  lone     no server: what the batcher adds to a lone request, in this process (1 torch thread).
           `--lone` histories, each sent through Recommender.recommend directly and through
           MicroBatcher with each `--lone-waits` value, in shuffled order per history.

If RUN_DIR has no trained generator, a demo run is built into a temporary folder first (minutes).
Writes bench/results/load_service.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

from cemg.serve.batching import BatchingConfig, MicroBatcher

log = logging.getLogger("bench.load_service")
ROOT = Path(__file__).resolve().parents[1]


# --- a run to serve -----------------------------------------------------------------------------


def finished_run(run_dir: Path) -> Path:
    from cemg.artifacts import read_manifest

    if read_manifest(run_dir / "generator") is not None and read_manifest(run_dir / "data") is not None:
        return run_dir
    from cemg.config import load_config
    from cemg.pipeline import run_pipeline

    tmp = Path(tempfile.mkdtemp(prefix="cemg-load-"))
    log.warning("%s has no finished run; building the demo into %s (several minutes)", run_dir, tmp)
    cfg = load_config(ROOT / "src" / "cemg" / "configs" / "demo.yaml",
                      [f"run_dir={tmp / 'run'}", f"cache_dir={tmp / 'cache'}"])
    run_pipeline(cfg)
    return cfg.run_dir


def item_keys(run_dir: Path) -> list[str]:
    return json.loads((run_dir / "data" / "meta.json").read_text(encoding="utf-8"))["item_keys"]


# --- server process -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(mode: str, run_dir: Path, port: int, threads: int, args) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TQDM_DISABLE="1")
    cmd = [sys.executable, "-c", "from cemg.cli import main; main()", "serve", str(run_dir),
           "--port", str(port), "--device", "cpu", "--quiet"]
    if mode == "plain":
        cmd.append("--no-batching")
    else:
        cmd += ["--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms)]
    log.info("starting %s server: %s", mode, " ".join(cmd))
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, start_new_session=True)


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # uvicorn shuts down cleanly on SIGINT
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc). On a shared machine, requests per
    server CPU-second is steadier than requests per wall-clock second."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_healthy(url: str, proc: subprocess.Popen, seconds: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before answering /health")
        try:
            if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                return time.monotonic() - start
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{url} did not answer /health within {seconds} s")


# --- load ---------------------------------------------------------------------------------------


def make_bodies(keys: list[str], n: int, seed: int, max_len: int = 20) -> list[dict]:
    """Histories of 1..max_len random items, as raw keys or indices (both forms the API takes)."""
    rng = random.Random(seed)
    bodies = []
    for _ in range(n):
        items = [rng.randrange(len(keys)) for _ in range(rng.randint(1, max_len))]
        history = [keys[i] for i in items] if rng.random() < 0.5 else items
        bodies.append({"history": history, "k": 10})
    return bodies


async def fire(url: str, bodies: list[dict | None], concurrency: int, duration: float, timeout: float) -> dict:
    """POST each body to /recommend (GET /health for None) with at most `concurrency` in flight;
    none is started after `duration` s. Latency runs from asking the client for the request
    (connection setup included) to the last byte of the answer."""
    latencies: list[float] = []
    status: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    start = time.perf_counter()
    not_started = 0

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as client:

        async def one(body: dict) -> None:
            nonlocal not_started
            async with gate:
                if time.perf_counter() - start > duration:
                    not_started += 1
                    return
                t0 = time.perf_counter()
                try:
                    if body is None:
                        response = await client.get("/health")
                    else:
                        response = await client.post("/recommend", json=body)
                except httpx.HTTPError as err:
                    errors[type(err).__name__] += 1
                    return
                latencies.append((time.perf_counter() - t0) * 1000.0)
                status[response.status_code] += 1

        await asyncio.gather(*(one(body) for body in bodies))
    wall = time.perf_counter() - start
    ms = np.asarray(latencies) if latencies else np.zeros(1)
    completed = int(sum(status.values()))
    return {
        "requests": len(bodies),
        "concurrency": concurrency,
        "completed": completed,
        "not_started_after_duration": not_started,
        "transport_errors": dict(errors),
        "status": {str(code): n for code, n in sorted(status.items())},
        "5xx": int(sum(n for code, n in status.items() if code >= 500)),
        "wall_s": round(wall, 2),
        "throughput_rps": round(completed / wall, 1),
        "latency_ms": {q: round(float(np.percentile(ms, p)), 1)
                       for q, p in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))},
    }


def probe(url: str, bodies: list[dict]) -> list[list[int]]:
    with httpx.Client(base_url=url, timeout=60) as client:
        return [[row["item"] for row in client.post("/recommend", json=b).json()["items"]] for b in bodies]


def lone_latency(run_dir: Path, n: int, waits_ms: list[float], seed: int = 0) -> dict:
    import torch

    from cemg.api import Recommender

    torch.set_num_threads(1)
    rec = Recommender.load(run_dir, device="cpu")
    rng = random.Random(seed)
    histories = [[rng.randrange(rec.n_items) for _ in range(rng.randint(1, 20))] for _ in range(n)]
    batchers = {f"batcher_wait_{w:g}ms": MicroBatcher(rec, max_wait_ms=w) for w in waits_ms}
    ways = {"direct": lambda h: rec.recommend(h, 10),
            **{name: lambda h, b=b: b.submit(h, 10).result() for name, b in batchers.items()}}
    ms: dict[str, list[float]] = {name: [] for name in ways}
    warmup = min(20, n // 5)
    for i, history in enumerate(histories):
        names = list(ways)
        rng.shuffle(names)  # no way always runs first, or always right after another
        for name in names:
            t0 = time.perf_counter()
            ways[name](history)
            if i >= warmup:
                ms[name].append((time.perf_counter() - t0) * 1000.0)
    for batcher in batchers.values():
        batcher.close()
    return {"histories": n, "warmup": warmup, "k": 10, "latency_ms": {
        name: {q: round(float(np.percentile(v, p)), 1) for q, p in (("p10", 10), ("p50", 50), ("p90", 90))}
        | {"mean": round(float(np.mean(v)), 1)} for name, v in ms.items()}}


def run_mode(mode: str, run_dir: Path, keys: list[str], args) -> dict:
    if mode == "lone":
        out = lone_latency(run_dir, args.lone, args.lone_waits)
        log.info("lone requests: %s", out)
        return out
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(mode, run_dir, port, args.server_threads, args)
    try:
        startup = wait_healthy(url, proc, args.startup_timeout)
        log.info("%s: healthy after %.1f s", mode, startup)
        answers = probe(url, make_bodies(keys, 20, seed=1))  # also the warm-up
        sequential = asyncio.run(fire(url, make_bodies(keys, args.sequential, seed=2), 1, args.duration, 60))
        log.info("%s sequential: %s", mode, sequential)
        out = {"startup_s": round(startup, 1), "sequential": sequential, "probe_items": answers}
        if mode == "plain":
            # The floor that HTTP alone sets: the same burst against /health, which does no work.
            out["health_burst"] = asyncio.run(fire(url, [None] * args.requests, max(args.concurrency), args.duration,
                                                   args.timeout))
            log.info("%s /health burst: %s", mode, out["health_burst"])
        for concurrency in args.concurrency:
            cpu0, client0 = cpu_seconds(proc.pid), time.process_time()
            loaded = asyncio.run(fire(url, make_bodies(keys, args.requests, seed=3), concurrency, args.duration,
                                      args.timeout))
            loaded["server_cpu_s"] = round(cpu_seconds(proc.pid) - cpu0, 1)
            loaded["client_cpu_s"] = round(time.process_time() - client0, 1)
            loaded["requests_per_server_cpu_s"] = round(loaded["completed"] / max(loaded["server_cpu_s"], 1e-9), 1)
            log.info("%s at concurrency %d: %s", mode, concurrency, loaded)
            out[f"loaded_c{concurrency}"] = loaded
        metrics = httpx.get(f"{url}/metrics", timeout=10).json()
        out["server_metrics"] = metrics.get("POST /recommend")
        if "batching" in metrics:
            out["batching"] = metrics["batching"]
        return out
    finally:
        stop_server(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "demo")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=lambda s: [int(c) for c in s.split(",")], default=[1000, 64],
                        help="requests in flight, one load phase per comma-separated value")
    parser.add_argument("--duration", type=float, default=120.0, help="no request starts after this many seconds")
    parser.add_argument("--timeout", type=float, default=300.0, help="per-request client timeout, s")
    parser.add_argument("--sequential", type=int, default=50, help="requests sent one at a time first")
    parser.add_argument("--modes", default="plain,batched,lone")
    parser.add_argument("--lone", type=int, default=300, help="histories in the lone mode")
    parser.add_argument("--lone-waits", type=lambda s: [float(w) for w in s.split(",")], default=[0.0, 2.0],
                        help="MicroBatcher max_wait_ms values the lone mode compares")
    parser.add_argument("--server-threads", type=int, default=1, help="torch/OpenMP threads of the server")
    parser.add_argument("--max-batch", type=int, default=BatchingConfig.max_batch)
    parser.add_argument("--max-wait-ms", type=float, default=BatchingConfig.max_wait_ms)
    parser.add_argument("--startup-timeout", type=float, default=300.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "load_service.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    run_dir = finished_run(args.run_dir)
    keys = item_keys(run_dir)
    load_before = os.getloadavg()
    results = {mode: run_mode(mode, run_dir, keys, args) for mode in args.modes.split(",")}
    if "plain" in results and "batched" in results:
        same = [a == b for a, b in zip(results["plain"]["probe_items"], results["batched"]["probe_items"])]
        results["batched_matches_plain"] = f"{sum(same)}/{len(same)} probe histories"
    manifest = json.loads((run_dir / "generator" / "manifest.json").read_text(encoding="utf-8"))
    results["setup"] = {
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "run_dir": str(run_dir),
        "items": len(keys),
        "generator": {k: manifest["config"].get(k) for k in ("backbone", "beams")},
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU used",
        "server_threads": args.server_threads,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2), encoding="utf-8")
    tmp.replace(args.out)
    log.info("wrote %s", args.out)
    for mode in args.modes.split(","):
        if mode == "lone":
            print(f"lone     {results[mode]['latency_ms']}")
            continue
        for concurrency in args.concurrency:
            r = results[mode][f"loaded_c{concurrency}"]
            print(f"{mode:8s} c={concurrency:<5d} {r['completed']}/{r['requests']} ok in {r['wall_s']} s: "
                  f"{r['throughput_rps']} req/s, p50 {r['latency_ms']['p50']} ms, p99 {r['latency_ms']['p99']} ms, "
                  f"5xx {r['5xx']}, errors {r['transport_errors']}, {r['requests_per_server_cpu_s']} req/server-CPU-s")


if __name__ == "__main__":
    main()
