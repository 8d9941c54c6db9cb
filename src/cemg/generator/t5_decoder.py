"""A decoder-only, token-level T5 over semantic ids (issue 14; not in the paper's experiments).

The paper's T5 (t5.py) encodes the history's tokens and decodes the next item's, one example per
history prefix: a Beauty epoch is ~130k encoder passes over up to 81 tokens. Its seed also names a
T5 "fine-tuned for decoder-only tasks by only using its decoder", which is this family:

- a user's history is the flat sequence of its items' tokens, M per item (the tokenizer's extra
  disambiguation level included when the ids have one), after one start token: the same tokens the
  paper's T5 encoder reads;
- transformers' T5 decoder stack (T5Stack, is_decoder=True) reads it with causal attention and
  T5's relative position bias. Without encoder_hidden_states T5Block skips its cross-attention
  (`do_cross_attention = self.is_decoder and encoder_hidden_states is not None` in
  transformers/models/t5/modeling_t5.py), so those layers are removed rather than kept unused;
- training runs once over a user's window (its last max_history + 1 training items) and predicts
  every token of every item after the first from the tokens before it (teacher forcing), so every
  item of the window is a target, as in SASRec: one pass per user instead of one T5 example per
  prefix. A level's token is a softmax over that level's codes only, as the T5's search scores it;
- recommendation is the shared trie-constrained beam search (search.py) fed by `TokenDecoderStep`:
  the history runs once per user and fills a key/value cache; then each level runs all the user's
  beams' prefixes side by side in one row over that cache, with a mask that keeps beams apart and
  each beam token's own relative positions, so no beam holds a copy of its user's history keys.

No per-item parameter anywhere: a semantic-mode model by construction.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import T5Config
from transformers.models.t5.modeling_t5 import T5Block, T5Stack

from cemg import distributed
from cemg.config import GeneratorConfig, resolve_device
from cemg.data.split import SplitDataset
from cemg.generator.recommender import SemanticIdRecommender, load_generator_meta, save_generator_meta
from cemg.generator.search import PrefixTree
from cemg.generator.train import length_bucketed_batches
from cemg.generator.vocab import SemanticVocabulary
from cemg.tokenizer.semantic_ids import SemanticIds

log = logging.getLogger(__name__)

META = "t5_decoder.json"
WEIGHTS = "model.safetensors"
CONFIG = "t5_config.json"
IGNORE = -100
# transformers renamed a layer's cache argument from past_key_values to cache during 5.x (the old
# name warns until 5.40 and then goes): use whichever the installed T5Block takes.
_CACHE_ARG = "cache" if "cache" in inspect.signature(T5Block.forward).parameters else "past_key_values"

# The decoders of the T5 presets (t5.py): "t5-decoder-tiny" has t5-tiny's decoder sizes (TIGER's
# small T5: 4 layers, d_model 128, 6 heads of 64, feed-forward 1024), "t5-decoder-mini" t5-mini's.
PRESETS: dict[str, dict[str, Any]] = {
    "t5-decoder-tiny": dict(d_model=128, num_layers=4, num_heads=6, d_kv=64, d_ff=1024, dropout_rate=0.1,
                            feed_forward_proj="relu"),
    "t5-decoder-mini": dict(d_model=128, num_layers=2, num_heads=4, d_kv=32, d_ff=512, dropout_rate=0.1,
                            feed_forward_proj="relu"),
}
PRESETS["t5-decoder"] = PRESETS["t5-decoder-tiny"]


class TokenDecoderModel(nn.Module):
    """T5's decoder stack over semantic tokens, with its embedding table as the (tied) output layer."""

    def __init__(self, config: T5Config, vocab: SemanticVocabulary):
        super().__init__()
        if not config.is_decoder or config.is_encoder_decoder:
            raise ValueError("a token decoder needs a T5Config with is_decoder=True, is_encoder_decoder=False")
        self.config, self.vocab = config, vocab
        self.decoder = T5Stack(config)
        for block in self.decoder.block:
            # T5LayerCrossAttention: never called without an encoder; kept, it would be dead weight
            # in the parameter count and the optimizer, and DDP would need find_unused_parameters.
            del block.layer[1]

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(b, T) right-padded token ids -> (b, T) states; position t predicts token t + 1. No mask
        is needed: under causal attention no real token sees the padding after it."""
        return self.decoder(input_ids=input_ids, use_cache=False).last_hidden_state

    def level_logits(self, hidden: torch.Tensor, level: int) -> torch.Tensor:
        """(..., d) states -> (..., K_level) logits over one level's tokens only: T5's tied head,
        which reads the N(0, 1) token table through a d_model ** -0.5 factor."""
        lo, hi = self.vocab.level_range(level)
        return F.linear(hidden * self.config.d_model**-0.5, self.decoder.embed_tokens.weight[lo:hi])

    def relative_bias(self, query_pos: torch.Tensor, key_pos: torch.Tensor) -> torch.Tensor:
        """(1, heads, Q, K) T5's causal relative position bias for arbitrary query and key positions
        (T5Attention.compute_bias assumes the queries are the last Q of K contiguous positions)."""
        attn = self.decoder.block[0].layer[0].SelfAttention
        buckets = attn._relative_position_bucket(
            key_pos[None, :] - query_pos[:, None], bidirectional=False,
            num_buckets=attn.relative_attention_num_buckets, max_distance=attn.relative_attention_max_distance)
        return attn.relative_attention_bias(buckets).permute(2, 0, 1).unsqueeze(0)

    def run_blocks(self, input_ids: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor, cache) -> torch.Tensor:
        """T5Stack.forward with a given position bias and additive mask: the same layers in the same
        order (T5Stack shares layer 0's bias with all layers, as here); appends to `cache`."""
        stack = self.decoder
        hidden = stack.dropout(stack.embed_tokens(input_ids))
        for block in stack.block:
            hidden = block(hidden, mask, bias, **{_CACHE_ARG: cache})[0]
        return stack.dropout(stack.final_layer_norm(hidden))


def build_token_decoder(name: str, codebook_sizes: Sequence[int], seed: int,
                        **overrides: Any) -> TokenDecoderModel:
    """A token decoder built from scratch from a preset; `overrides` change the preset's T5Config fields."""
    if name not in PRESETS:
        raise ValueError(f"generator.backbone {name!r}: the token decoder presets are {', '.join(PRESETS)}")
    torch.manual_seed(seed)
    vocab = SemanticVocabulary(tuple(int(k) for k in codebook_sizes))
    config = T5Config(
        **{**PRESETS[name], **overrides}, vocab_size=vocab.size, pad_token_id=vocab.pad_id,
        eos_token_id=vocab.eos_id, decoder_start_token_id=vocab.decoder_start_id,
        is_decoder=True, is_encoder_decoder=False, use_cache=False,
    )
    model = TokenDecoderModel(config, vocab)
    log.info("backbone %s built from scratch: %d parameters, vocabulary %d",
             name, sum(p.numel() for p in model.parameters()), vocab.size)
    return model


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.where(allowed, 0.0, torch.finfo(dtype).min).to(dtype)


class TokenDecoderStep:
    """The token decoder's per-level scores for the shared search (search.BeamStep).

    The histories come left-padded, so their tokens keep the same relative positions whatever the
    batch's width; the cache then holds T history positions per user. At level l >= 1 the user's
    beams' l-token prefixes are one row of W * l tokens: token j of every beam sits at position
    T + j, attends to the real history and to its own beam's tokens up to itself, and the cache is
    cut back to the history afterwards.
    """

    def __init__(self, model: TokenDecoderModel, input_ids: torch.Tensor, real: torch.Tensor):
        self.model = model
        self.n, self.length = input_ids.shape
        self.real, device = real, input_ids.device
        dtype = model.decoder.embed_tokens.weight.dtype
        pos = torch.arange(self.length, device=device)
        # A padding query attends to itself only, so no row of the softmax is empty.
        allowed = (pos[None, :] <= pos[:, None]) & (real[:, None, :] | (pos[None, :] == pos[:, None]))
        out = model.decoder(input_ids=input_ids, attention_mask=_additive(allowed, dtype)[:, None],
                            use_cache=True)
        self.cache = out.cache if hasattr(out, "cache") else out.past_key_values  # named as above
        self.last = out.last_hidden_state[:, -1]  # (n, d): predicts level 0
        self.offsets = torch.as_tensor(model.vocab.level_offsets(), device=device)
        self.prefix = torch.zeros((self.n, 1, 0), dtype=torch.long, device=device)  # (n, width, depth) tokens

    def log_probs(self, depth: int, child: torch.Tensor) -> torch.Tensor:
        if depth == 0:
            hidden = self.last
        else:
            hidden = self._beam_states(depth)
        return torch.log_softmax(self.model.level_logits(hidden, depth).float(), dim=-1)

    def _beam_states(self, depth: int) -> torch.Tensor:
        """(n * width, d) the state after each beam's last token."""
        n, width, device = self.n, self.prefix.shape[1], self.prefix.device
        q = width * depth
        beam, step = torch.arange(q, device=device) // depth, torch.arange(q, device=device) % depth
        query_pos = self.length + step
        key_pos = torch.cat([torch.arange(self.length, device=device), query_pos])
        own = (beam[:, None] == beam[None, :]) & (step[None, :] <= step[:, None])  # (Q, Q)
        allowed = torch.cat([self.real[:, None, :].expand(n, q, self.length), own.expand(n, q, q)], dim=2)
        dtype = self.last.dtype
        hidden = self.model.run_blocks(self.prefix.reshape(n, q), _additive(allowed, dtype)[:, None],
                                       self.model.relative_bias(query_pos, key_pos), self.cache)
        self.cache.crop(-q)  # back to the history alone
        return hidden.reshape(n, width, depth, -1)[:, :, -1].reshape(n * width, -1)

    def advance(self, depth: int, parent: torch.Tensor, code: torch.Tensor) -> None:
        kept = self.prefix.gather(1, parent[..., None].expand(-1, -1, depth))
        self.prefix = torch.cat([kept, (self.offsets[depth] + code)[..., None]], dim=2)


class TokenDecoderRecommender(SemanticIdRecommender):
    """A trained token decoder behind the Recommender protocol. Saved as one folder: `t5_config.json`
    and `model.safetensors` (the decoder without its cross-attention layers, so not a
    save_pretrained folder), `semantic_ids/` and `t5_decoder.json` (vocabulary, preset, maximum
    history, the generator config and the training record)."""

    def __init__(
        self,
        model: TokenDecoderModel,
        semantic_ids: SemanticIds,
        config: GeneratorConfig | None = None,
        max_history: int = 20,
        device: str = "cpu",
        info: dict | None = None,
    ):
        if tuple(semantic_ids.codebook_sizes) != model.vocab.codebook_sizes:
            raise ValueError(f"semantic ids have codebooks {semantic_ids.codebook_sizes}, the vocabulary "
                             f"{model.vocab.codebook_sizes}")
        self.config = config or GeneratorConfig()
        self.device = torch.device(resolve_device(device))
        self.model = model.to(self.device).eval()  # training switches it back with model.train()
        self.vocab = model.vocab
        self.semantic_ids = semantic_ids
        self.max_history = max_history
        self.info = dict(info or {})
        self.item_tokens = self.vocab.item_tokens(semantic_ids.codes)
        self.tree = PrefixTree(semantic_ids.codes, semantic_ids.codebook_sizes).to(self.device)

    def encode(self, histories: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, real) both (n, 1 + longest * M): padding, the start token, the last
        max_history items' tokens, oldest first."""
        levels, n_items = self.vocab.levels, self.semantic_ids.n_items
        kept = [np.asarray(h, dtype=np.int64)[-self.max_history:] if self.max_history > 0 else np.zeros(0, np.int64)
                for h in histories]
        width = 1 + levels * max((len(h) for h in kept), default=0)
        ids = np.full((len(kept), width), self.vocab.pad_id, dtype=np.int64)
        real = np.zeros((len(kept), width), dtype=bool)
        for row, h in enumerate(kept):
            if len(h) and (h.min() < 0 or h.max() >= n_items):
                raise ValueError(f"history {row} holds an item id outside [0, {n_items})")
            tokens = self.item_tokens[h].reshape(-1)
            ids[row, width - len(tokens):] = tokens
            ids[row, width - len(tokens) - 1] = self.vocab.decoder_start_id
            real[row, width - len(tokens) - 1:] = True
        return torch.from_numpy(ids).to(self.device), torch.from_numpy(real).to(self.device)

    def beam_step(self, histories: Sequence[np.ndarray]) -> TokenDecoderStep:
        return TokenDecoderStep(self.model, *self.encode(histories))

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.config.to_json_file(folder / CONFIG)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}, folder / WEIGHTS)
        save_generator_meta(folder, META, self.semantic_ids, self.config, self.info,
                            vocab=self.vocab.to_dict(), max_history=self.max_history)

    @classmethod
    def load(cls, folder: Path, device: str = "auto") -> TokenDecoderRecommender:
        folder = Path(folder)
        meta, semantic_ids, config = load_generator_meta(folder, META)
        model = TokenDecoderModel(T5Config.from_json_file(folder / CONFIG), SemanticVocabulary.from_dict(meta["vocab"]))
        model.load_state_dict(load_file(folder / WEIGHTS))
        return cls(model, semantic_ids, config, int(meta["max_history"]), device, meta.get("info"))


