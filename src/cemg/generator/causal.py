"""A causal item-level generative recommender over semantic ids that trains like SASRec (not in the paper).

The paper's generator (t5.py) is a T5 reading M tokens per history item, trained on one sliding
window per prefix; on a CPU that costs tens of minutes per Beauty epoch. Here:

- each history item enters as ONE vector, the sum of its code embeddings sum_l E_l[c_l] (semantic
  mode: plus an MLP of them; hybrid mode: plus a learned item-id embedding), so a history of n
  items is n positions, not n * M;
- a small decoder-only transformer (Hugging Face GPT-2 or Llama, built from a config) runs once
  over a user's training window and predicts the next item at EVERY position, as SASRec does;
- the next item's codes come out level by level: logits_l = head_l(h_t + sum_{j<l} P_j[c_j]) over
  the K_l codes of level l, trained with teacher forcing (sum of the levels' cross-entropies);
- recommendation is the shared trie-constrained beam search (search.py) fed by `CausalStep`, so
  every returned code sequence is a real item, as in paper 4.2.4. A beam step costs one small head
  on (users, beams, d): the transformer runs once per user;
- `CausalFamily` is what the shared trainer (train.py) needs: one window per user and its loss.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel, GPT2Config, GPT2Model, LlamaConfig, LlamaModel

from cemg import distributed
from cemg.checkpoint import TrainingCheckpoint
from cemg.config import EvalConfig, GeneratorConfig, resolve_device
from cemg.data.split import SplitDataset
from cemg.generator.recommender import SemanticIdRecommender, load_generator_meta, save_generator_meta
from cemg.generator.search import Exclusion, PrefixTree, beam_search
from cemg.generator.train import length_bucketed_batches, train_family
from cemg.tokenizer.semantic_ids import SemanticIds

META = "causal.json"
HEADS_FILE = "heads.safetensors"
NEG_INF = float("-inf")


@dataclasses.dataclass(frozen=True)
class CausalSpec:
    """The architecture, enough to rebuild the model before loading its weights."""

    codebook_sizes: tuple[int, ...]
    n_items: int
    max_history: int = 20
    hidden: int = 64
    layers: int = 2
    heads: int = 2
    dropout: float = 0.3
    backbone: str = "gpt2"
    mode: str = "semantic"  # "semantic": no per-item parameter; "hybrid": item and node tables
    tie_codes: bool = True
    trie_softmax: bool = False
    composed_inputs: bool = False
    composed_outputs: bool = False
    composed_width: int = 1  # hidden width of the composing MLPs, in multiples of `hidden`
    composed_leaf_codes: bool = False  # a node holding one item composes from all its codes
    content_dim: int = 0  # width of the item content vectors the model reads; 0: none

    @property
    def per_item_parameters(self) -> bool:
        return self.mode == "hybrid"

    @classmethod
    def from_config(cls, cfg: GeneratorConfig, semantic_ids: SemanticIds, max_history: int,
                    content_dim: int = 0) -> CausalSpec:
        """`content_dim`: the width of the item content the model is given (needed, and only
        allowed, with `generator.causal.content_features`)."""
        c = cfg.causal
        if c.content_features != (content_dim > 0):
            raise ValueError("generator.causal.content_features needs the items' content vectors" if content_dim == 0
                             else "item content given but generator.causal.content_features is off")
        semantic = cfg.mode == "semantic"
        return cls(
            tuple(semantic_ids.codebook_sizes), semantic_ids.n_items, max_history, c.hidden, c.layers, c.heads,
            c.dropout, c.backbone, cfg.mode, c.tie_codes, c.trie_softmax,
            semantic and c.composed_inputs, semantic and c.composed_outputs, c.composed_width,
            c.composed_leaf_codes, content_dim,
        )


def _zero_last(mlp: nn.Sequential) -> nn.Sequential:
    """Zero the MLP's last layer, so a branch added to a residual sum starts as a no-op."""
    nn.init.zeros_(mlp[-1].weight)
    if mlp[-1].bias is not None:
        nn.init.zeros_(mlp[-1].bias)
    return mlp


