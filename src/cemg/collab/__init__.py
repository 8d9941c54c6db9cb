"""Collaborative encoder: LightGCN on the training user-item graph (paper 4.2.2.2)."""
