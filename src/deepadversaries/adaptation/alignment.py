"""A training method's alignment term, built from the registry (:mod:`deepadversaries.methods`).

``alignment_loss(method, settings)`` checks the settings with the method's spec and calls the
builder the spec names (for the built-in methods, a class of :mod:`~deepadversaries.adaptation.mmd`,
:mod:`~deepadversaries.adaptation.coral` or :mod:`~deepadversaries.adaptation.dann`). Every term
answers the same call, ``term, logs = alignment(z_source, z_target)``
(:class:`~deepadversaries.adaptation.modules.AlignmentLoss`), so the training step needs no
per-method branch. No file I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from deepadversaries.adaptation.modules import AlignmentLoss
from deepadversaries.methods import method_spec
from deepadversaries.models.networks import LATENT_DIM


def alignment_loss(method: str, settings: Mapping[str, Any] | None = None, *,
                   latent_dim: int = LATENT_DIM) -> AlignmentLoss | None:
    """The alignment term of a training method, or ``None`` for one without (regular, adabn, adv-1p).

    Args:
        method: a registered method (:func:`deepadversaries.methods.method_names`).
        settings: the method's settings by their names on its spec (``{"weight": 0.05}`` for
            ``mmd``); a missing or ``None`` value takes the spec's default [default: all defaults].
        latent_dim: width of the latents the term receives [default: 256].

    Returns:
        The term: ``term, logs = alignment(z_source, z_target)``; ``alignment.set_progress(p)``
        once per training step.

    Raises:
        OptionError: an unknown method, a setting the method does not declare, or a bad value
            (e.g. a negative weight).
    """
    return method_spec(method).build(settings, latent_dim=latent_dim)
