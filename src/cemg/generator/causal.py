"""A causal generative recommender over semantic ids that trains like SASRec (not in the paper).

The paper's generator (model.py, train.py) is a T5 reading M tokens per history item, trained on
one sliding window per prefix; on a CPU that costs tens of minutes per Beauty epoch. Here:

- each history item enters as ONE vector, the sum of its code embeddings sum_l E_l[c_l]
  (optionally plus a learned item-id embedding), so a history of n items is n positions, not n * M;
- a small decoder-only transformer (Hugging Face GPT-2 or Llama, built from a config) runs once
  over a user's training window and predicts the next item at EVERY position, as SASRec does;
- the next item's codes come out level by level: logits_l = head_l(h_t + sum_{j<l} P_j[c_j]) over
  the K_l codes of level l, trained with teacher forcing (sum of the levels' cross-entropies);
- recommendation is trie-constrained beam search over the levels (PrefixTree, Exclusion from
  decoding.py), so every returned code sequence is a real item, as in paper 4.2.4.

A beam step costs one small head on (users, beams, d): the transformer runs once per user.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoModel, GPT2Config, GPT2Model, LlamaConfig, LlamaModel, get_linear_schedule_with_warmup

from cemg import distributed
from cemg.artifacts import atomic_dir
from cemg.checkpoint import TrainingCheckpoint
from cemg.config import EvalConfig, GeneratorConfig, resolve_device
from cemg.data.split import SplitDataset
from cemg.evaluation.protocol import evaluate
from cemg.generator.decoding import Exclusion, PrefixTree, search_in_batches
from cemg.generator.model import SemanticIdRecommender, load_generator_meta, save_generator_meta
from cemg.tokenizer.semantic_ids import SemanticIds

log = logging.getLogger(__name__)

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

    @property
    def per_item_parameters(self) -> bool:
        return self.mode == "hybrid"

    @classmethod
    def from_config(cls, cfg: GeneratorConfig, semantic_ids: SemanticIds, max_history: int) -> CausalSpec:
        c = cfg.causal
        semantic = cfg.mode == "semantic"
        return cls(
            tuple(semantic_ids.codebook_sizes), semantic_ids.n_items, max_history, c.hidden, c.layers, c.heads,
            c.dropout, c.backbone, cfg.mode, c.tie_codes, c.trie_softmax,
            semantic and c.composed_inputs, semantic and c.composed_outputs, c.composed_width,
            c.composed_leaf_codes,
        )


def _zero_last(mlp: nn.Sequential) -> nn.Sequential:
    """Zero the MLP's last layer, so a branch added to a residual sum starts as a no-op."""
    nn.init.zeros_(mlp[-1].weight)
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
    """Histories of item ids -> per-position states; states + code prefixes -> next-level logits."""

    def __init__(self, spec: CausalSpec, codes: np.ndarray, backbone: nn.Module | None = None):
        super().__init__()
        codes = np.asarray(codes, dtype=np.int64)
        if codes.shape != (spec.n_items, len(spec.codebook_sizes)):
            raise ValueError(f"codes of shape {codes.shape} do not match {spec.n_items} items x "
                             f"{len(spec.codebook_sizes)} levels")
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
        # Semantic mode: a nonlinear function of the item's codes, so the input vector is more than
        # a sum of shared code vectors (items that share 3 of 4 codes differ by one vector in a sum).
        self.input_mlp = None
        if spec.composed_inputs:
            width = spec.composed_width * d
            self.input_mlp = _zero_last(nn.Sequential(
                nn.Linear(len(sizes) * d, width), nn.GELU(), nn.Linear(width, d)))
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
            tree = PrefixTree(codes, sizes)
            if hybrid:
                self.node_emb = nn.ModuleList(nn.Embedding(tree.n_nodes[level + 1], d) for level in range(1, len(sizes)))
                for table in self.node_emb:
                    nn.init.zeros_(table.weight)
            else:
                self.path_emb = nn.Embedding(sum(sizes), d)
                nn.init.normal_(self.path_emb.weight, std=0.02)
                self.node_mlp = nn.ModuleList(
                    _zero_last(nn.Sequential(nn.LayerNorm(d), nn.Linear(d, spec.composed_width * d), nn.GELU(),
                                             nn.Linear(spec.composed_width * d, d)))
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
        return self.node_emb is not None or self.node_mlp is not None

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
        if (self.node_emb is None and self.node_mlp is None) or level == 0:
            return logits
        if child is None:
            raise ValueError("node vectors need the prefix tree's child table")
        size = logits.shape[-1]
        flat_u, flat_child = u.reshape(-1, u.shape[-1]), child.reshape(-1, size)
        rows, codes = (flat_child >= 0).nonzero(as_tuple=True)
        # Only real children: most of the (rows, K) table is empty below the first levels.
        extra = (flat_u[rows] * self.node_vectors(level, flat_child[rows, codes])).sum(-1)
        return logits.reshape(-1, size).index_put((rows, codes), extra, accumulate=True).reshape(logits.shape)

    def node_vectors(self, level: int, nodes: torch.Tensor) -> torch.Tensor:
        """(n,) depth-(level+1) prefix-tree nodes -> (n, d) their output vectors (level >= 1)."""
        if self.node_emb is not None:
            return self.node_emb[level - 1](nodes)
        # Each distinct node once: a batch names the same few thousand nodes many times over.
        unique, inverse = torch.unique(nodes, return_inverse=True)
        paths = getattr(self, f"node_paths_{level}")[unique]  # (u, L) offset codes, -1 = none
        summed = (self.path_emb(paths.clamp(min=0)) * (paths >= 0).unsqueeze(-1)).sum(1)
        return self.node_mlp[level - 1](summed)[inverse]

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
        codes = (self.item_tokens[items] - self.item_tokens.new_tensor(self.offsets))  # (m, L)
        flat_h = hidden[:, None, :].expand(n, m, -1).reshape(n * m, -1)
        flat_c = codes[None].expand(n, m, -1).reshape(n * m, -1)
        logits = self._target_logits(flat_h, items[None].expand(n, m).reshape(-1), flat_c, tree)
        total = sum(lg.log_softmax(-1).gather(1, flat_c[:, level : level + 1]).squeeze(1)
                    for level, lg in enumerate(logits))
        return total.reshape(n, m)


@torch.no_grad()
def causal_beam_search(
    model: CausalSemanticModel,
    tree: PrefixTree,
    hidden: torch.Tensor,
    beams: int,
    exclusion: Exclusion | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, d) users' last states -> top-`beams` (items, scores), best first, -1 / -inf padded.

    A beam is a prefix-tree node plus the running P-sum of its codes; each level scores every
    beam's codes with log-softmax over the level's codebook, masks codes that leave the tree or lead
    only to excluded items, and keeps the best `beams` over all (beam, code) pairs of a user.
    """
    n, d, device = hidden.shape[0], hidden.shape[1], hidden.device
    if n == 0:
        return torch.zeros((0, beams), dtype=torch.long), torch.zeros((0, beams))
    users = torch.arange(n, device=device)
    nodes = torch.zeros((n, 1), dtype=torch.long, device=device)  # (n, width) depth-l nodes
    scores = torch.zeros((n, 1), device=device)
    prefix = torch.zeros((n, 1, d), dtype=hidden.dtype, device=device)  # (n, width, d)
    if exclusion is not None:
        root_dead = exclusion.dead(tree, 0, users, nodes[:, 0])
        nodes[root_dead] = -1
        scores[root_dead] = NEG_INF
    for depth in range(tree.levels):
        width, size = nodes.shape[1], tree.codebook_sizes[depth]
        child = tree.children(depth, nodes.reshape(-1))  # (n * width, K)
        logits = model.level_logits(depth, hidden[:, None, :] + prefix, child.reshape(n, width, size)).float()
        allowed = child >= 0
        if model.spec.trie_softmax:  # normalise over the node's children, as training did
            logits = logits.masked_fill(~allowed.reshape(n, width, size), NEG_INF)
        log_probs = logits.log_softmax(-1)
        if exclusion is not None:
            # Only real children are looked up: most of the dense (beams, K) table is empty, and the
            # lookup (a searchsorted per entry) was 60% of recommendation time when run on all of it.
            rows, codes = allowed.nonzero(as_tuple=True)
            dead = exclusion.dead(tree, depth + 1, torch.div(rows, width, rounding_mode="floor"), child[rows, codes])
            allowed[rows[dead], codes[dead]] = False
        candidates = torch.where(allowed, scores.reshape(-1, 1) + log_probs.reshape(n * width, size), NEG_INF)
        keep = min(beams, width * size)
        scores, picked = candidates.reshape(n, width * size).topk(keep, dim=1)
        nodes = child.reshape(n, width * size).gather(1, picked)
        nodes[scores == NEG_INF] = -1
        if depth + 1 == tree.levels:
            break
        source = (picked // size)[..., None].expand(-1, -1, d)
        prefix = prefix.gather(1, source) + model.prefix_vectors(depth, picked % size)
    items = torch.where(nodes >= 0, tree.leaf_item[nodes.clamp(min=0)], -1)
    if items.shape[1] < beams:
        items = F.pad(items, (0, beams - items.shape[1]), value=-1)
        scores = F.pad(scores, (0, beams - scores.shape[1]), value=NEG_INF)
    return items, scores


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

    def recommend_with_scores(
        self, histories: Sequence[np.ndarray], k: int, exclude: Sequence[np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(items (n, k) int64, scores (n, k) float32 sequence log-probs), best first; -1 / -inf pad.

        The beam is `config.beams` wide, widened to k when k is larger; prefixes whose items are
        all excluded are pruned, so a user gets min(k, items not excluded) items.
        """
        if exclude is not None and len(exclude) != len(histories):
            raise ValueError(f"exclude has {len(exclude)} rows for {len(histories)} histories")
        beams = max(self.config.beams, k)

        def search(lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
            hidden = self.last_states(histories[lo:hi])
            excl = None if exclude is None else Exclusion.build(self.tree, exclude[lo:hi], self.device)
            return causal_beam_search(self.model, self.tree, hidden, beams, excl)

        return search_in_batches(self.model, len(histories), k, self.config.eval_batch_size, search)

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
        model = CausalSemanticModel(spec, semantic_ids.codes, AutoModel.from_pretrained(folder / "backbone"))
        missing, unexpected = model.load_state_dict(load_file(folder / HEADS_FILE), strict=False)
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


def length_sorted_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator,
                          chunk_batches: int = 16) -> list[np.ndarray]:
    """Shuffled batches of windows of similar length. Beauty's windows hold ~7 of 20 items, and a
    batch is trimmed to its longest row, so sorting inside random chunks removes most padding."""
    order = rng.permutation(len(lengths))
    batches = []
    for lo in range(0, len(order), batch_size * chunk_batches):
        part = order[lo : lo + batch_size * chunk_batches]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]



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


