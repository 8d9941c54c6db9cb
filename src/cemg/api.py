"""Use a finished run as a product: load it, recommend next items, explain an item's semantic id.

    from cemg.api import Recommender

    rec = Recommender.load("runs/demo")             # after `cemg demo`
    for row in rec.recommend(["i0001", "i0042"], k=5):  # raw item keys, or item indices (ints)
        print(row.rank, row.key, row.title, row.score)
    rec.explain("i0042").codes                       # the item's code at every level

    from cemg.api import compare_runs                # two configurations over seeds and users
    print(compare_runs("runs/a", "runs/b").verdict)

    from cemg.api import add_items                   # new items into a trained run, no retraining
    add_items("runs/demo", "new_items.jsonl").added  # then Recommender.load sees them (semantic mode)

A run folder holds one artifact per stage plus `config.yaml`, the config it was built with; its
layout, including the folders of a run with several seeds, is cemg.run_folder's. Runs made before
`config.yaml` existed are read from the stage manifests instead, which record each stage's own
config section.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cemg.added_items import AddedItem, AddItemsRefused, AddSummary, add_items, concat_tables, read_added_items
from cemg.config import CEMGConfig
from cemg.data.dataset import InteractionDataset
from cemg.evaluation.seeds import Comparison, compare_seeds
from cemg.run_folder import RunFolder, lenient_section, load_run_config, seed_evaluations
from cemg.tokenizer.semantic_ids import SemanticIds

# load_run_config is part of this API (docs/api.md); it lives with the rest of the run folder's layout.
__all__ = ["AddItemsRefused", "AddSummary", "AddedItem", "Comparison", "Explanation", "FusionView", "ItemCatalogue",
           "Neighbour", "Recommendation", "Recommender", "UnknownItem", "add_items", "compare_runs",
           "compute_fusion_view", "load_run_config"]

log = logging.getLogger(__name__)

ItemRef = int | str  # an item index (0..n_items-1) or a raw item key of the dataset


class UnknownItem(ValueError):
    """An item reference that names no item of the run; `.item` is the reference as given."""

    def __init__(self, item: Any, message: str):
        super().__init__(message)
        self.item = item


# --- rows returned to callers -------------------------------------------------------------------


@dataclass(frozen=True)
class Recommendation:
    rank: int  # 1 = best
    item: int  # item index in the run
    key: str  # the dataset's raw item key
    title: str
    # "generator": log-probability of the item's semantic id under the generator (beam search);
    # "popularity" (empty history): log of the item's share of training interactions.
    score: float
    source: str


@dataclass(frozen=True)
class Neighbour:
    item: int
    key: str
    title: str
    shared_levels: int  # length of the code prefix shared with the explained item
    distance: float | None  # Euclidean distance of the RQ-VAE latents, when the tokenizer model is in the run


@dataclass(frozen=True)
class Explanation:
    item: int
    key: str
    title: str
    fields: dict[str, str | None]  # the item's text fields (title, brand, ...)
    image: str | None  # image reference (path inside the dataset's image root, or URL)
    codes: list[int]  # semantic id, one code per level
    codebook_sizes: list[int]
    # True when the last level only tells apart items whose learned codes collide (TIGER's fix).
    disambiguation_level: bool
    # Collaborative-guided fusion weights (paper 4.2.2.3) {"image": a_v, "text": a_t}; None when the
    # run lacks the tokenizer model or its inputs. A missing modality has weight exactly 0. With
    # tokenizer.fusion "mean" or "concat" they are the fixed equal split (1/2 each, 1 for an only modality).
    fusion_weights: dict[str, float] | None
    neighbours: list[Neighbour]


# --- items: keys, titles, semantic ids, fusion ------------------------------------------------------


@dataclass(frozen=True)
class FusionView:
    """Every item pushed through the run's trained fusion layer and RQ-VAE encoder."""

    alphas: np.ndarray  # (n_items, 2): weights of image, text
    latents: np.ndarray  # (n_items, latent_dim): RQ-VAE encoder outputs z
    has_image: np.ndarray  # (n_items,) bool
    has_text: np.ndarray  # (n_items,) bool


def _run_folder(run: Path | str | RunFolder, seed: int | None = None) -> RunFolder:
    return run if isinstance(run, RunFolder) else RunFolder.open(run, seed)


