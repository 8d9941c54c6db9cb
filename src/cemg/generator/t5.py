"""The paper's generator: a T5 encoder-decoder over semantic-id tokens (paper 4.2.4).

The encoder reads the history as the flat sequence of its items' tokens (M per item) and an eos;
the decoder writes the next item's M tokens. Training is one example per (user, position): the
(at most max_history) items before the position are the input, the item there the target, as in
TIGER's sliding windows, with T5's token cross-entropy on the target's codes. Here:

- the backbone: presets built from scratch, or any T5 that `from_pretrained` loads, with the
  semantic tokens appended to its vocabulary (`build_backbone`);
- how the decoder runs inside the shared trie-constrained search (`T5Step`, three equivalent modes);
- `GenerativeRecommender`, the trained T5 behind the Recommender protocol, saved as one folder:
  `model/` (save_pretrained, safetensors), `semantic_ids/` and `generator.json` (vocabulary,
  maximum history, the generator config and the training record);
- `T5Family`, what the shared trainer (train.py) needs: the sliding-window examples and the loss.

"t5-tiny" follows TIGER's (Rajput et al. 2023) small T5: 4 encoder and 4 decoder layers, d_model
128, 6 heads of 64, feed-forward 1024, dropout 0.1 (4.6M parameters with 4 x 256 codes). On the
shared 2-core CPU (one torch thread, load average 4-9) a batch of 256 took 3-5 s with 7-item
histories and 10-17 s with 20-item ones (bench/generator_speed.py): about half an hour per Beauty
epoch of 514 length-bucketed batches. "t5-mini" (not from a paper) took 0.7-1.2 s and 2.7-4.4 s.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import T5Config, T5ForConditionalGeneration

from cemg import distributed
from cemg.config import GeneratorConfig, resolve_device
from cemg.data.split import SplitDataset
from cemg.generator.recommender import SemanticIdRecommender, load_generator_meta, save_generator_meta
from cemg.generator.search import Exclusion, PrefixTree, beam_search
from cemg.generator.train import length_bucketed_batches
from cemg.generator.vocab import SemanticVocabulary
from cemg.tokenizer.semantic_ids import SemanticIds

log = logging.getLogger(__name__)

META = "generator.json"

# --- the backbone ---------------------------------------------------------------------------------

PRESETS: dict[str, dict[str, Any]] = {
    "t5-tiny": dict(
        d_model=128, num_layers=4, num_decoder_layers=4, num_heads=6, d_kv=64, d_ff=1024,
        dropout_rate=0.1, feed_forward_proj="relu",
    ),
    # Not from a paper: a CPU-sized variant with about a fifth of t5-tiny's per-token work (2 + 2
    # layers, 4 heads of 32, feed-forward 512), for runs on a 2-core machine.
    "t5-mini": dict(
        d_model=128, num_layers=2, num_decoder_layers=2, num_heads=4, d_kv=32, d_ff=512,
        dropout_rate=0.1, feed_forward_proj="relu",
    ),
}


def build_backbone(
    name: str, codebook_sizes: Sequence[int], seed: int, **overrides: Any
) -> tuple[T5ForConditionalGeneration, SemanticVocabulary]:
    """A T5 whose vocabulary holds the semantic tokens; `overrides` change a preset's T5Config fields."""
    torch.manual_seed(seed)
    sizes = tuple(int(k) for k in codebook_sizes)
    if name in PRESETS:
        vocab = SemanticVocabulary(sizes)
        config = T5Config(
            **{**PRESETS[name], **overrides}, vocab_size=vocab.size, pad_token_id=vocab.pad_id,
            eos_token_id=vocab.eos_id, decoder_start_token_id=vocab.decoder_start_id,
        )
        model = T5ForConditionalGeneration(config)
        log.info("backbone %s built from scratch: %d parameters, vocabulary %d",
                 name, sum(p.numel() for p in model.parameters()), vocab.size)
        return model, vocab
    if overrides:
        raise ValueError(f"config overrides apply to presets {sorted(PRESETS)} only, not to {name!r}")
    try:
        model = T5ForConditionalGeneration.from_pretrained(name)
    except OSError as err:
        raise ValueError(
            f"generator.backbone {name!r} is neither a preset ({', '.join(PRESETS)}) nor a T5 model "
            f"that from_pretrained can load: {err}"
        ) from None
    config = model.config
    start = config.decoder_start_token_id
    if start is None or config.pad_token_id is None or config.eos_token_id is None:
        raise ValueError(f"{name}: the T5 config must define pad, eos and decoder start token ids")
    # Semantic tokens go after the embedding table's last row (config.vocab_size), which for the
    # released T5 checkpoints is padded past the word-piece vocabulary, so no word piece is reused.
    vocab = SemanticVocabulary(sizes, offset=config.vocab_size, pad_id=config.pad_token_id,
                               eos_id=config.eos_token_id)
    if start != vocab.pad_id:
        raise ValueError(f"{name}: decoder_start_token_id {start} differs from pad {vocab.pad_id}")
    # Mean resizing draws new rows from the old embeddings' mean and covariance; with fewer old rows
    # than dimensions (a toy checkpoint) that covariance is degenerate, so fall back to T5's init.
    model.resize_token_embeddings(vocab.size, mean_resizing=config.vocab_size > config.d_model)
    log.info("backbone %s loaded: %d parameters, vocabulary extended to %d (semantic tokens from %d)",
             name, sum(p.numel() for p in model.parameters()), vocab.size, vocab.offset)
    return model, vocab


