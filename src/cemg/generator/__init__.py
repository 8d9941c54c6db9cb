"""Generation: a seq2seq backbone over semantic-id tokens and trie-constrained beam search (paper 4.2.4),
or the causal item-level generator (causal.py), chosen by `generator.backbone`."""

from pathlib import Path

from cemg.generator.model import GenerativeRecommender
from cemg.generator.train import train_generator

__all__ = ["GenerativeRecommender", "load_generator", "train_generator"]


def load_generator(folder: Path, backbone: str, device: str = "auto"):
    """A saved generator: causal (`backbone == "causal"`) or T5 (any other backbone)."""
    if backbone == "causal":
        from cemg.generator.causal import CausalGenerativeRecommender

        return CausalGenerativeRecommender.load(folder, device=device)
    return GenerativeRecommender.load(folder, device=device)
