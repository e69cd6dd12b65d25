"""kopt: find a faster kernel for a PyTorch module by surprisal-guided selection (Barnes 2026, arXiv 2602.07670)."""

__version__ = "0.1.0"

# Bound here, after the submodule is imported, so `kopt.swap` stays the function: importing the submodule
# kopt.swap later would otherwise rebind the package attribute to the module.
from kopt.swap import swap  # noqa: E402

__all__ = ["__version__", "swap"]
