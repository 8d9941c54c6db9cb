"""Where the backward of `x[idx]` stops being reproducible on a CPU, and that `index_select`'s is.

    python bench/index_backward_race.py     # a few seconds; writes bench/results/index_backward_race.json

The backward of tensor indexing is index_put_ with accumulate. PyTorch's CPU kernel runs it
serially below 32,768 scattered elements (its GRAIN_SIZE) or with one thread, and otherwise from
several threads with atomic float adds, whose order (and so the last bits of a row that several
indices hit) changes from call to call. `index_select`'s backward (index_add_) adds in index order.
Each case takes the gradient of sum(w * gather(x, idx)) 30 times from the same inputs (300 rows,
d=32, indices with repeats, as LightGCN's BPR batch and the generator's node gathers have) and
counts the distinct results: 1 means reproducible (a race can go unseen when the machine is busy
enough that the two threads seldom run at the same time).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from baselines_beauty import machine  # noqa: E402  (bench/ is on sys.path when run as a script)
from cemg.artifacts import atomic_write_text  # noqa: E402

ROWS, DIM, REPEATS = 300, 32, 30


def distinct_gradients(n_indices: int, threads: int, gather: str) -> int:
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(ROWS, DIM, generator=g)
    idx = torch.randint(ROWS, (n_indices,), generator=g)
    w = torch.randn(n_indices, DIM, generator=g)
    seen = set()
    for _ in range(REPEATS):
        leaf = x.clone().requires_grad_()
        y = leaf[idx] if gather == "x[idx]" else leaf.index_select(0, idx)
        (y * w).sum().backward()
        seen.add(leaf.grad.numpy().tobytes())
    return len(seen)


def main() -> None:
    cases = []
    for threads in (1, 2):
        for n_indices in (1000, 1024, 16384):  # 32,000, 32,768 and 524,288 scattered elements
            for gather in ("x[idx]", "index_select"):
                cases.append({"threads": threads, "indices": n_indices, "elements": n_indices * DIM,
                              "gather": gather, "distinct_gradients": distinct_gradients(n_indices, threads, gather)})
                print(json.dumps(cases[-1]), flush=True)
    result = {"command": "python bench/index_backward_race.py", "machine": machine(), "rows": ROWS, "dim": DIM,
              "repeats": REPEATS, "cases": cases}
    atomic_write_text(ROOT / "bench" / "results" / "index_backward_race.json", json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
