"""The robustness card of one run, its renderings, and the leaderboard of many."""

from deepadversaries import lazy_subpackage as _lazy_subpackage

# the stage functions and classes of docs/python-api.md defined in this subpackage, imported on first use
__getattr__, __dir__, __all__ = _lazy_subpackage(__name__)
