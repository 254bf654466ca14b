"""Any classifier as an attack target: the ``(logits, latent)`` convention, with the latent optional.

The package's models return ``(logits, z)`` (:class:`~deepadversaries.models.networks.GalaxyClassifier`,
an adopted :class:`~deepadversaries.models.scripted.ScriptedClassifier`, their
:class:`~deepadversaries.models.equivariant.D4Average`). A plain classifier — a torchvision or
timm model, any ``nn.Module`` whose forward returns the logits (N, K) — is wrapped by
:func:`as_classifier` in :class:`LogitsOnly`, which returns ``(logits, None)``: the attacks
read only the logits, so they work the same on it; whatever needs a latent (the campaign's
``latents.npz``, the latent-space analysis) must be given a model that has one.

Contract: :func:`as_classifier` never changes the function the model computes, and returns
the package's own models unchanged (so :class:`~deepadversaries.attacks.evaluators.LocalConvNetEvaluator`
still recognises the ConvNet).
"""

from __future__ import annotations

import torch
from torch import nn

from deepadversaries.errors import OptionError
from deepadversaries.models.equivariant import D4Average
from deepadversaries.models.networks import GalaxyClassifier
from deepadversaries.models.scripted import ScriptedClassifier

#: models known to return ``(logits, latent)``
WITH_LATENT: tuple[type, ...] = (GalaxyClassifier, ScriptedClassifier, D4Average)


class LogitsOnly(nn.Module):
    """A classifier whose output is normalised to ``(logits, latent or None)``.

    Its forward accepts a model that returns logits (N, K) — then the latent is None — or a
    tuple/list whose first element is the logits and whose second (if any) is the latent.

    Args:
        model: the wrapped classifier (kept as ``self.model``).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        n_classes = getattr(model, "n_classes", None)
        if n_classes is None:  # torchvision's and timm's classifiers name their head's width
            head = getattr(model, "fc", None)
            head = head if isinstance(head, nn.Linear) else getattr(model, "classifier", None)
            n_classes = head.out_features if isinstance(head, nn.Linear) else None
        self.n_classes = n_classes

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(logits (N, K), latent (N, D) or None)`` of images x (N, B, H, W)."""
        out = self.model(x)
        if isinstance(out, torch.Tensor):
            return out, None
        if isinstance(out, (tuple, list)) and len(out) >= 1 and isinstance(out[0], torch.Tensor):
            return out[0], (out[1] if len(out) > 1 else None)
        raise OptionError(f"the model returned {type(out).__name__}; an attacked model returns logits (N, classes) "
                          "or (logits, latent)")


def as_classifier(model: nn.Module) -> nn.Module:
    """``model`` itself if it is one of the package's ``(logits, z)`` models, else :class:`LogitsOnly`
    around it (a model already wrapped is returned as it is).

    Raises:
        OptionError: something that is not a torch module.
    """
    if not isinstance(model, nn.Module):
        raise OptionError(f"an attacked model is a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, (LogitsOnly, *WITH_LATENT)):
        return model
    return LogitsOnly(model)
