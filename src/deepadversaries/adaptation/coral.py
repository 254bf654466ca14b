"""Deep CORAL domain adaptation (Sun & Saenko 2016): the covariance distance and its alignment term.

- :func:`coral_distance`: ‖C_x − C_y‖²_F / (4 d²) with unbiased feature covariances;
- :class:`CORALLoss`: the same in float64 whatever the autocast precision;
- :class:`CORALAlignment`: λ · CORAL, the term the ``coral`` method adds to the cross-entropy
  (its spec and cited default: :data:`deepadversaries.methods.METHOD_SPECS` ``["coral"]``);
- :func:`coral_measure`: the CORAL distance between two sets of latents.

No file I/O.

References:
    Sun, B. & Saenko, K. 2016, "Deep CORAL: Correlation Alignment for Deep Domain
    Adaptation", ECCV 2016 Workshops, LNCS 9915, 443-450 (arXiv:1607.01719).
    Gulrajani, I. & Lopez-Paz, D. 2021, "In Search of Lost Domain Generalization", ICLR 2021
    (DomainBed: the default weight).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from deepadversaries.adaptation.modules import AlignmentLoss, as_latents, measure_inputs
from deepadversaries.errors import OptionError


def coral_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Deep CORAL loss ‖C_x − C_y‖²_F / (4 d²) between two samples of latents.

    C is the unbiased feature covariance of Sun & Saenko (2016, eq. 2-3),
    C = (Dᵀ D − (1ᵀ D)ᵀ (1ᵀ D) / n) / (n − 1), ``torch.cov``'s default correction.

    Args:
        x: source latents, shape (n_s, d); n_s ≥ 2.
        y: target latents, shape (n_t, d); n_t ≥ 2 (n_t may differ from n_s).

    Returns:
        A scalar tensor in the dtype of the inputs (differentiable).

    Raises:
        OptionError: not two (N, d) samples with the same d, or fewer than 2 rows in one.
    """
    x, y = as_latents(x, "CORAL source"), as_latents(y, "CORAL target")
    if x.shape[1] != y.shape[1]:
        raise OptionError(f"CORAL needs latents of the same width, got {tuple(x.shape)} and {tuple(y.shape)}")
    if len(x) < 2 or len(y) < 2:
        raise OptionError(f"CORAL needs at least 2 latents per domain for a covariance, got {len(x)} and {len(y)}")
    d = x.shape[1]
    diff = torch.cov(x.T) - torch.cov(y.T)
    return (diff * diff).sum() / (4.0 * d * d)


class CORALLoss(nn.Module):
    """Deep CORAL loss between two batches of latents (Sun & Saenko 2016).

    >>> loss = CORALLoss()
    >>> value = loss(z_y10, z_y1)                                 # doctest: +SKIP

    Computed in float64 whatever the input or autocast precision (as :class:`MMDLoss`): the
    covariance subtracts the squared mean from the second moment, which loses digits in
    bfloat16 or float32. Returned in float32 (or the input's dtype if wider).
    """

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """CORAL distance of (n_s, d) and (n_t, d) latents: a scalar tensor."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            value = coral_distance(x.to(torch.float64), y.to(torch.float64))
        return value.to(torch.promote_types(x.dtype, torch.float32))


class CORALAlignment(AlignmentLoss):
    """λ · CORAL(z_source, z_target) (Sun & Saenko 2016); logs ``coral``.

    Args:
        weight: λ [default: 1, the source on the coral spec's weight setting].
    """

    method = "coral"

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__(weight)
        self.loss = CORALLoss()

    def forward(self, z_source: torch.Tensor, z_target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        value = self.loss(z_source, z_target)
        return self.weight * value, {"coral": value.detach()}


def coral_measure(z_source: Any, z_target: Any, seed: int = 0) -> float:
    """CORAL distance ‖C_s − C_t‖²_F / (4 d²) on all rows (``seed`` unused)."""
    zs, zt = measure_inputs(z_source, z_target)
    return float(coral_distance(zs, zt))