def build_causal_backbone(spec: CausalSpec) -> nn.Module:
    """A from-scratch decoder-only transformer fed with `inputs_embeds` (its token table is unused,
    so it gets a vocabulary of one)."""
    if spec.hidden % spec.heads:
        raise ValueError(f"causal_hidden {spec.hidden} is not divisible by causal_heads {spec.heads}")
    if spec.backbone == "gpt2":
        config = GPT2Config(
            vocab_size=1, n_positions=spec.max_history, n_embd=spec.hidden, n_layer=spec.layers,
            n_head=spec.heads, n_inner=4 * spec.hidden, resid_pdrop=spec.dropout, attn_pdrop=spec.dropout,
            embd_pdrop=0.0,  # the model drops its own inputs (the same for both backbones)
            bos_token_id=None, eos_token_id=None,
        )
        return GPT2Model(config)
    if spec.backbone == "llama":
        config = LlamaConfig(
            vocab_size=1, hidden_size=spec.hidden, intermediate_size=4 * spec.hidden,
            num_hidden_layers=spec.layers, num_attention_heads=spec.heads, num_key_value_heads=spec.heads,
            max_position_embeddings=spec.max_history, attention_dropout=spec.dropout,
            bos_token_id=None, eos_token_id=None, pad_token_id=None,
        )
        return LlamaModel(config)
    raise ValueError(f"unknown causal backbone {spec.backbone!r}; expected 'gpt2' or 'llama'")