def train_causal_generator(
    split: SplitDataset,
    semantic_ids: SemanticIds,
    cfg: GeneratorConfig,
    seed: int,
    device: str = "cpu",
    eval_cfg: EvalConfig | None = None,
    out_dir: Path | None = None,
    checkpoint: TrainingCheckpoint | None = None,
) -> CausalGenerativeRecommender:
    """Train on split.train only; return the best-on-validation (NDCG@10) recommender.

    Its `info` holds the per-epoch curve, epochs run, best epoch, seconds and parameter count.
    With `out_dir`, the final (best) model is saved there. With a `checkpoint`, the training state
    is saved after epochs and a rerun resumes from it. Under torchrun each rank trains on its share
    of every batch and rank 0 evaluates (cemg.distributed).
    """
    if semantic_ids.n_items != split.n_items:
        raise ValueError(f"semantic ids cover {semantic_ids.n_items} items but the dataset has {split.n_items}")
    device = distributed.setup(resolve_device(device))
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    spec = CausalSpec.from_config(cfg, semantic_ids, split.max_history)
    rec = CausalGenerativeRecommender(CausalSemanticModel(spec, semantic_ids.codes), semantic_ids, cfg, device)
    model = rec.model
    eval_cfg = eval_cfg or EvalConfig()
    eval_cfg = eval_cfg.model_copy(update={"ks": sorted(set(eval_cfg.ks) | {10})})
    valid_split = split.with_valid_subsample(cfg.valid_users, seed)

    inputs, targets = training_windows(split.train, split.max_history)
    if len(inputs) == 0:
        raise ValueError("no training sequence has two or more items; nothing to train on")
    lengths = (inputs >= 0).sum(1)
    steps_per_epoch = -(-len(inputs) // cfg.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.causal.lr, weight_decay=cfg.weight_decay)
    total_steps = steps_per_epoch * cfg.causal.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("causal generator, %s mode: %d windows (%d target positions), %d steps/epoch, %d parameters, "
             "%d validation users, device %s", cfg.mode, len(inputs), int(lengths.sum()), steps_per_epoch, n_params,
             len(valid_split.valid), device)

    curve: list[dict] = []
    best = {"ndcg": -1.0, "epoch": 0, "state": None}
    stale, start, first = 0, time.perf_counter(), 1
    # GPT-2's token table is never used (inputs_embeds), so DDP must not wait for its gradient.
    step_loss = distributed.wrap(_WindowLoss(model, rec.tree), device, find_unused_parameters=True)
    distributed.seed_per_rank(seed)
    checkpoint = checkpoint or TrainingCheckpoint(None)
    saved = checkpoint.restore(model=model, optimizer=optimizer, scheduler=scheduler, generators={"batches": rng})
    if saved is not None:
        curve, best, stale, first = saved["curve"], saved["best"], saved["stale"], saved["epoch"] + 1
        start -= saved["seconds"]
    bar = tqdm(range(first, cfg.causal.epochs + 1), desc="causal generator", unit="epoch", initial=first - 1,
               total=cfg.causal.epochs, disable=None if distributed.is_main() else True)
    for epoch in bar:
        model.train()
        tic, total, count = time.perf_counter(), 0.0, 0
        for rows in length_sorted_batches(lengths, cfg.batch_size, rng):
            if len(rows) < distributed.world_size():
                continue  # a rank would get no rows: this tail batch is skipped by every rank alike
            rows = distributed.shard(rows)
            width = int(lengths[rows].max())
            x = torch.from_numpy(inputs[rows, -width:]).to(device)
            y = torch.from_numpy(targets[rows, -width:]).to(device)
            weighted, loss, n = step_loss(x, y)
            optimizer.zero_grad(set_to_none=True)
            weighted.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            total, count = total + float(loss) * n, count + n
        row = {"epoch": epoch, "loss": total / max(count, 1), "train_seconds": time.perf_counter() - tic}
        if epoch % cfg.eval_every == 0 or epoch == cfg.causal.epochs:
            result = evaluate(rec, valid_split, "valid", eval_cfg, batch_size=4096) if distributed.is_main() else None
            result = distributed.broadcast_object(result)  # every rank takes rank 0's early-stopping decision
            row.update(valid=result.metrics, eval_seconds=result.seconds)
            ndcg = result.metrics["NDCG@10"]
            if ndcg > best["ndcg"]:
                best = {"ndcg": ndcg, "epoch": epoch,
                        "state": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}}
                stale = 0
            else:
                stale += 1
            log.info("causal generator epoch %d: loss %.4f (%.1fs), valid NDCG@10 %.4f HR@10 %.4f (%.1fs)%s",
                     epoch, row["loss"], row["train_seconds"], ndcg, result.metrics["HR@10"], result.seconds,
                     " best" if stale == 0 else "")
            bar.set_postfix(loss=f"{row['loss']:.3f}", valid=f"{ndcg:.4f}", best=f"{best['ndcg']:.4f}")
        curve.append(row)
        if stale >= cfg.patience:
            log.info("causal generator: no better NDCG@10 for %d evaluations; stopping", stale)
            break
        if checkpoint.due():
            checkpoint.save(model=model, optimizer=optimizer, scheduler=scheduler, generators={"batches": rng},
                            epoch=epoch, curve=curve, best=best, stale=stale, seconds=time.perf_counter() - start)
    bar.close()
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    model.eval()
    seconds = time.perf_counter() - start
    rec.info = {
        "mode": cfg.mode,
        "backbone": f"causal-{cfg.causal.backbone}",
        "best_epoch": best["epoch"],
        "best_valid_ndcg10": best["ndcg"],
        "epochs_run": len(curve),
        "n_windows": len(inputs),
        "n_positions": int(lengths.sum()),
        "n_parameters": n_params,
        "seconds": seconds,
        "train_seconds_per_epoch": float(np.mean([r["train_seconds"] for r in curve])),
        "device": str(device),
        "history": copy.deepcopy(curve),
    }
    if out_dir is not None and distributed.is_main():
        with atomic_dir(Path(out_dir)) as tmp:
            rec.save(tmp)
    log.info("causal generator: trained %d epochs in %.0fs, best epoch %d, valid NDCG@10 %.4f%s", len(curve),
             seconds, best["epoch"], best["ndcg"], f", saved to {out_dir}" if out_dir else "")
    return rec
