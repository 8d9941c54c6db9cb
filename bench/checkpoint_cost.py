"""What one training checkpoint costs at Beauty's size: the causal generator (12,101 items, d=64,
2 layers, item-id embeddings, codebooks 256/256/256/8) with its AdamW state and a best-so-far copy.

    OMP_NUM_THREADS=1 python bench/checkpoint_cost.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cemg.checkpoint import STATE_FILE, TrainingCheckpoint  # noqa: E402
from cemg.generator.causal import CausalSemanticModel, CausalSpec  # noqa: E402


def main(repeats: int = 5) -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    n = 12_101
    codes = np.stack([rng.integers(0, 256, n), rng.integers(0, 256, n), rng.integers(0, 256, n), np.arange(n) % 8], 1)
    model = CausalSemanticModel(CausalSpec((256, 256, 256, 8), n, use_item_id=True), codes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # creates the two moment buffers per parameter
    best = {k: v.clone() for k, v in model.state_dict().items()}
    with tempfile.TemporaryDirectory() as folder:
        ck = TrainingCheckpoint(Path(folder), every_seconds=0)
        start = time.perf_counter()
        for _ in range(repeats):
            ck.save(model=model, optimizer=optimizer, generators={"batches": rng}, epoch=1, best={"state": best})
        save = (time.perf_counter() - start) / repeats
        size = (Path(folder) / STATE_FILE).stat().st_size
        start = time.perf_counter()
        ck.restore(model=model, optimizer=optimizer, generators={"batches": rng})
        restore = time.perf_counter() - start
    params = sum(p.numel() for p in model.parameters())
    print(f"{params:,} parameters; checkpoint {size / 2**20:.1f} MiB; save {save * 1000:.0f} ms "
          f"(mean of {repeats}, fsync included); restore {restore * 1000:.0f} ms")


if __name__ == "__main__":
    main()