class CausalSemanticModel(nn.Module):
    """Histories of item ids -> per-position states; states + code prefixes -> next-level logits.

    `content` (n_items, spec.content_dim): the items' content vectors, when the spec reads them.
    They are data, not parameters (saved with the heads so a loaded model has them): a new item
    brings its own."""

    def __init__(self, spec: CausalSpec, codes: np.ndarray, backbone: nn.Module | None = None,
                 content: np.ndarray | torch.Tensor | None = None):
        super().__init__()
        codes = np.asarray(codes, dtype=np.int64)
        if codes.shape != (spec.n_items, len(spec.codebook_sizes)):
            raise ValueError(f"codes of shape {codes.shape} do not match {spec.n_items} items x "
                             f"{len(spec.codebook_sizes)} levels")
        if (content is None) != (spec.content_dim == 0) or (
                content is not None and tuple(content.shape) != (spec.n_items, spec.content_dim)):
            raise ValueError(f"the spec reads content of width {spec.content_dim} for {spec.n_items} items; given "
                             f"{None if content is None else tuple(content.shape)}")
        self.spec = spec
        d, sizes = spec.hidden, list(spec.codebook_sizes)
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self.offsets = [int(o) for o in offsets]
        self.register_buffer("item_tokens", torch.from_numpy(codes + offsets[None, :]), persistent=False)
        # E_l (inputs, and outputs when tied) and P_l (the prefix a level's head is conditioned on),
        # each one table over all levels' codes, level l at rows offsets[l]:offsets[l] + K_l.
        self.code_emb = nn.Embedding(sum(sizes), d)
        self.prefix_emb = nn.Embedding(sum(sizes), d)
        hybrid = spec.per_item_parameters
        self.item_emb = nn.Embedding(spec.n_items, d) if hybrid else None
        # The item tree, for the node terms below (built once whichever of them needs it).
        tree = PrefixTree(codes, sizes) if (hybrid or spec.composed_outputs or content is not None) else None
        # Semantic mode: a nonlinear function of the item's codes, so the input vector is more than
        # a sum of shared code vectors (items that share 3 of 4 codes differ by one vector in a sum).
        self.input_mlp = None
        if spec.composed_inputs:
            width = spec.composed_width * d
            self.input_mlp = _zero_last(nn.Sequential(
                nn.Linear(len(sizes) * d, width), nn.GELU(), nn.Linear(width, d)))
        # Content: E_in . c_item joins the input vector; a depth-l node's output vector gains
        # E_out_l . (mean content of its items), zero at start like the other node terms.
        self.content_in = self.content_out = None
        if content is not None:
            self.register_buffer("item_content", torch.as_tensor(content, dtype=torch.float32).clone())
            self.content_in = nn.Linear(spec.content_dim, d, bias=False)
            nn.init.normal_(self.content_in.weight, std=0.02)
            self.content_out = nn.ModuleList(nn.Linear(spec.content_dim, d, bias=False) for _ in sizes)
            for layer in self.content_out:
                nn.init.zeros_(layer.weight)
            for level in range(len(sizes)):
                depth = level + 1
                sums = torch.zeros((tree.n_nodes[depth], spec.content_dim)).index_add_(
                    0, tree.ancestor[depth], self.item_content)
                self.register_buffer(f"node_content_{level}", sums / tree.subtree_size[depth][:, None].float(),
                                     persistent=False)
        self.input_dropout = nn.Dropout(spec.dropout)
        self.backbone = backbone if backbone is not None else build_causal_backbone(spec)
        self.level_mlp = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU(), nn.Dropout(spec.dropout), nn.Linear(d, d))
            for _ in sizes
        )
        if spec.tie_codes:
            self.level_bias = nn.ParameterList(nn.Parameter(torch.zeros(k)) for k in sizes)
        else:
            self.level_out = nn.ModuleList(nn.Linear(d, k) for k in sizes)
        # Output vectors per prefix-tree node below the root's children: a level-l code means a
        # different item group under every prefix, and 256 shared code vectors cannot tell ~12k
        # items apart; a node's own vector adds u . O[node] to its code's logit (zero at start).
        # Hybrid: O is a learned table (its deepest rows are one vector per item). Semantic:
        # O[node] = MLP_l(sum of the path's code vectors), computed from the node's codes alone.
        self.node_emb = None
        self.node_mlp = None
        self._node_paths: list[torch.Tensor] = []
        if hybrid or spec.composed_outputs:
            if hybrid:
                self.node_emb = nn.ModuleList(nn.Embedding(tree.n_nodes[level + 1], d) for level in range(1, len(sizes)))
                for table in self.node_emb:
                    nn.init.zeros_(table.weight)
            else:
                self.path_emb = nn.Embedding(sum(sizes), d)
                nn.init.normal_(self.path_emb.weight, std=0.02)
                self.node_mlp = nn.ModuleList(
                    # No bias on the last layer: it would add the same u . b to every sibling's logit,
                    # which trie softmax cancels, so its gradient is zero up to float noise that Adam
                    # then amplifies into lr-sized steps (and two runs that sum in another order,
                    # e.g. one process against two, drift apart).
                    _zero_last(nn.Sequential(nn.LayerNorm(d), nn.Linear(d, spec.composed_width * d), nn.GELU(),
                                             nn.Linear(spec.composed_width * d, d, bias=False)))
                    for _ in range(1, len(sizes)))
                tokens = torch.from_numpy(codes + offsets[None, :])
                for level in range(1, len(sizes)):
                    # (nodes, L) offset codes, -1 past the node's depth
                    paths = torch.full((tree.n_nodes[level + 1], len(sizes)), -1, dtype=torch.long)
                    paths[:, : level + 1] = tree.node_codes(level + 1) + torch.as_tensor(offsets[: level + 1])
                    if spec.composed_leaf_codes:
                        # A node with one item below it is that item: compose its vector from all of
                        # the item's codes, so the finer levels (which decide nothing in the tree once
                        # the item is alone) still describe it.
                        single = tree.subtree_size[level + 1] == 1
                        item_of_node = torch.full((tree.n_nodes[level + 1],), -1, dtype=torch.long)
                        item_of_node[tree.ancestor[level + 1]] = torch.arange(spec.n_items)
                        paths[single] = tokens[item_of_node[single]]
                    self.register_buffer(f"node_paths_{level}", paths, persistent=False)
        # GPT-2's own initialisation scale for everything outside the backbone: N(0, 1) embeddings,
        # summed over M levels, would drown the position embeddings.
        for table in (self.code_emb, self.prefix_emb, self.item_emb):
            if table is not None:
                nn.init.normal_(table.weight, std=0.02)

    @property
    def has_node_vectors(self) -> bool:
        return self.node_emb is not None or self.node_mlp is not None or self.content_out is not None

    def scores_nodes(self, level: int) -> bool:
        """Whether level `level`'s logits add the child nodes' output vectors (the codes and
        paths below the first level, content at every level)."""
        return self.content_out is not None or (level > 0 and (self.node_emb is not None or self.node_mlp is not None))

    @property
    def levels(self) -> int:
        return len(self.spec.codebook_sizes)

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        """(...) item ids >= 0 -> (..., d): sum_l E_l[code_l], plus an MLP of the codes (semantic,
        composed inputs) or the item's own embedding (hybrid)."""
        codes = self.code_emb(self.item_tokens[items])  # (..., L, d)
        x = codes.sum(-2)
        if self.input_mlp is not None:
            x = x + self.input_mlp(codes.flatten(-2))
        if self.content_in is not None:
            x = x + self.content_in(self.item_content[items])
        return x + self.item_emb(items) if self.item_emb is not None else x

    def encode(self, items: torch.Tensor) -> torch.Tensor:
        """(b, T) item ids, left-padded with -1 -> (b, T, d) states; position t predicts item t+1.

        Positions count from the right end of a max_history window, so the newest item always has
        the same position whatever the batch's width (batches are trimmed to their longest row).
        """
        b, width = items.shape
        if width > self.spec.max_history:
            raise ValueError(f"{width} history items exceed max_history {self.spec.max_history}")
        real = items >= 0
        x = self.item_vectors(items.clamp(min=0)) * real.unsqueeze(-1)
        x = self.input_dropout(x)
        # The last position is always attended to, so an empty history still has a query row.
        mask = real.clone()
        mask[:, -1] = True
        positions = torch.arange(self.spec.max_history - width, self.spec.max_history, device=items.device)
        out = self.backbone(inputs_embeds=x, attention_mask=mask.long(), position_ids=positions.expand(b, width))
        return out.last_hidden_state

    def level_logits(self, level: int, z: torch.Tensor, child: torch.Tensor | None = None) -> torch.Tensor:
        """(..., d) state plus code prefix -> (..., K_level) logits over the level's codes.

        `child` (..., K_level): the prefix-tree node each code leads to (-1: none); with node
        vectors (hybrid, or composed outputs) those nodes' output vectors are added (the codes that lead nowhere,
        which trie softmax masks anyway, get none)."""
        u = z + self.level_mlp[level](z)
        if self.spec.tie_codes:
            lo = self.offsets[level]
            table = self.code_emb.weight[lo : lo + self.spec.codebook_sizes[level]]
            logits = u @ table.T + self.level_bias[level]
        else:
            logits = self.level_out[level](u)
        if not self.scores_nodes(level):
            return logits
        if child is None:
            raise ValueError("node vectors need the prefix tree's child table")
        size = logits.shape[-1]
        flat_u, flat_child = u.reshape(-1, u.shape[-1]), child.reshape(-1, size)
        if level == 0:
            # Every live row sits at the root and has the same children (a dead beam has none): one
            # dense product, not a gather of rows x K vectors.
            root_children = flat_child.max(0).values
            vectors = self.node_vectors(0, root_children.clamp(min=0)) * (root_children >= 0).unsqueeze(-1)
            extra = (flat_u @ vectors.T).masked_fill(flat_child < 0, 0.0)
            return (logits.reshape(-1, size) + extra).reshape(logits.shape)
        rows, codes = (flat_child >= 0).nonzero(as_tuple=True)
        # Only real children: most of the (rows, K) table is empty below the first levels.
        # index_select, not flat_u[rows]: tensor indexing's backward (index_put_ with accumulate)
        # adds repeated rows from several CPU threads in no fixed order; index_select's does not.
        extra = (flat_u.index_select(0, rows) * self.node_vectors(level, flat_child[rows, codes])).sum(-1)
        return logits.reshape(-1, size).index_put((rows, codes), extra, accumulate=True).reshape(logits.shape)

    def node_vectors(self, level: int, nodes: torch.Tensor) -> torch.Tensor:
        """(n,) depth-(level+1) prefix-tree nodes -> (n, d) their output vectors."""
        own = None
        if level > 0 and self.node_emb is not None:
            own = self.node_emb[level - 1](nodes)
        elif level > 0 and self.node_mlp is not None:
            # Each distinct node once: a batch names the same few thousand nodes many times over.
            unique, inverse = torch.unique(nodes, return_inverse=True)
            paths = getattr(self, f"node_paths_{level}")[unique]  # (u, L) offset codes, -1 = none
            summed = (self.path_emb(paths.clamp(min=0)) * (paths >= 0).unsqueeze(-1)).sum(1)
            own = self.node_mlp[level - 1](summed).index_select(0, inverse)  # see level_logits
        if self.content_out is None:
            return own
        unique, inverse = torch.unique(nodes, return_inverse=True)
        content = self.content_out[level](getattr(self, f"node_content_{level}")[unique]).index_select(0, inverse)
        return content if own is None else own + content

    def prefix_vectors(self, level: int, codes: torch.Tensor) -> torch.Tensor:
        """P_level[codes]: what a level-`level` code adds to the state for the levels after it."""
        return self.prefix_emb(codes + self.offsets[level])

    def teacher_forced_logits(
        self, hidden: torch.Tensor, codes: torch.Tensor, children: list[torch.Tensor] | None = None
    ) -> list[torch.Tensor]:
        """(N, d) states and (N, L) true next-item codes -> per level (N, K_l) logits; `children`
        per level the (N, K_l) child nodes of the true prefix (needed with node vectors)."""
        out, z = [], hidden
        for level in range(self.levels):
            out.append(self.level_logits(level, z, None if children is None else children[level]))
            if level + 1 < self.levels:
                z = z + self.prefix_vectors(level, codes[:, level])
        return out

    def loss(self, hidden: torch.Tensor, targets: torch.Tensor, tree: PrefixTree | None = None) -> torch.Tensor:
        """Sum over levels of the mean cross-entropy of the targets' codes; (N, d), (N,) item ids.

        With `spec.trie_softmax` (needs `tree`), level l's softmax runs over the codes that continue
        the target's own prefix in the item tree only, so the loss is exactly -log p(item) under
        the distribution constrained beam search ranks by; otherwise over the whole codebook.
        """
        codes = self.item_tokens[targets] - self.item_tokens.new_tensor(self.offsets)
        return sum(F.cross_entropy(lg, codes[:, level])
                   for level, lg in enumerate(self._target_logits(hidden, targets, codes, tree)))

    def _target_logits(self, hidden: torch.Tensor, targets: torch.Tensor, codes: torch.Tensor,
                       tree: PrefixTree | None) -> list[torch.Tensor]:
        """Teacher-forced logits along each target's own prefix, masked to the tree's children
        with trie softmax."""
        if not (self.spec.trie_softmax or self.has_node_vectors):
            return self.teacher_forced_logits(hidden, codes)
        if tree is None:
            raise ValueError("trie softmax and node vectors need the item prefix tree")
        children = [tree.children(level, tree.ancestor[level][targets]) for level in range(self.levels)]
        logits = self.teacher_forced_logits(hidden, codes, children)
        if self.spec.trie_softmax:
            logits = [lg.masked_fill(child < 0, NEG_INF) for lg, child in zip(logits, children)]
        return logits

    def sequence_log_probs(self, hidden: torch.Tensor, items: torch.Tensor, tree: PrefixTree | None = None) -> torch.Tensor:
        """(n, d) states, (m,) item ids -> (n, m) sum over levels of log p(code_l | codes_<l), each
        normalised over the level's full codebook, or over the prefix's children in `tree` with
        `spec.trie_softmax` (the score beam search ranks by)."""
        n, m = len(hidden), len(items)
        return self.pair_log_probs(hidden, items[None].expand(n, m), tree)

    def pair_log_probs(self, hidden: torch.Tensor, items: torch.Tensor, tree: PrefixTree | None = None,
                       levels: int | None = None) -> torch.Tensor:
        """(n, d) states, (n, m) item ids, a row of items per state -> (n, m) their log p as in
        `sequence_log_probs` (each user scored on their own candidates); with `levels`, the log p of
        the items' first `levels` codes only."""
        n, m = items.shape
        levels = self.levels if levels is None else levels
        if not 0 <= levels <= self.levels:
            raise ValueError(f"{levels} levels asked of items with {self.levels} codes")
        if (self.spec.trie_softmax or self.has_node_vectors) and tree is None:
            raise ValueError("trie softmax and node vectors need the item prefix tree")
        flat_items = items.reshape(-1)
        codes = self.item_tokens[flat_items] - self.item_tokens.new_tensor(self.offsets)  # (n * m, L)
        user = torch.arange(n, device=items.device).repeat_interleave(m)
        total = torch.zeros((n * m,), dtype=hidden.dtype, device=hidden.device)
        # A user's candidates that share their codes above a level share that level's distribution:
        # each (user, prefix) is scored once. Re-ranking 100 candidates per user otherwise spends
        # most of an evaluation scoring the same nodes' children again (profile in docs/results.md).
        # Per row the arithmetic is teacher_forced_logits' own, in the same order.
        for level in range(levels):
            if tree is not None:  # the prefix is the item's depth-`level` node: one integer key
                node = tree.ancestor[level].to(items.device)[flat_items]
                _, inverse = torch.unique(user * tree.n_nodes[level] + node, return_inverse=True)
            else:
                _, inverse = torch.unique(torch.cat([user[:, None], codes[:, :level]], 1), dim=0, return_inverse=True)
            rep = torch.empty(int(inverse.max()) + 1, dtype=torch.long, device=items.device).scatter_(
                0, inverse, torch.arange(len(inverse), device=items.device))  # one pair of each group
            z = hidden.index_select(0, user[rep])
            for above in range(level):
                z = z + self.prefix_vectors(above, codes[rep, above])
            child = None
            if tree is not None and (self.spec.trie_softmax or self.has_node_vectors):
                child = tree.children(level, node[rep])
            logits = self.level_logits(level, z, child)
            if self.spec.trie_softmax:
                logits = logits.masked_fill(child < 0, NEG_INF)
            log_p = logits.log_softmax(-1)
            total = total + log_p[inverse, codes[:, level]]
        return total.reshape(n, m)


