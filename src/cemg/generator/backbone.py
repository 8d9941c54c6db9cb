"""Seq2seq backbones: Hugging Face T5, built from a preset or loaded from a name/path (paper 4.2.4).

The paper's generator is a T5 encoder-decoder. "t5-tiny" follows TIGER's (Rajput et al. 2023)
small T5: 4 encoder and 4 decoder layers, d_model 128, 6 heads of 64, feed-forward 1024, dropout 0.1
(4.6M parameters with 4 x 256 codes). On the shared 2-core CPU (one torch thread, load average
4-9) a batch of 256 took 3-5 s with 7-item histories and 10-17 s with 20-item ones
(bench/generator_speed.py): about half an hour per Beauty epoch of 514 length-bucketed batches.
"t5-mini" (not from a paper) took 0.7-1.2 s and 2.7-4.4 s. Any other name is handed to
`from_pretrained` (a hub name such as "t5-small" or a local folder), and its embedding table is
extended with the semantic tokens after the existing vocabulary.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from transformers import T5Config, T5ForConditionalGeneration

from cemg.generator.vocab import SemanticVocabulary

log = logging.getLogger(__name__)

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
