"""What every generator shares once trained: the Recommender protocol over trie-constrained search,
and the parts of its saved folder that do not depend on the backbone.

A backbone family's recommender (t5.py, t5_decoder.py, causal.py) holds a catalogue of semantic ids,
its prefix tree and a model, and says only how a batch of histories becomes a `BeamStep`; ranking,
exclusion and batching are the same for all (search.py). Every saved generator is one folder with
the semantic ids it was trained on (`semantic_ids/`), a JSON file of its own (architecture, the
generator config, the training record, the ids' digest) and its weights.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from cemg.config import GeneratorConfig
from cemg.generator.search import BeamStep, Exclusion, PrefixTree, beam_search, search_in_batches
from cemg.tokenizer.semantic_ids import SemanticIds


def codes_digest(semantic_ids: SemanticIds) -> str:
    """Identifies the semantic ids a generator was trained on (a model is useless with other ids)."""
    return hashlib.sha256(np.ascontiguousarray(semantic_ids.codes, dtype=np.int64).tobytes()).hexdigest()[:16]


def save_generator_meta(folder: Path, meta_file: str, semantic_ids: SemanticIds, config: GeneratorConfig,
                        info: dict, **architecture) -> None:
    """The parts every saved generator shares: its semantic ids, their digest, config and record."""
    semantic_ids.save(folder / "semantic_ids")
    meta = {**architecture, "semantic_ids_digest": codes_digest(semantic_ids),
            "config": config.model_dump(mode="json"), "info": info}
    (folder / meta_file).write_text(json.dumps(meta, indent=2, default=str), encoding="utf-8")


def load_generator_meta(folder: Path, meta_file: str) -> tuple[dict, SemanticIds, GeneratorConfig]:
    """(meta, semantic ids, config) of a saved generator; refuses ids that are not the trained ones."""
    meta_path = folder / meta_file
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: not a saved generator (no {meta_file})")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    semantic_ids = SemanticIds.load(folder / "semantic_ids")
    if codes_digest(semantic_ids) != meta["semantic_ids_digest"]:
        raise ValueError(f"{folder / 'semantic_ids'}: codes differ from those the generator was trained on")
    return meta, semantic_ids, GeneratorConfig.model_validate(meta["config"])


def describe_generator(info: dict, reads_content: bool = False, prior: Mapping | None = None) -> str:
    """The model behind a result in one line (mode, backbone, size, content options), as `cemg run`
    prints it and the report shows it; `info` is a trained generator's info record, `prior` the
    content prior's settings (generator.content_prior's fields; absent ones at their defaults)."""
    params = info.get("n_parameters")
    prior = prior or {}
    weight = prior.get("weight", 0.0)
    image_weight, adjustment, cold = (prior.get(k, d) for k, d in
                                      (("image_weight", 1.0), ("popularity_adjustment", 0.0), ("cold_weight", 0.0)))
    return (f"{info.get('mode', 'semantic')} mode, {info.get('backbone', '?')} backbone"
            + (f", {params:,} parameters" if params else "") + (", reads item content" if reads_content else "")
            + (f", content prior weight {weight:g}" if weight else "")
            + (f" (image block x {image_weight:g})" if weight and image_weight != 1.0 else "")
            + (f", cold weight {cold:g}" if weight and cold else "")
            + (f", popularity adjustment {adjustment:g}" if weight and adjustment else "")
            + (f", as a mixture (lambda {prior['mixture']:g}, beta {prior.get('mixture_sharpness', 10.0):g})"
               if prior.get("mixture") else "")
            + (f", new-item share {prior['new_item_share']:g} (beta {prior.get('new_item_sharpness', 20.0):g}"
               + (f", first {prior['new_item_prefix_levels']} code(s) weighed by the generator"
                  if prior.get("new_item_prefix_levels") else "")
               + (f", gated per user by the last item's neighbourhood ({prior['new_item_gate']:g}, beta "
                  f"{prior.get('new_item_gate_sharpness', 20.0):g})" if prior.get("new_item_gate") else "") + ")"
               if prior.get("new_item_share") else ""))


class SemanticIdRecommender:
    """The evaluation protocol's `Recommender` (recommend(histories, k, exclude) -> (n, k) item ids,
    -1 padding) for any backbone family: a family implements `beam_step`."""

    semantic_ids: SemanticIds
    tree: PrefixTree
    model: torch.nn.Module
    config: GeneratorConfig
    device: torch.device

    @property
    def n_items(self) -> int:
        return self.semantic_ids.n_items

    def with_catalogue(self, semantic_ids: SemanticIds,
                       added_content: np.ndarray | None = None) -> SemanticIdRecommender:
        """The same trained model over `semantic_ids`: the trained ids followed by items added after
        training (cemg.added_items), with the trained codebooks. In semantic mode an item is its code
        tuple, so a new one is scored like any other once it is in the prefix tree; the model is
        shared, not copied. A family with per-item parameters (hybrid) refuses. `added_content`: the
        added items' content vectors (ItemFeatures.content_matrix), for a model that reads content."""
        trained = self.semantic_ids
        if list(semantic_ids.codebook_sizes) != list(trained.codebook_sizes):
            raise ValueError(f"the new catalogue's codebooks {semantic_ids.codebook_sizes} differ from the trained "
                             f"{trained.codebook_sizes}")
        if semantic_ids.n_items < trained.n_items or not np.array_equal(semantic_ids.codes[: trained.n_items],
                                                                        trained.codes):
            raise ValueError("the new catalogue does not start with the ids the generator was trained on")
        return self._over(semantic_ids, added_content)

    def _over(self, semantic_ids: SemanticIds, added_content: np.ndarray | None = None) -> SemanticIdRecommender:
        # The T5 families read an item only through its tokens and the tree.
        out = copy.copy(self)
        out.semantic_ids = semantic_ids
        out.item_tokens = self.vocab.item_tokens(semantic_ids.codes)
        out.tree = PrefixTree(semantic_ids.codes, semantic_ids.codebook_sizes).to(self.device)
        return out

    def beam_step(self, histories: Sequence[np.ndarray]) -> BeamStep:
        """The search's per-level scorer for these users (runs the model over their histories)."""
        raise NotImplementedError

    def recommend_with_scores(
        self, histories: Sequence[np.ndarray], k: int, exclude: Sequence[np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(items (n, k) int64, scores (n, k) float32 sequence log-probs), best first; -1 / -inf pad.

        The beam is `config.beams` wide, widened to k when k is larger. Excluded items are never
        returned, and prefixes whose items are all excluded are pruned, so a user gets
        min(k, items not excluded) items whenever the beam is at least k wide.
        """
        if exclude is not None and len(exclude) != len(histories):
            raise ValueError(f"exclude has {len(exclude)} rows for {len(histories)} histories")
        beams = max(self.config.beams, k)

        @torch.no_grad()
        def search(lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
            step = self.beam_step(histories[lo:hi])
            excl = None if exclude is None else Exclusion.build(self.tree, exclude[lo:hi], self.device)
            return beam_search(self.tree, step, hi - lo, beams, excl, self.device)

        return search_in_batches(self.model, len(histories), k, self.config.eval_batch_size, search)

    def recommend(
        self, histories: Sequence[np.ndarray], k: int, exclude: Sequence[np.ndarray] | None = None
    ) -> np.ndarray:
        return self.recommend_with_scores(histories, k, exclude)[0]