class CausalStep:
    """The causal model's per-level scores for the shared search (search.BeamStep). A beam is its
    user's last state plus the running P-sum of its codes; each level scores every beam's codes with
    log-softmax over the level's codebook (over the node's children with trie softmax)."""

    def __init__(self, model: CausalSemanticModel, hidden: torch.Tensor):
        self.model, self.hidden = model, hidden  # (n, d) the users' last states
        self.prefix = torch.zeros((hidden.shape[0], 1, hidden.shape[1]), dtype=hidden.dtype,
                                  device=hidden.device)  # (n, width, d)

    def log_probs(self, depth: int, child: torch.Tensor) -> torch.Tensor:
        (n, width, _), size = self.prefix.shape, child.shape[1]
        child = child.reshape(n, width, size)
        logits = self.model.level_logits(depth, self.hidden[:, None, :] + self.prefix, child).float()
        if self.model.spec.trie_softmax:  # normalise over the node's children, as training did
            logits = logits.masked_fill(child < 0, NEG_INF)
        return logits.log_softmax(-1).reshape(n * width, size)

    def advance(self, depth: int, parent: torch.Tensor, code: torch.Tensor) -> None:
        source = parent[..., None].expand(-1, -1, self.prefix.shape[-1])
        self.prefix = self.prefix.gather(1, source) + self.model.prefix_vectors(depth, code)


