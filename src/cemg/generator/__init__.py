"""The generator stage: from a history of items to the next item's semantic id (paper 4.2.4).

One module per backbone family, one trainer and one search, so each box of the paper has one home:

    t5.py          the paper's T5 encoder-decoder: history tokens in, next item's tokens out,
                   one sliding-window example per history prefix
    t5_decoder.py  the T5 decoder alone over the history's tokens, every item of a user's window
                   a target in one causal pass
    causal.py      an item-level decoder (GPT-2 / Llama), one position per history item, trained
                   like SASRec; the only family with a `hybrid` mode (per-item parameters)
    train.py       the shared training loop every family plugs into (`Family`)
    search.py      the prefix tree, exclusion and the trie-constrained beam search every family
                   feeds through a per-level `BeamStep`
    recommender.py the Recommender protocol on top of the search, and the saved folder's shared parts
    vocab.py       the token vocabulary of the two T5 families

`generator.backbone` picks the family (`backbone_family`); `generator.mode` is `semantic` (no
per-item parameter: the paper's model class) or `hybrid` (causal only).
"""

from pathlib import Path

from cemg.generator.train import train_generator

__all__ = ["backbone_family", "load_generator", "train_generator"]

T5_DECODER = "t5-decoder"


def backbone_family(backbone: str) -> str:
    """"causal", "t5-decoder" (t5-decoder and its t5-decoder-* presets) or "t5" (the T5 presets and
    any name or folder that from_pretrained loads)."""
    if backbone == "causal":
        return "causal"
    if backbone == T5_DECODER or backbone.startswith(T5_DECODER + "-"):
        return "t5-decoder"
    return "t5"


def load_generator(folder: Path, backbone: str, device: str = "auto"):
    """A generator saved by any family; `backbone` is the `generator.backbone` it was trained with."""
    family = backbone_family(backbone)
    if family == "causal":
        from cemg.generator.causal import CausalGenerativeRecommender

        return CausalGenerativeRecommender.load(folder, device=device)
    if family == "t5-decoder":
        from cemg.generator.t5_decoder import TokenDecoderRecommender

        return TokenDecoderRecommender.load(folder, device=device)
    from cemg.generator.t5 import GenerativeRecommender

    return GenerativeRecommender.load(folder, device=device)
