"""Trie-constrained beam search over semantic ids (paper 4.2.4): every generated code sequence is an item.

One search for every backbone family. The driver (`beam_search`) keeps each user's beams on the
items' prefix tree, drops prefixes whose items are all excluded, and ranks by the sum over levels
of log p(code_l | history, codes_<l); what a family adds is a `BeamStep`, which scores one level's
codes for the live beams and carries its own state (a T5 decoder's token prefix and cache, the
causal model's prefix vector) from one level to the next.

The item codes, sorted lexicographically, form a prefix tree whose nodes at depth l are the distinct
length-l prefixes; the children of a node are a contiguous run of depth-(l+1) nodes, so each depth
is a CSR table (`child_start`, `child_code`). One decoding step turns the beams' nodes into a dense
(beams, K) table of next nodes with a few tensor ops, so the constraint costs no Python loop over
beams. Hugging Face's `generate` takes a `prefix_allowed_tokens_fn` called per beam in Python, which
is what this avoids.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

NEG_INF = float("-inf")


class PrefixTree:
    """The items' code prefixes as flat tensors; depth 0 is the root, depth L the items."""

    def __init__(self, codes: np.ndarray, codebook_sizes: Sequence[int]):
        codes = np.asarray(codes, dtype=np.int64)
        n_items, levels = codes.shape
        if n_items == 0:
            raise ValueError("cannot build a prefix tree over an empty catalogue")
        self.codebook_sizes = [int(k) for k in codebook_sizes]
        self.levels = levels
        self.n_items = n_items
        order = np.lexsort(codes.T[::-1])  # rows sorted by code 0, then code 1, ...
        ordered = codes[order]
        # node_of_row[l][r]: depth-l node holding sorted row r; a new node starts where the
        # length-l prefix changes.
        node_of_row = [np.zeros(n_items, np.int64)]
        for depth in range(1, levels + 1):
            changed = (ordered[1:, :depth] != ordered[:-1, :depth]).any(axis=1)
            node_of_row.append(np.concatenate([[0], np.cumsum(changed)]))
        if node_of_row[levels][-1] + 1 != n_items:
            raise ValueError("two items share a code sequence; constrained decoding needs unique ids")
        self.n_nodes = [int(rows[-1]) + 1 for rows in node_of_row]
        first_row = [np.searchsorted(rows, np.arange(n)) for rows, n in zip(node_of_row, self.n_nodes)]
        self.child_start: list[torch.Tensor] = []  # depth l: (n_nodes[l] + 1,) into depth l+1 nodes
        self.child_code: list[torch.Tensor] = [torch.zeros(1, dtype=torch.long)]  # depth l: (n_nodes[l],)
        self.subtree_size: list[torch.Tensor] = []  # depth l: (n_nodes[l],) items below the node
        self.ancestor: list[torch.Tensor] = []  # depth l: (n_items,) the item's depth-l node
        inverse = np.empty(n_items, np.int64)
        inverse[order] = np.arange(n_items)
        for depth in range(levels + 1):
            self.subtree_size.append(torch.from_numpy(np.bincount(node_of_row[depth])))
            self.ancestor.append(torch.from_numpy(node_of_row[depth][inverse]))
            if depth < levels:
                parent = node_of_row[depth][first_row[depth + 1]]  # parent of each depth-(l+1) node
                counts = np.bincount(parent, minlength=self.n_nodes[depth])
                self.child_start.append(torch.from_numpy(np.concatenate([[0], np.cumsum(counts)])))
                self.child_code.append(torch.from_numpy(ordered[first_row[depth + 1], depth]))
        self.leaf_item = torch.from_numpy(order)  # depth-L node -> item id

    @property
    def nbytes(self) -> int:
        """Bytes held by the tree's tables: O(items x levels), with no (nodes, K) table anywhere."""
        tensors = [*self.child_start, *self.child_code, *self.subtree_size, *self.ancestor, self.leaf_item]
        return sum(t.numel() * t.element_size() for t in tensors)

    def to(self, device: torch.device | str) -> PrefixTree:
        for name in ("child_start", "child_code", "subtree_size", "ancestor"):
            setattr(self, name, [t.to(device) for t in getattr(self, name)])
        self.leaf_item = self.leaf_item.to(device)
        return self

    def children(self, depth: int, nodes: torch.Tensor) -> torch.Tensor:
        """(R,) depth-l nodes (-1 = dead beam) -> (R, K_l) depth-(l+1) child per code, -1 where none."""
        size = self.codebook_sizes[depth]
        table = torch.full((len(nodes), size), -1, dtype=torch.long, device=nodes.device)
        rows = torch.nonzero(nodes >= 0).squeeze(1)
        start = self.child_start[depth][nodes[rows]]
        count = self.child_start[depth][nodes[rows] + 1] - start
        row_of = torch.repeat_interleave(rows, count)
        first = torch.repeat_interleave(start - (torch.cumsum(count, 0) - count), count)
        child = first + torch.arange(len(row_of), device=nodes.device)  # consecutive within a row
        table[row_of, self.child_code[depth + 1][child]] = child
        return table

    def node_codes(self, depth: int) -> torch.Tensor:
        """(n_nodes[depth], depth) the codes on the path from the root to each depth-`depth` node."""
        nodes = torch.arange(self.n_nodes[depth], device=self.leaf_item.device)
        codes = [self.child_code[depth][nodes]]  # depth >= 1: a node's own code
        for level in range(depth - 1, 0, -1):
            # A node's parent is the depth-(l-1) node whose child run holds it.
            nodes = torch.searchsorted(self.child_start[level], nodes, right=True) - 1
            codes.append(self.child_code[level][nodes])
        return torch.stack(codes[::-1], dim=1) if depth else torch.zeros((1, 0), dtype=torch.long)


