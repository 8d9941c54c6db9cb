"""Generation: a seq2seq backbone over semantic-id tokens and trie-constrained beam search (paper 4.2.4)."""

from cemg.generator.model import GenerativeRecommender
from cemg.generator.train import train_generator

__all__ = ["GenerativeRecommender", "train_generator"]