def compute_fusion_view(run: Path | str | RunFolder, seed: int | None = None) -> FusionView | None:
    """Recompute the fusion weights and latents (the tokenizer stage stores only their summary);
    None when the run lacks the tokenizer model, the features, or the collaborative embeddings.
    `seed` picks a seed of a run made with `--seeds` (default: see RunFolder.open)."""
    import torch

    from cemg.collab.artifact import CollabEmbeddings
    from cemg.config import TokenizerConfig
    from cemg.features.artifact import ItemFeatures
    from cemg.tokenizer.build import MODEL_FILE, TokenizerArtifact, prepare_inputs

    folder = _run_folder(run, seed)
    if not (folder.stage("tokenizer") / MODEL_FILE).is_file() or not folder.stage("features").is_dir():
        return None
    tokenizer = TokenizerArtifact.load(folder.stage("tokenizer"))
    state = tokenizer.model_state
    tok_cfg = lenient_section(TokenizerConfig, state["init_args"]["cfg"], f"{folder.stage('tokenizer')}")
    collab = None
    if tok_cfg.use_collab:
        if not folder.stage("collab").is_dir():
            return None
        collab = CollabEmbeddings.load(folder.stage("collab"))
    features = ItemFeatures.load(folder.stage("features"))
    inputs = prepare_inputs(features, collab, tok_cfg, "cpu", scales=state["scales"])
    model = tokenizer.model()
    with torch.no_grad():
        fusion = model.fusion(inputs.image, inputs.image_mask, inputs.text, inputs.text_mask, inputs.collab)
        latents = model.rqvae.encoder(fusion.fused)
    n = features.n_items
    mask = lambda m: np.zeros(n, bool) if m is None else m.cpu().numpy().astype(bool)  # noqa: E731
    return FusionView(fusion.alphas.numpy(), latents.numpy(), mask(inputs.image_mask), mask(inputs.text_mask))


class ItemCatalogue:
    """The run's items: keys and metadata, semantic ids, and the fusion view when it can be rebuilt."""

    def __init__(
        self,
        dataset: InteractionDataset,
        semantic_ids: SemanticIds,
        learned_levels: int,
        fusion: FusionView | None = None,
        n_trained: int | None = None,
        added_content: np.ndarray | None = None,
    ):
        if semantic_ids.n_items != dataset.n_items:
            raise ValueError(f"semantic ids cover {semantic_ids.n_items} items, the dataset {dataset.n_items}")
        self.dataset = dataset
        self.semantic_ids = semantic_ids
        self.learned_levels = learned_levels
        self.fusion = fusion
        # items 0..n_trained-1 are the trained ones; the rest were added later (`cemg items add`)
        self.n_trained = dataset.n_items if n_trained is None else n_trained
        # the added items' content vectors, for a generator that reads content (cemg.added_items)
        self.added_content = added_content
        self._index = {key: i for i, key in enumerate(dataset.items.keys)}

    @classmethod
    def load(cls, run: Path | str | RunFolder, cfg: CEMGConfig | None = None, seed: int | None = None) -> ItemCatalogue:
        folder = _run_folder(run, seed)
        cfg = cfg or load_run_config(folder.root)
        for stage in ("data", "tokenizer"):
            if not folder.has(stage):
                raise FileNotFoundError(f"{folder.stage(stage)}: stage missing; run `cemg run` for this config first")
        dataset = InteractionDataset.load(folder.stage("data"))
        ids = SemanticIds.load(folder.stage("tokenizer") / "semantic_ids")
        learned = min(cfg.tokenizer.levels, ids.levels)
        if cfg.tokenizer.ids_file is not None:  # published ids have their own level count, not the config's
            import json

            learned = len(json.loads((folder.stage("tokenizer") / "report.json").read_text(encoding="utf-8"))["levels"])
        fusion = compute_fusion_view(folder)
        added = read_added_items(folder)
        if added is None:
            return cls(dataset, ids, learned, fusion)
        # Items added after training (cemg.added_items) follow the trained ones: no index moves.
        dataset = dataclasses.replace(dataset, items=concat_tables(dataset.items, added.table))
        ids = SemanticIds(np.concatenate([ids.codes, added.codes]), ids.codebook_sizes)
        if fusion is not None:
            fusion = FusionView(np.concatenate([fusion.alphas, added.alphas]),
                                np.concatenate([fusion.latents, added.latents]),
                                np.concatenate([fusion.has_image, added.has_image]),
                                np.concatenate([fusion.has_text, added.has_text]))
        return cls(dataset, ids, learned, fusion, n_trained=len(ids.codes) - len(added), added_content=added.content)

    def __len__(self) -> int:
        return self.dataset.n_items

    def index(self, item: Any) -> int:
        """An item index or raw key -> the item index; UnknownItem (a ValueError) names a bad one."""
        # bool is an int subclass; True as "item 1" would be a silent surprise
        if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            if 0 <= int(item) < len(self):
                return int(item)
            raise UnknownItem(item, f"item index {int(item)} is out of range: the run has {len(self)} items "
                                    f"(indices 0..{len(self) - 1})")
        if isinstance(item, str):
            if item in self._index:
                return self._index[item]
            raise UnknownItem(item, f"unknown item key {item!r}: not one of the {len(self)} items of "
                                    f"dataset {self.dataset.name!r}")
        raise UnknownItem(item, f"item {item!r}: expected an item index (int) or a raw item key (str), "
                                f"not {type(item).__name__}")

    def key(self, item: int) -> str:
        return self.dataset.items.keys[item]

    def title(self, item: int) -> str:
        return self.dataset.items.title(item)

    def explain(self, item: ItemRef, neighbours: int = 5) -> Explanation:
        i = self.index(item)
        codes = self.semantic_ids.codes
        # Shared prefix length with every item: the first level where the codes differ.
        same = codes == codes[i]
        shared = np.where(same.all(axis=1), codes.shape[1], np.argmin(same, axis=1))
        shared[i] = -1
        candidates = np.flatnonzero(shared >= 1)
        distance = None
        if self.fusion is not None:
            distance = np.linalg.norm(self.fusion.latents - self.fusion.latents[i], axis=1)
            order = np.lexsort((candidates, distance[candidates], -shared[candidates]))
        else:
            order = np.lexsort((candidates, -shared[candidates]))
        near = [
            Neighbour(int(j), self.key(int(j)), self.title(int(j)), int(shared[j]),
                      None if distance is None else float(distance[j]))
            for j in candidates[order][:neighbours]
        ]
        weights = None
        if self.fusion is not None:
            weights = {"image": float(self.fusion.alphas[i, 0]), "text": float(self.fusion.alphas[i, 1])}
        table = self.dataset.items
        return Explanation(
            item=i,
            key=self.key(i),
            title=self.title(i),
            fields={name: values[i] for name, values in table.fields.items()},
            image=None if table.image_refs is None else table.image_refs[i],
            codes=[int(c) for c in codes[i]],
            codebook_sizes=list(self.semantic_ids.codebook_sizes),
            disambiguation_level=self.semantic_ids.levels > self.learned_levels,
            fusion_weights=weights,
            neighbours=near,
        )


