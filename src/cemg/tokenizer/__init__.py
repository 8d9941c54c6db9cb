"""Unified tokenization: collaborative-guided fusion and RQ-VAE semantic ids (paper 4.2.2.3, 4.2.3)."""