@torch.no_grad()
def causal_beam_search(
    model: CausalSemanticModel,
    tree: PrefixTree,
    hidden: torch.Tensor,
    beams: int,
    exclusion: Exclusion | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, d) users' last states -> top-`beams` (items, scores), best first, -1 / -inf padded."""
    return beam_search(tree, CausalStep(model, hidden), len(hidden), beams, exclusion, hidden.device)


def left_padded(histories: Sequence[np.ndarray], width: int) -> np.ndarray:
    """(n, width) int64 of each history's last `width` items, left-padded with -1."""
    out = np.full((len(histories), width), -1, dtype=np.int64)
    for row, seq in enumerate(histories):
        tail = np.asarray(seq, dtype=np.int64)[len(seq) - width :] if len(seq) > width else np.asarray(seq, np.int64)
        if len(tail):
            out[row, width - len(tail) :] = tail
    return out


class CausalGenerativeRecommender(SemanticIdRecommender):
    """The Recommender protocol over a trained `CausalSemanticModel`. Saved as one folder:
    `backbone/` (save_pretrained, safetensors), `heads.safetensors` (embeddings and level heads),
    `semantic_ids/` and `causal.json` (architecture, generator config, training record)."""

    def __init__(
        self,
        model: CausalSemanticModel,
        semantic_ids: SemanticIds,
        config: GeneratorConfig | None = None,
        device: str = "cpu",
        info: dict | None = None,
    ):
        if tuple(semantic_ids.codebook_sizes) != model.spec.codebook_sizes:
            raise ValueError(f"semantic ids have codebooks {semantic_ids.codebook_sizes}, the model "
                             f"{list(model.spec.codebook_sizes)}")
        self.config = config or GeneratorConfig()
        self.device = torch.device(resolve_device(device))
        self.model = model.to(self.device).eval()
        self.semantic_ids = semantic_ids
        self.info = dict(info or {})
        self.tree = PrefixTree(semantic_ids.codes, semantic_ids.codebook_sizes).to(self.device)

    @property
    def max_history(self) -> int:
        return self.model.spec.max_history

    @torch.no_grad()
    def last_states(self, histories: Sequence[np.ndarray]) -> torch.Tensor:
        width = max(1, min(self.max_history, max((len(h) for h in histories), default=1)))
        items = torch.from_numpy(left_padded(histories, width)).to(self.device)
        return self.model.encode(items)[:, -1]

    def beam_step(self, histories: Sequence[np.ndarray]) -> CausalStep:
        return CausalStep(self.model, self.last_states(histories))

    def _over(self, semantic_ids: SemanticIds, added_content: np.ndarray | None = None) -> CausalGenerativeRecommender:
        if self.model.spec.per_item_parameters:
            raise ValueError("a hybrid generator has a learned vector per trained item and none for a new one: "
                             "items added after training cannot be scored; retrain, or use generator.mode=semantic")
        content = None
        n_added = semantic_ids.n_items - self.model.spec.n_items
        if self.model.content_in is not None:
            want = (n_added, self.model.spec.content_dim)
            if added_content is None or tuple(added_content.shape) != want:
                raise ValueError(f"this generator reads item content (generator.causal.content_features): the "
                                 f"{n_added} added items need their content vectors {want}, given "
                                 f"{'none' if added_content is None else tuple(added_content.shape)}"
                                 " (items added before content was kept: add them again)")
            content = torch.cat([self.model.item_content.cpu(), torch.as_tensor(added_content, dtype=torch.float32)])
        # The item table, node paths and node contents are buffers built from the codes and the
        # content; every weight is shared.
        spec = dataclasses.replace(self.model.spec, n_items=semantic_ids.n_items)
        model = CausalSemanticModel(spec, semantic_ids.codes, self.model.backbone, content)
        state = {k: v for k, v in self.model.state_dict().items() if k != "item_content"}
        model.load_state_dict(state, strict=content is None)
        return type(self)(model, semantic_ids, self.config, str(self.device), self.info)

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.backbone.save_pretrained(folder / "backbone", safe_serialization=True)
        heads = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()
                 if not k.startswith("backbone.")}
        save_file(heads, folder / HEADS_FILE)
        save_generator_meta(folder, META, self.semantic_ids, self.config, self.info,
                            spec=dataclasses.asdict(self.model.spec))

    @classmethod
    def load(cls, folder: Path, device: str = "auto") -> CausalGenerativeRecommender:
        folder = Path(folder)
        meta, semantic_ids, config = load_generator_meta(folder, META)
        fields = dict(meta["spec"])
        if "use_item_id" in fields:  # saved before the generator modes existed
            hybrid = fields.pop("use_item_id") or fields.pop("node_emb", False)
            fields.pop("node_emb", None)
            fields["mode"] = "hybrid" if hybrid else "semantic"
        spec = CausalSpec(**{**fields, "codebook_sizes": tuple(fields["codebook_sizes"])})
        heads = load_file(folder / HEADS_FILE)
        model = CausalSemanticModel(spec, semantic_ids.codes, AutoModel.from_pretrained(folder / "backbone"),
                                    heads.get("item_content"))
        missing, unexpected = model.load_state_dict(heads, strict=False)
        missing = [k for k in missing if not k.startswith("backbone.")]
        if missing or unexpected:
            raise ValueError(f"{folder / HEADS_FILE}: missing {missing}, unexpected {unexpected}")
        return cls(model, semantic_ids, config, device, meta.get("info"))


