"""kopt: find a faster kernel for a PyTorch module by surprisal-guided selection (Barnes 2026, arXiv 2602.07670)."""

__version__ = "0.1.0"
