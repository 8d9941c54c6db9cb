"""The toy task the generator tests share: 40 items with distinct random codes on an 8 x 8 x 4 grid,
and users who walk the catalogue in steps of +1, so the next item is fully determined."""

import numpy as np

from cemg.data.dataset import InteractionDataset, ItemTable
from cemg.data.split import leave_one_out
from cemg.tokenizer.semantic_ids import SemanticIds

N_ITEMS, SIZES = 40, [8, 8, 4]


def toy_ids(n_items=N_ITEMS, sizes=SIZES, seed=0):
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(k) for k in sizes], indexing="ij"), -1).reshape(-1, len(sizes))
    return SemanticIds(grid[rng.choice(len(grid), n_items, replace=False)], list(sizes))


def toy_split(n_users=150, seed=0):
    """Every user walks the catalogue in steps of +1 (mod N_ITEMS): the next item is determined."""
    rng = np.random.default_rng(seed)
    seqs = []
    for _ in range(n_users):
        start, length = rng.integers(N_ITEMS), rng.integers(5, 10)
        seqs.append((start + np.arange(length)) % N_ITEMS)
    items = ItemTable(keys=[f"i{i}" for i in range(N_ITEMS)])
    return leave_one_out(InteractionDataset("toy", [f"u{u}" for u in range(n_users)], seqs, items), 20)
