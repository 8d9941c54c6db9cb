"""`GenerativeRecommender`: a trained T5 over semantic ids, ranking items by constrained beam search.

It implements the evaluation protocol's `Recommender` (recommend(histories, k, exclude) -> (n, k)
item ids, -1 padding). Saved as one folder: `model/` (save_pretrained, safetensors), the semantic
ids it was trained on (`semantic_ids/`), and `generator.json` (vocabulary, decoding settings, the
generator config and the training record).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import T5ForConditionalGeneration

from cemg.config import GeneratorConfig, resolve_device
from cemg.generator.decoding import Exclusion, PrefixTree, constrained_beam_search, search_in_batches
from cemg.generator.vocab import SemanticVocabulary
from cemg.tokenizer.semantic_ids import SemanticIds

log = logging.getLogger(__name__)

META = "generator.json"


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


class SemanticIdRecommender:
    """What the T5 and the causal generators share: a catalogue of semantic ids and the Recommender
    protocol on top of their `recommend_with_scores` (trie-constrained beam search)."""

    semantic_ids: SemanticIds

    @property
    def n_items(self) -> int:
        return self.semantic_ids.n_items

    def recommend_with_scores(
        self, histories: Sequence[np.ndarray], k: int, exclude: Sequence[np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def recommend(
        self, histories: Sequence[np.ndarray], k: int, exclude: Sequence[np.ndarray] | None = None
    ) -> np.ndarray:
        return self.recommend_with_scores(histories, k, exclude)[0]


class GenerativeRecommender(SemanticIdRecommender):
    def __init__(
        self,
        model: T5ForConditionalGeneration,
        vocab: SemanticVocabulary,
        semantic_ids: SemanticIds,
        config: GeneratorConfig | None = None,
        max_history: int = 20,
        device: str = "cpu",
        info: dict | None = None,
    ):
        if tuple(semantic_ids.codebook_sizes) != vocab.codebook_sizes:
            raise ValueError(
                f"semantic ids have codebooks {semantic_ids.codebook_sizes}, the vocabulary {vocab.codebook_sizes}"
            )
        self.config = config or GeneratorConfig()
        self.device = torch.device(resolve_device(device))
        self.model = model.to(self.device).eval()  # training switches it back with model.train()
        self.vocab = vocab
        self.semantic_ids = semantic_ids
        self.max_history = max_history
        self.info = dict(info or {})
        self.item_tokens = vocab.item_tokens(semantic_ids.codes)
        self.tree = PrefixTree(semantic_ids.codes, semantic_ids.codebook_sizes).to(self.device)

    def encode(self, histories: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.vocab.encode_histories(histories, self.item_tokens, self.max_history)
        return torch.from_numpy(ids).to(self.device), torch.from_numpy(mask).to(self.device)

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

        def search(lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
            ids, mask = self.encode(histories[lo:hi])
            excl = None if exclude is None else Exclusion.build(self.tree, exclude[lo:hi], self.device)
            return constrained_beam_search(self.model, self.vocab, self.tree, ids, mask, beams, excl,
                                           self.config.t5.decoding)

        return search_in_batches(self.model, len(histories), k, self.config.eval_batch_size, search)

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(folder / "model", safe_serialization=True)
        save_generator_meta(folder, META, self.semantic_ids, self.config, self.info,
                            vocab=self.vocab.to_dict(), max_history=self.max_history)

    @classmethod
    def load(cls, folder: Path, device: str = "auto") -> GenerativeRecommender:
        folder = Path(folder)
        meta, semantic_ids, config = load_generator_meta(folder, META)
        model = T5ForConditionalGeneration.from_pretrained(folder / "model")
        return cls(
            model, SemanticVocabulary.from_dict(meta["vocab"]), semantic_ids,
            config, int(meta["max_history"]), device, meta.get("info"),
        )
