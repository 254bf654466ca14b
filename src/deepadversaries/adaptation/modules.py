"""Shared building blocks of the domain-adaptation methods (TLlib's ``modules``).

- the Gaussian kernels on squared distances (:class:`GaussianKernels`, :func:`pairwise_sq_distances`),
  injected into MMD in the style of the Transfer-Learning-Library: ``MMDLoss(GaussianKernels(sigmas2))``;
- the gradient reversal layer (:func:`gradient_reversal`, :class:`GradientReversal`) of DANN
  (Ganin et al. 2016, eq. 13-14);
- :class:`AlignmentLoss`, the one call every method's alignment term answers:
  ``term, logs = alignment(z_source, z_target)``, so the training step needs no per-method branch;
- the input checks shared by the alignment measures (:func:`as_latents`, :func:`measure_inputs`).

No file I/O. Each method's own module (:mod:`~deepadversaries.adaptation.mmd`,
:mod:`~deepadversaries.adaptation.coral`, :mod:`~deepadversaries.adaptation.dann`) builds on these;
the registry that names them is :mod:`deepadversaries.methods`.

References:
    Ganin, Y., Ustinova, E., Ajakan, H., et al. 2016, "Domain-Adversarial Training of Neural
    Networks", JMLR 17(59), 1-35.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from deepadversaries.errors import OptionError
from deepadversaries.methods import MMD_SIGMAS2

#: the published code's kernel widths, as σ² in k(a, b) = exp(−‖a − b‖² / (2σ²)) (the MMD spec's default)
DEFAULT_SIGMAS2: tuple[float, ...] = MMD_SIGMAS2


def pairwise_sq_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """‖x_i − y_j‖² for all pairs, by matrix products (no (N, M, D) broadcast), clamped at 0."""
    x_sq = (x * x).sum(dim=1, keepdim=True)
    y_sq = (y * y).sum(dim=1, keepdim=True)
    d2 = torch.addmm(x_sq + y_sq.T, x, y.T, beta=1.0, alpha=-2.0)
    return d2.clamp_min(0.0)


class GaussianKernels(nn.Module):
    """Sum of Gaussian RBF kernels, k(a, b) = Σ_σ exp(−‖a − b‖² / (2σ²)), applied to squared distances."""

    def __init__(self, sigmas2: Sequence[float] = DEFAULT_SIGMAS2) -> None:
        super().__init__()
        sigmas2 = torch.as_tensor(list(sigmas2), dtype=torch.float64)
        if sigmas2.ndim != 1 or len(sigmas2) == 0 or not bool((sigmas2 > 0).all()):
            raise OptionError("kernel widths sigma^2 must be a non-empty list of positive numbers")
        self.register_buffer("neg_half_inv_sigmas2", -0.5 / sigmas2, persistent=False)

    @property
    def sigmas2(self) -> tuple[float, ...]:
        return tuple(float(v) for v in (-0.5 / self.neg_half_inv_sigmas2).tolist())

    def forward(self, d2: torch.Tensor) -> torch.Tensor:
        """Kernel matrix from a matrix of squared distances."""
        coef = self.neg_half_inv_sigmas2.to(d2.dtype)
        return torch.exp(d2.unsqueeze(-1) * coef).sum(dim=-1)


class _GradientReversalFunction(torch.autograd.Function):
    """Identity forward; gradient multiplied by −coeff backward (Ganin et al. 2016, eq. 13-14)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, coeff: float) -> torch.Tensor:
        ctx.coeff = float(coeff)
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad_output * (-ctx.coeff), None


def gradient_reversal(x: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
    """The gradient reversal layer R_λ as a function: R(x) = x, dR/dx = −λ I.

    Args:
        x: any tensor.
        coeff: λ ≥ 0, the factor of the reversed gradient [default: 1].

    Returns:
        ``x`` (same values, a view), whose gradient flows back multiplied by −``coeff``.
    """
    return _GradientReversalFunction.apply(x, coeff)


class GradientReversal(nn.Module):
    """Gradient reversal layer with a settable factor ``coeff`` (λ of Ganin et al. 2016).

    Args:
        coeff: λ ≥ 0, the factor of the reversed gradient; set it per step with
            ``layer.coeff = dann_lambda(p)`` [default: 1].
    """

    def __init__(self, coeff: float = 1.0) -> None:
        super().__init__()
        self.coeff = float(coeff)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gradient_reversal(x, self.coeff)

    def extra_repr(self) -> str:
        return f"coeff={self.coeff:.6g}"


# ----------------------------------------------------------------------------------------------
# alignment terms with one call signature
# ----------------------------------------------------------------------------------------------
def check_weight(setting: str, value: Any) -> float:
    """A method weight as a float, or :class:`OptionError` if negative or not a finite number.

    Args:
        setting: the setting's name, as the message says it (e.g. ``"coral_weight"``).
        value: what the user gave.
    """
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise OptionError(f"--{setting.replace('_', '-')} must be a number, got {value!r}") from exc
    if isinstance(value, bool) or not math.isfinite(number) or number < 0:
        raise OptionError(f"--{setting.replace('_', '-')} must be a non-negative number, got {value!r}")
    return number


class AlignmentLoss(nn.Module):
    """The common interface of a domain-alignment term (the registry's modules).

    ``term, logs = alignment(z_source, z_target)`` returns the weighted term to add to the
    cross-entropy (a differentiable scalar, float32) and a dict of detached scalar tensors to
    log (the unweighted value under the method's own name, e.g. ``"mmd2"``). Call
    :meth:`set_progress` once per training step with p = step / total steps; methods without a
    schedule ignore it.

    Args:
        weight: the term's weight λ ≥ 0.
    """

    method = ""

    def __init__(self, weight: float) -> None:
        super().__init__()
        self.weight = check_weight(f"{self.method}_weight", weight)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], *, latent_dim: int = 256) -> AlignmentLoss:
        """The builder a :class:`~deepadversaries.methods.MethodSpec` names: the term from the method's
        resolved settings (keyword arguments of the constructor, by their names on the spec).

        Args:
            settings: the method's settings (:meth:`MethodSpec.resolve`).
            latent_dim: width of the latents (used by terms with parameters, e.g. DANN's) [default: 256].
        """
        return cls(**settings)

    def set_progress(self, progress: float) -> None:
        """Training progress p ∈ [0, 1]; a no-op unless the method has a schedule."""
        if not 0.0 <= float(progress) <= 1.0:
            raise OptionError(f"training progress must be in [0, 1], got {progress!r}")

    def forward(self, z_source: torch.Tensor, z_target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"weight={self.weight:g}"


# ----------------------------------------------------------------------------------------------
# inputs of the alignment measures
# ----------------------------------------------------------------------------------------------
def as_latents(x: torch.Tensor | np.ndarray, what: str) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.ndim != 2 or not x.is_floating_point():
        raise OptionError(f"{what}: expected an (N, D) array of floats, got shape {tuple(x.shape)} ({x.dtype})")
    return x


def measure_inputs(z_source: Any, z_target: Any) -> tuple[torch.Tensor, torch.Tensor]:
    zs = as_latents(torch.as_tensor(np.asarray(z_source) if not torch.is_tensor(z_source) else z_source),
                     "source latents")
    zt = as_latents(torch.as_tensor(np.asarray(z_target) if not torch.is_tensor(z_target) else z_target),
                     "target latents")
    if zs.shape[1] != zt.shape[1]:
        raise OptionError(f"latents of different widths: {tuple(zs.shape)} and {tuple(zt.shape)}")
    return zs.detach().cpu().to(torch.float64), zt.detach().cpu().to(torch.float64)

