"""kopt: find a faster kernel for a PyTorch module by surprisal-guided selection (Barnes 2026, arXiv 2602.07670)."""

__version__ = "0.1.0"


def swap(model, kernel_dir, cls=None):
    """Replace every instance of the kernel's reference class in `model` with its ModelNew (see kopt.swap)."""
    from kopt.swap import swap as _swap

    return _swap(model, kernel_dir, cls)