def search_in_batches(
    module: torch.nn.Module,
    n_rows: int,
    k: int,
    batch_size: int,
    search: Callable[[int, int], tuple[torch.Tensor, torch.Tensor]],
) -> tuple[np.ndarray, np.ndarray]:
    """Run `search(lo, hi)` (rows lo..hi -> (items, scores) tensors, best first) over row batches
    with `module` in eval mode (restored after); keep the first k columns as numpy arrays."""
    was_training = module.training
    module.eval()
    items, scores = [], []
    step = max(1, batch_size)
    try:
        for lo in range(0, n_rows, step):
            top, score = search(lo, min(lo + step, n_rows))
            items.append(top[:, :k].cpu().numpy())
            scores.append(score[:, :k].cpu().numpy().astype(np.float32))
    finally:
        module.train(was_training)
    if not items:
        return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
    return np.concatenate(items), np.concatenate(scores)


@dataclass(frozen=True)
class Exclusion:
    """Per depth: sorted keys (user * n_nodes + node) and how many of the user's excluded items lie
    below that node. A node is dead for a user when all its items are excluded, so no beam is spent
    on a prefix that could only end in an excluded item."""

    keys: list[torch.Tensor]
    counts: list[torch.Tensor]

    @classmethod
    def build(cls, tree: PrefixTree, exclude: Sequence[np.ndarray], device: torch.device | str) -> Exclusion:
        users = np.concatenate([np.full(len(e), u, np.int64) for u, e in enumerate(exclude)] or [np.zeros(0, np.int64)])
        items = np.concatenate([np.asarray(e, np.int64) for e in exclude] or [np.zeros(0, np.int64)])
        if len(items) and (items.min() < 0 or items.max() >= tree.n_items):
            raise ValueError(f"exclude holds an item id outside [0, {tree.n_items})")
        pairs = np.unique(users * tree.n_items + items)  # repeated items count once
        users_t = torch.from_numpy(pairs // tree.n_items).to(device)
        items_t = torch.from_numpy(pairs % tree.n_items).to(device)
        keys, counts = [], []
        for depth in range(tree.levels + 1):
            key = users_t * tree.n_nodes[depth] + tree.ancestor[depth].to(device)[items_t]
            uniq, count = torch.unique(key, return_counts=True)
            keys.append(uniq)
            counts.append(count)
        return cls(keys, counts)

    def dead(self, tree: PrefixTree, depth: int, users: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
        """Boolean like `nodes` (depth-l node ids, -1 ignored): every item below is excluded."""
        keys = self.keys[depth]
        if len(keys) == 0:
            return torch.zeros_like(nodes, dtype=torch.bool)
        key = users * tree.n_nodes[depth] + nodes.clamp(min=0)
        pos = torch.searchsorted(keys, key).clamp(max=len(keys) - 1)
        excluded = torch.where(keys[pos] == key, self.counts[depth][pos], 0)
        return (nodes >= 0) & (excluded >= tree.subtree_size[depth][nodes.clamp(min=0)])


class BeamStep(Protocol):
    """What a backbone family gives the search: the scores of one level, and its state carried on.

    Beams are rows `user * width + beam`, grouped by user; `width` is 1 at the root and the number
    of beams kept after each level.
    """

    def log_probs(self, depth: int, child: torch.Tensor) -> torch.Tensor:
        """(n * width, K_depth) log-probabilities of the level's codes for every beam. `child`, same
        shape, is the prefix-tree node each code leads to (-1: none), for a family whose scores
        depend on the tree (trie softmax, node vectors); codes that lead nowhere are masked after."""
        ...

    def advance(self, depth: int, parent: torch.Tensor, code: torch.Tensor) -> None:
        """The beams kept after level `depth`, (n, keep) each: the beam each extends and its code."""
        ...


@torch.no_grad()
def beam_search(
    tree: PrefixTree,
    step: BeamStep,
    n: int,
    beams: int,
    exclusion: Exclusion | None = None,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-`beams` items for each of `n` users, best first: (items (n, beams), scores (n, beams)).

    A score is the sum over levels of the step's log-probabilities along the item's codes. Rows
    with fewer valid items than beams are padded with item -1 and score -inf.
    """
    if n == 0:
        return torch.zeros((0, beams), dtype=torch.long), torch.zeros((0, beams))
    users = torch.arange(n, device=device)
    nodes = torch.zeros((n, 1), dtype=torch.long, device=device)  # (n, width) depth-l nodes
    scores = torch.zeros((n, 1), device=device)
    if exclusion is not None:
        root_dead = exclusion.dead(tree, 0, users, nodes[:, 0])
        nodes[root_dead] = -1
        scores[root_dead] = NEG_INF
    for depth in range(tree.levels):
        width, size = nodes.shape[1], tree.codebook_sizes[depth]
        child = tree.children(depth, nodes.reshape(-1))  # (n * width, K)
        log_probs = step.log_probs(depth, child)  # (n * width, K)
        allowed = child >= 0
        if exclusion is not None:
            # Only real children are looked up: most of the dense (beams, K) table is empty, and the
            # lookup (a searchsorted per entry) was 60% of recommendation time when run on all of it.
            rows, codes = allowed.nonzero(as_tuple=True)
            dead = exclusion.dead(tree, depth + 1, torch.div(rows, width, rounding_mode="floor"), child[rows, codes])
            allowed[rows[dead], codes[dead]] = False
        candidates = torch.where(allowed, scores.reshape(-1, 1) + log_probs, NEG_INF).reshape(n, width * size)
        keep = min(beams, width * size)
        scores, picked = candidates.topk(keep, dim=1)  # sorted, best first
        nodes = child.reshape(n, width * size).gather(1, picked)
        nodes[scores == NEG_INF] = -1
        if depth + 1 == tree.levels:
            break
        step.advance(depth, picked // size, picked % size)
    items = torch.where(nodes >= 0, tree.leaf_item[nodes.clamp(min=0)], -1)
    if items.shape[1] < beams:
        pad = beams - items.shape[1]
        items = F.pad(items, (0, pad), value=-1)
        scores = F.pad(scores, (0, pad), value=NEG_INF)
    return items, scores
