"""cemg: Collaborative-Enhanced Multimodal Generative Recommendation (arXiv 2512.21543)."""

__version__ = "0.1.0"
