"""IDARTS: partial-channel differentiable architecture search with alpha backtracking."""

from idarts.config import ConfigError, SearchConfig
from idarts.search import NonFiniteLossError, Searcher

__version__ = "0.1.0"

__all__ = ["ConfigError", "NonFiniteLossError", "SearchConfig", "Searcher", "__version__"]
