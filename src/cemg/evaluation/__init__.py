"""Evaluation: metrics over rankings, the full-catalogue protocol, and the paper's studies."""