# --- the recommender ----------------------------------------------------------------------------------


def load_generator(run: Path | str | RunFolder, cfg: CEMGConfig, device: str = "auto", seed: int | None = None):
    """The trained generator of a run, of the family `generator.backbone` names."""
    run = _run_folder(run, seed)
    folder = run.stage("generator")
    if not run.has("generator"):
        raise FileNotFoundError(f"{folder}: no trained generator in this run; run `cemg run` to the end first")
    from cemg.generator import load_generator as load_saved_generator
    from cemg.generator.content_prior import with_content_prior

    generator = load_saved_generator(folder, cfg.generator.backbone, device)
    prior = cfg.generator.content_prior
    if prior.weight or prior.mixture or prior.new_item_share:
        from cemg.features.artifact import ItemFeatures

        counts = None
        if prior.popularity_adjustment or prior.cold_weight:
            from cemg.data.dataset import InteractionDataset
            from cemg.data.split import leave_one_out

            counts = leave_one_out(InteractionDataset.load(run.stage("data")), cfg.data.max_history).train_item_counts()
        generator = with_content_prior(generator, cfg, ItemFeatures.load(run.stage("features")), counts)
    return generator


class Recommender:
    """A trained run behind a small API. Thread-safe: one beam search runs at a time (torch already
    spreads one over the cores), so a server may call it from several threads."""

    def __init__(
        self,
        catalogue: ItemCatalogue,
        generator: Any,
        config: CEMGConfig,
        evaluation: dict[str, Any] | None = None,
        run_dir: Path | None = None,
    ):
        if generator.n_items != len(catalogue):
            raise ValueError(f"the generator knows {generator.n_items} items, the catalogue {len(catalogue)}")
        self.catalogue = catalogue
        self.generator = generator
        self.config = config
        self.evaluation = evaluation or {}
        self.run_dir = run_dir
        from cemg.data.split import leave_one_out
        from cemg.generator import backbone_family

        self.backbone = backbone_family(config.generator.backbone)
        # "semantic" (no per-item parameter) or "hybrid": which model class answers, as trained
        self.mode = (getattr(generator, "info", None) or {}).get("mode", config.generator.mode)

        # The popularity fallback counts the training interactions only, as the Popularity baseline does.
        counts = leave_one_out(catalogue.dataset, config.data.max_history).train_item_counts()
        self._popular = np.argsort(-counts, kind="stable")
        self._pop_log_share = np.log(np.maximum(counts, 1e-12) / max(counts.sum(), 1))
        self._lock = threading.Lock()

    @classmethod
    def load(cls, run_dir: Path | str, device: str = "auto", seed: int | None = None) -> Recommender:
        """Load a finished run (after `cemg demo` or `cemg run`); FileNotFoundError says which stage is missing.
        `seed` picks one seed of a run made with `--seeds` (default: the config's seed, else the first)."""
        run_dir = Path(run_dir)
        folder = RunFolder.open(run_dir, seed)
        cfg = load_run_config(run_dir)
        catalogue = ItemCatalogue.load(folder, cfg)
        generator = load_generator(folder, cfg, device)
        trained = catalogue.semantic_ids.codes[: catalogue.n_trained]
        if not np.array_equal(generator.semantic_ids.codes, trained):
            if catalogue.n_trained < len(catalogue):
                raise ValueError(f"{run_dir}: the generator's semantic ids differ from the tokenizer's, against "
                                 "which the added items were coded; retrain the generator or remove the added items")
            log.warning("%s: the generator's semantic ids differ from the tokenizer's; using the generator's",
                        run_dir)
            catalogue = ItemCatalogue(catalogue.dataset, generator.semantic_ids, catalogue.learned_levels,
                                      catalogue.fusion)
        if len(catalogue) > generator.n_items:
            generator = generator.with_catalogue(catalogue.semantic_ids, catalogue.added_content)
        evaluation = folder.evaluation().results if folder.has("evaluation") else None
        log.info("loaded %s: %d items, %s generator, device %s", folder.seed_dir, len(catalogue),
                 cfg.generator.backbone, generator.device)
        return cls(catalogue, generator, cfg, evaluation, run_dir)

    @property
    def n_items(self) -> int:
        return len(self.catalogue)

    def index(self, item: ItemRef) -> int:
        return self.catalogue.index(item)

    def recommend(
        self, history: Sequence[ItemRef], k: int = 10, exclude_history: bool | None = None
    ) -> list[Recommendation]:
        """The k most likely next items after `history` (oldest first; indices or raw keys).

        Only the last `data.max_history` items condition the generator, as in training. With
        `exclude_history` (default: the run's `evaluation.mask_history`) items of the history are
        never recommended. An empty history has nothing to condition on: the most popular training
        items come back, marked source="popularity".
        """
        return self.recommend_batch([history], k, exclude_history)[0]

    def recommend_batch(
        self, histories: Sequence[Sequence[ItemRef]], k: int = 10, exclude_history: bool | None = None
    ) -> list[list[Recommendation]]:
        if isinstance(histories, (str, bytes)) or not isinstance(k, (int, np.integer)) or isinstance(k, bool):
            raise ValueError("recommend_batch takes a list of histories and an integer k")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if exclude_history is None:
            exclude_history = self.config.evaluation.mask_history
        resolved = []
        for history in histories:
            if isinstance(history, (str, bytes)):
                raise ValueError(f"a history is a list of items, not the string {history!r}")
            resolved.append(np.asarray([self.index(item) for item in history], dtype=np.int64))
        out: list[list[Recommendation] | None] = [None] * len(resolved)
        rows = [i for i, h in enumerate(resolved) if len(h)]
        if rows:
            cap = self.config.data.max_history
            with self._lock:
                items, scores = self.generator.recommend_with_scores(
                    [resolved[i][-cap:] for i in rows], k, [resolved[i] for i in rows] if exclude_history else None
                )
            for row, i in enumerate(rows):
                out[i] = self._rows(items[row], scores[row], "generator")
        for i, history in enumerate(resolved):
            if not len(history):
                top = self._popular[:k]
                out[i] = self._rows(top, self._pop_log_share[top], "popularity")
        return out  # type: ignore[return-value]

    def _rows(self, items: np.ndarray, scores: np.ndarray, source: str) -> list[Recommendation]:
        rows = []
        for item, score in zip(items, scores):
            if item < 0 or not math.isfinite(float(score)):  # padding when fewer than k items remain
                continue
            i = int(item)
            rows.append(Recommendation(len(rows) + 1, i, self.catalogue.key(i), self.catalogue.title(i),
                                       float(score), source))
        return rows

    def explain(self, item: ItemRef, neighbours: int = 5) -> Explanation:
        """The item's semantic id, its fusion weights, and the nearest items sharing a code prefix
        (longest shared prefix first, then closest RQ-VAE latent)."""
        return self.catalogue.explain(item, neighbours)


# --- comparing two configurations -------------------------------------------------------------------


def compare_runs(
    run_a: Path | str, run_b: Path | str, metric: str = "NDCG@10", part: str = "test", subset: str = "all"
) -> Comparison:
    """Configuration A (one run folder) against B over their seeds and their users: a paired test across
    seeds and one across users, and a verdict in words that says when the difference is within noise
    (cemg.evaluation.seeds). A run made without `--seeds` counts as one seed, its config's."""
    def per_seed(run: Path | str) -> dict[int, dict]:
        return {seed: evaluation.results for seed, evaluation in seed_evaluations(run).items()}

    return compare_seeds(per_seed(run_a), per_seed(run_b), metric, part, subset)