# --- training -----------------------------------------------------------------------------------


def training_windows(train: Sequence[np.ndarray], max_history: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets), both (n, max_history) left-padded with -1, from the last max_history + 1
    items of every training sequence with at least two items; targets[t] follows inputs[t]."""
    windows = [np.asarray(s[-(max_history + 1) :], dtype=np.int64) for s in train if len(s) >= 2]
    return left_padded([w[:-1] for w in windows], max_history), left_padded([w[1:] for w in windows], max_history)


class _WindowLoss(nn.Module):
    """One training step's forward as a single module call, which DistributedDataParallel wraps.

    Under torchrun the mean over this rank's positions is weighted by its share of the global
    batch's positions, so DDP's gradient average is the gradient of the global batch's mean.
    """

    def __init__(self, model: CausalSemanticModel, tree: PrefixTree):
        super().__init__()
        self.model, self.tree = model, tree

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(loss to back-propagate, this rank's mean loss (detached), its number of positions)."""
        keep = y >= 0
        hidden = self.model.encode(x)[keep]  # (positions, d): padding never enters the loss
        loss = self.model.loss(hidden, y[keep], self.tree)
        n = int(keep.sum())
        weighted = loss
        if distributed.is_distributed():
            weighted = loss * (n * distributed.world_size() / distributed.all_reduce_sum(n, x.device))
        return weighted, loss.detach(), n