# --- the decoder inside the shared constrained search ---------------------------------------------


def _level_log_probs(model: T5ForConditionalGeneration, hidden: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """(R, d) decoder states -> (R, hi - lo) log-softmax over one level's tokens only.

    Only the level's rows of the output layer are used: for a pretrained T5 the other 32k word
    pieces would cost most of the step. The scaling mirrors T5ForConditionalGeneration's head
    (tied embeddings are read through a d_model ** -0.5 factor); transformers 5 names the switch
    `scale_decoder_outputs`, older releases use `tie_word_embeddings`.
    """
    config = model.config
    if getattr(config, "scale_decoder_outputs", getattr(config, "tie_word_embeddings", True)):
        hidden = hidden * config.d_model**-0.5
    logits = F.linear(hidden, model.get_output_embeddings().weight[lo:hi])
    return torch.log_softmax(logits.float(), dim=-1)


def _packed_mask(width: int, length: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(1, 1, Q, Q) additive mask, Q = width * length: causal inside each beam, blind across beams."""
    pos = torch.arange(width * length, device=device)
    beam, step = pos // length, pos % length
    allowed = (beam[:, None] == beam[None, :]) & (step[None, :] <= step[:, None])
    return torch.where(allowed, 0.0, torch.finfo(dtype).min).to(dtype)[None, None]


DECODE_MODES = ("packed", "cache", "recompute")


class T5Step:
    """The T5's per-level scores for the shared search (search.BeamStep). The encoder runs once per
    user, here; the decoder once per level, per `mode`:

    - "packed": one row per user holding all its beams' prefixes side by side, with a mask that
      keeps beams apart. T5's self-attention bias depends only on distances inside a beam and its
      cross-attention has no position bias, so this is exact, and the encoder keys/values are
      computed per user instead of per beam. Fastest, or level with "cache", on the 2-core CPU
      (bench/generator_speed.py), and it needs no cache bookkeeping.
    - "cache": one row per beam, one new token per step on the key/value cache; every beam holds
      (and reads) its own copy of its user's cross-attention keys/values.
    - "recompute": one row per beam, the whole (at most L-token) prefix each step, no cache.

    The model must be in eval mode.
    """

    def __init__(self, model: T5ForConditionalGeneration, vocab: SemanticVocabulary, input_ids: torch.Tensor,
                 attention_mask: torch.Tensor, mode: str = "packed"):
        if mode not in DECODE_MODES:
            raise ValueError(f"unknown decoding mode {mode!r}; expected one of {DECODE_MODES}")
        self.model, self.vocab, self.mode = model, vocab, mode
        self.n, device = len(input_ids), input_ids.device
        self.encoded = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        self.attention_mask = attention_mask
        self.offsets = torch.as_tensor(vocab.level_offsets(), device=device)
        self.users = torch.arange(self.n, device=device)
        self.prefix = torch.full((self.n, 1), vocab.decoder_start_id, dtype=torch.long, device=device)  # (n * width, t)
        self.enc_rows, self.mask_rows, self.cache = self.encoded, attention_mask, None
        self.width = 1

    def log_probs(self, depth: int, child: torch.Tensor) -> torch.Tensor:
        model, n, width = self.model, self.n, self.width
        if self.mode == "packed":
            hidden = model.decoder(
                input_ids=self.prefix.reshape(n, -1),
                attention_mask=_packed_mask(width, depth + 1, self.encoded.dtype, self.encoded.device),
                encoder_hidden_states=self.encoded,
                encoder_attention_mask=self.attention_mask,
                use_cache=False,
            ).last_hidden_state  # (n, width * (depth + 1), d)
            hidden = hidden.reshape(n * width, depth + 1, -1)[:, -1]
        else:
            out = model.decoder(
                input_ids=self.prefix[:, -1:] if self.mode == "cache" else self.prefix,
                encoder_hidden_states=self.enc_rows,
                encoder_attention_mask=self.mask_rows,
                past_key_values=self.cache,
                use_cache=self.mode == "cache",
            )
            self.cache = out.past_key_values if self.mode == "cache" else None
            hidden = out.last_hidden_state[:, -1]
        return _level_log_probs(model, hidden, *self.vocab.level_range(depth))  # (n * width, K)

    def advance(self, depth: int, parent: torch.Tensor, code: torch.Tensor) -> None:
        width, keep = self.width, parent.shape[1]
        source = (self.users[:, None] * width + parent).reshape(-1)  # beam each survivor extends
        token = self.offsets[depth] + code
        self.prefix = torch.cat([self.prefix[source], token.reshape(-1, 1)], dim=1)
        if self.cache is not None:
            # Beams never move between users, so the cross-attention keys/values (per user) are
            # repeated once when the width changes instead of being gathered again every step.
            self.cache.self_attention_cache.reorder_cache(source)
            if keep != width:
                self.cache.cross_attention_cache.reorder_cache((self.users * width).repeat_interleave(keep))
        if keep != width and self.mode != "packed":
            # Beams stay grouped by user (row = user * width + beam), so each user's encoder rows
            # only need repeating when the width changes, not reordering every step.
            self.enc_rows = self.encoded.repeat_interleave(keep, dim=0)
            self.mask_rows = self.attention_mask.repeat_interleave(keep, dim=0)
        self.width = keep


@torch.no_grad()
def constrained_beam_search(
    model: T5ForConditionalGeneration,
    vocab: SemanticVocabulary,
    tree: PrefixTree,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    beams: int,
    exclusion: Exclusion | None = None,
    mode: str = "packed",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-`beams` items per user for encoder inputs (input_ids, attention_mask), best first:
    (items (n, beams), scores (n, beams)), -1 / -inf padded; see search.beam_search and `T5Step`."""
    step = T5Step(model, vocab, input_ids, attention_mask, mode)
    return beam_search(tree, step, len(input_ids), beams, exclusion, input_ids.device)


# --- the recommender ------------------------------------------------------------------------------


class GenerativeRecommender(SemanticIdRecommender):
    """A trained T5 over semantic ids, ranking items by trie-constrained beam search."""

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

    def beam_step(self, histories: Sequence[np.ndarray]) -> T5Step:
        ids, mask = self.encode(histories)
        return T5Step(self.model, self.vocab, ids, mask, self.config.t5.decoding)

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


# --- training: sliding windows in the shared trainer ----------------------------------------------


@dataclasses.dataclass(frozen=True)
class NextItemExamples:
    """All sliding-window examples of the training sequences, without materialising the windows."""

    items: np.ndarray  # (total,) the training sequences concatenated
    seq_start: np.ndarray  # (n_examples,) where the example's sequence starts in `items`
    position: np.ndarray  # (n_examples,) index of the target in `items`
    max_history: int

    def __len__(self) -> int:
        return len(self.position)

    @property
    def history_lengths(self) -> np.ndarray:
        return np.minimum(self.position - self.seq_start, self.max_history)

    @classmethod
    def from_sequences(cls, sequences: list[np.ndarray], max_history: int) -> NextItemExamples:
        lengths = np.array([len(s) for s in sequences], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        items = np.concatenate(sequences).astype(np.int64) if len(sequences) else np.zeros(0, np.int64)
        per_seq = np.maximum(lengths - 1, 0)
        seq_start = np.repeat(starts, per_seq)
        # targets are positions 1..len-1 of each sequence
        offset_in_seq = np.arange(per_seq.sum()) - np.repeat(np.cumsum(per_seq) - per_seq, per_seq) + 1
        return cls(items, seq_start, seq_start + offset_in_seq, max_history)

    def batch(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(history item matrix (b, m) left-aligned, lengths (b,), targets (b,))."""
        pos = self.position[rows]
        lo = np.maximum(self.seq_start[rows], pos - self.max_history)
        lengths = pos - lo
        width = int(lengths.max(initial=0))
        idx = lo[:, None] + np.arange(width)[None, :]
        history = self.items[np.minimum(idx, pos[:, None] - 1)]  # entries past the length are ignored
        return history, lengths, self.items[pos]


class _T5Loss(torch.nn.Module):
    """T5's token cross-entropy on one batch, as the module DistributedDataParallel wraps."""

    def __init__(self, model: T5ForConditionalGeneration):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                share: float) -> tuple[torch.Tensor, torch.Tensor, int]:
        loss = self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        # T5's loss is the mean over this rank's rows; weighting it by the rank's share of the
        # global batch makes DDP's gradient average the gradient of the global batch's mean.
        return loss * share, loss.detach(), 1


class T5Family:
    """The sliding-window T5 in the shared trainer (train.py): every position t >= 1 of a training
    sequence is one example, and every batch step weighs the same in the epoch's loss."""

    label = "T5 generator"
    find_unused_parameters = False

    def __init__(self, split: SplitDataset, semantic_ids: SemanticIds, cfg: GeneratorConfig, seed: int, device: str):
        model, self.vocab = build_backbone(cfg.backbone, semantic_ids.codebook_sizes, seed)
        self.recommender = GenerativeRecommender(model, self.vocab, semantic_ids, cfg, split.max_history, device)
        self.backbone = cfg.backbone
        self.epochs, self.lr = cfg.t5.epochs, cfg.t5.lr
        self.eval_batch_size = cfg.eval_batch_size * 8
        self.examples = NextItemExamples.from_sequences(split.train, split.max_history)
        self.n_examples = len(self.examples)
        self.codes = semantic_ids.codes
        self.labels_offsets = self.vocab.level_offsets()

    def batches(self, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
        return length_bucketed_batches(self.examples.history_lengths, batch_size, rng)

    def inputs(self, rows: np.ndarray, n_global: int, device: torch.device | str) -> tuple:
        items, lengths, targets = self.examples.batch(rows)
        ids, mask = self.vocab.encode_items(items, lengths, self.recommender.item_tokens)
        labels = self.codes[targets] + self.labels_offsets[None, :]  # (b, L) target tokens
        share = len(rows) * distributed.world_size() / n_global
        return (torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device),
                torch.from_numpy(labels).to(device), share)

    def loss_module(self) -> torch.nn.Module:
        return _T5Loss(self.recommender.model)

    def record(self) -> dict[str, Any]:
        return {"n_examples": self.n_examples}
