"""One-pixel attacks: the base class, the searches (DE, corner search, Sparse-RS), their registry and the campaign.

The public classes and functions are re-exported lazily (PEP 562): ``deepadversaries.attacks.OnePixelDE``
imports :mod:`deepadversaries.attacks.de` (and torch) on first use, not at package import.

    >>> from deepadversaries import attacks
    >>> adversarial = attacks.OnePixelDE(model)(images, labels)   # any classifier; logits-only is fine
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "Attack": "base", "AttackResult": "base", "SearchState": "base",
    "OnePixelDE": "de", "reference_attack": "de",
    "ExhaustiveSearch": "exhaustive", "ExhaustiveResult": "exhaustive", "value_set": "exhaustive",
    "SparseRS": "sparse_rs",
    "is_success": "rules", "subsample_index": "rules",
    "ValueRange": "values", "input_range": "values", "physical_range": "values", "make_value_range": "values",
    "perturb": "candidates", "set_pixels": "candidates",
    "as_classifier": "classifier", "LogitsOnly": "classifier",
    "SearchSpec": "searches", "register_search": "searches", "search_names": "searches",
    "search_spec": "searches", "search_specs": "searches",
    "attack_run": "campaign",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import the module that defines ``name`` on first access (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