class CausalFamily:
    """The causal model in the shared trainer (train.py): one window per user (its last
    max_history + 1 training items), every position a prediction; a step weighs its positions."""

    label = "causal generator"
    # GPT-2's token table is never used (inputs_embeds), so DDP must not wait for its gradient.
    find_unused_parameters = True
    eval_batch_size = 4096

    def __init__(self, split: SplitDataset, semantic_ids: SemanticIds, cfg: GeneratorConfig, device: str,
                 item_content: np.ndarray | None = None):
        spec = CausalSpec.from_config(cfg, semantic_ids, split.max_history,
                                      0 if item_content is None else item_content.shape[1])
        self.recommender = CausalGenerativeRecommender(
            CausalSemanticModel(spec, semantic_ids.codes, content=item_content), semantic_ids, cfg, device)
        self.backbone = f"causal-{cfg.causal.backbone}"
        self.epochs, self.lr = cfg.causal.epochs, cfg.causal.lr
        self.windows, self.targets = training_windows(split.train, split.max_history)
        self.lengths = (self.windows >= 0).sum(1)
        self.n_examples = len(self.windows)

    def batches(self, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
        # Chunks of 16 batches (the T5 sorts within 50): the causal loop's draw since it was written.
        return length_bucketed_batches(self.lengths, batch_size, rng, bucket_batches=16)

    def inputs(self, rows: np.ndarray, n_global: int, device: torch.device | str) -> tuple:
        width = int(self.lengths[rows].max())  # trimmed to the batch's longest window
        return (torch.from_numpy(self.windows[rows, -width:]).to(device),
                torch.from_numpy(self.targets[rows, -width:]).to(device))

    def loss_module(self) -> nn.Module:
        return _WindowLoss(self.recommender.model, self.recommender.tree)

    def record(self) -> dict[str, Any]:
        return {"n_windows": self.n_examples, "n_positions": int(self.lengths.sum())}


def train_causal_generator(
    split: SplitDataset,
    semantic_ids: SemanticIds,
    cfg: GeneratorConfig,
    seed: int,
    device: str = "cpu",
    eval_cfg: EvalConfig | None = None,
    out_dir: Path | None = None,
    checkpoint: TrainingCheckpoint | None = None,
    item_content: np.ndarray | None = None,
) -> CausalGenerativeRecommender:
    """The causal generator trained by the shared trainer (train.train_family), whatever
    `cfg.backbone` says; the best-on-validation recommender, its record in `.info`."""
    return train_family(lambda dev: CausalFamily(split, semantic_ids, cfg, dev, item_content), split, semantic_ids,
                        cfg, seed, device, out_dir, eval_cfg, checkpoint)[0]