# --- training: one pass per user window in the shared trainer ------------------------------------


def item_windows(train: Sequence[np.ndarray], max_history: int) -> tuple[np.ndarray, np.ndarray]:
    """(windows (n, max_history + 1) left-aligned, -1 after the end; lengths (n,)): the last
    max_history + 1 items of every training sequence with at least two items."""
    kept = [np.asarray(s[-(max_history + 1):], dtype=np.int64) for s in train if len(s) >= 2]
    windows = np.full((len(kept), max_history + 1), -1, dtype=np.int64)
    for row, w in enumerate(kept):
        windows[row, : len(w)] = w
    return windows, np.array([len(w) for w in kept], dtype=np.int64)


def window_tokens(windows: np.ndarray, lengths: np.ndarray, item_tokens: np.ndarray,
                  vocab: SemanticVocabulary) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, labels), both (b, w * M) for w = the longest window: the start token and the
    items' tokens but the last, right-padded; labels the next token where it belongs to an item
    after the first (each item's own tokens are predicted from its predecessors'), else -100."""
    b, levels = len(windows), vocab.levels
    width = int(lengths.max(initial=0))
    real = np.arange(width)[None, :] < lengths[:, None]  # (b, w)
    tokens = np.where(real[..., None], item_tokens[np.where(real, windows[:, :width], 0)], vocab.pad_id)
    flat = tokens.reshape(b, width * levels)
    input_ids = np.concatenate([np.full((b, 1), vocab.decoder_start_id, np.int64), flat[:, :-1]], axis=1)
    target = np.repeat(real & (np.arange(width)[None, :] >= 1), levels, axis=1)
    return input_ids, np.where(target, flat, IGNORE)


class _TokenLoss(nn.Module):
    """Mean cross-entropy over a batch's target tokens, each over its own level's codes; the module
    DistributedDataParallel wraps. Under torchrun the mean over this rank's tokens is weighted by
    its share of the global batch's, so DDP's gradient average is the gradient of the global mean."""

    def __init__(self, model: TokenDecoderModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        hidden = self.model(input_ids)  # (b, w * M, d)
        levels = self.model.vocab.levels
        total, n = hidden.new_zeros(()), int((labels != IGNORE).sum())
        for level in range(levels):
            # Position i * M + l predicts token l of item i.
            target = labels[:, level::levels]
            keep = target != IGNORE
            lo, _ = self.model.vocab.level_range(level)
            logits = self.model.level_logits(hidden[:, level::levels][keep], level)
            total = total + F.cross_entropy(logits.float(), target[keep] - lo, reduction="sum")
        loss = total / max(n, 1)
        weighted = loss
        if distributed.is_distributed():
            weighted = loss * (n * distributed.world_size() / distributed.all_reduce_sum(n, input_ids.device))
        return weighted, loss.detach(), n


class TokenDecoderFamily:
    """The token decoder in the shared trainer (train.py): one window per user, every token of
    every item after the first a target; a step weighs its target tokens."""

    label = "T5 decoder generator"
    find_unused_parameters = False

    def __init__(self, split: SplitDataset, semantic_ids: SemanticIds, cfg: GeneratorConfig, seed: int, device: str):
        model = build_token_decoder(cfg.backbone, semantic_ids.codebook_sizes, seed)
        self.recommender = TokenDecoderRecommender(model, semantic_ids, cfg, split.max_history, device)
        self.backbone = cfg.backbone
        self.epochs, self.lr = cfg.t5_decoder.epochs, cfg.t5_decoder.lr
        self.eval_batch_size = cfg.eval_batch_size * 8
        self.windows, self.lengths = item_windows(split.train, split.max_history)
        self.n_examples = len(self.windows)

    def batches(self, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
        return length_bucketed_batches(self.lengths, batch_size, rng, bucket_batches=16)

    def inputs(self, rows: np.ndarray, n_global: int, device: torch.device | str) -> tuple:
        rec = self.recommender
        input_ids, labels = window_tokens(self.windows[rows], self.lengths[rows], rec.item_tokens, rec.vocab)
        return torch.from_numpy(input_ids).to(device), torch.from_numpy(labels).to(device)

    def loss_module(self) -> nn.Module:
        return _TokenLoss(self.recommender.model)

    def record(self) -> dict[str, Any]:
        levels = self.recommender.vocab.levels
        return {"n_windows": self.n_examples, "n_target_tokens": int((self.lengths - 1).sum()) * levels}
