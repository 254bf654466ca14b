"""MMD domain adaptation, the paper's method (SPEC 5): the multi-kernel MMD² and its alignment term.

- :func:`mmd2_from_kernel`, :func:`mmd2`: the multi-kernel MMD² of the paper (eq. 2, with its
  typo corrected: the last term is k(θ₁(i), θ₁(j))) and, as an option, the authors' published
  code (means over all pairs, clamped at 0), with the kernels of
  :class:`~deepadversaries.adaptation.modules.GaussianKernels` injected
  (``MMDLoss(GaussianKernels(sigmas2))``, the Transfer-Learning-Library's style);
- :class:`MMDLoss`: the same in float64 whatever the autocast precision;
- :class:`MMDAlignment`: λ · MMD², the term the ``mmd`` method adds to the cross-entropy
  (its spec, settings and defaults: :data:`deepadversaries.methods.METHOD_SPECS` ``["mmd"]``);
- :func:`mmd2_measure`: the unbiased MMD² between two sets of latents (analysis, validation logs).

No file I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from deepadversaries.adaptation.modules import (
    DEFAULT_SIGMAS2, AlignmentLoss, GaussianKernels, measure_inputs, pairwise_sq_distances,
)
from deepadversaries.errors import OptionError, check_choice
from deepadversaries.methods import MMD_ESTIMATORS

ESTIMATORS = MMD_ESTIMATORS
#: latents per domain used by the MMD² measure (its kernel tensor grows as (2n)² × 19)
MEASURE_MMD_SAMPLE = 512


def mmd2_from_kernel(kernel: nn.Module, x: torch.Tensor, y: torch.Tensor, estimator: str = "unbiased") -> torch.Tensor:
    """MMD² between samples ``x`` (N, D) and ``y`` (N, D) with a kernel acting on squared distances."""
    check_choice(estimator, ESTIMATORS, "MMD estimator")
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise OptionError(f"expected two (N, D) samples with the same D, got {tuple(x.shape)} and {tuple(y.shape)}")
    n, m = len(x), len(y)
    if estimator == "unbiased" and (n != m or n < 2):
        raise OptionError(f"the unbiased estimator (paper eq. 2) needs two samples of equal size >= 2, got {n} and {m}")
    if n == 0 or m == 0:
        raise OptionError("MMD of an empty sample")
    # centre on the joint mean: same distances, smaller norms, less cancellation in the matrix product
    both = torch.cat([x, y], dim=0)
    both = both - both.mean(dim=0, keepdim=True)
    d2 = pairwise_sq_distances(both, both)
    # exact zeros for a point's distance to itself (rounding in the product leaves ~1e-6 there)
    d2 = d2.masked_fill(torch.eye(n + m, dtype=torch.bool, device=d2.device), 0.0)
    k = kernel(d2)
    k_xx, k_yy, k_xy = k[:n, :n], k[n:, n:], k[:n, n:]
    if estimator == "biased":
        value = k_xx.mean() + k_yy.mean() - 2.0 * k_xy.mean()
        return value.clamp_min(0.0)
    # paper eq. 2 (typo corrected): 1/(N(N-1)) Σ_{i≠j} [k(x_i,x_j) − k(x_i,y_j) − k(y_i,x_j) + k(y_i,y_j)]
    off = lambda a: a.sum() - a.diagonal().sum()  # noqa: E731
    return (off(k_xx) + off(k_yy) - 2.0 * off(k_xy)) / (n * (n - 1))


def mmd2(x: torch.Tensor, y: torch.Tensor, sigmas2: Sequence[float] = DEFAULT_SIGMAS2,
         estimator: str = "unbiased") -> torch.Tensor:
    """Multi-kernel Gaussian MMD² of SPEC 5 between two samples of latent vectors.

    Args:
        x: (N, D) latents of one domain (e.g. Y10).
        y: (M, D) latents of the other (e.g. Y1); the unbiased estimator needs M = N ≥ 2.
        sigmas2: kernel widths σ² in k(a, b) = Σ exp(−‖a − b‖² / (2σ²)), in squared latent
            units [default: the published code's 19 widths, 1e-6 … 1e6].
        estimator: ``unbiased`` — the paper's eq. 2 (a U-statistic; may be slightly
            negative) — or ``biased`` — the published code's means over all pairs, clamped at
            0 [default: "unbiased"].

    Returns:
        A scalar tensor (x's dtype and device).

    Raises:
        OptionError: an unknown estimator, samples of other shapes, or empty samples.
    """
    kernel = GaussianKernels(sigmas2).to(x.device)
    return mmd2_from_kernel(kernel, x, y, estimator)


class MMDLoss(nn.Module):
    """MMD² between two batches of latents, with the kernel injected.

    >>> loss = MMDLoss(GaussianKernels(DEFAULT_SIGMAS2), estimator="unbiased")
    >>> value = loss(z_y10, z_y1)                                 # doctest: +SKIP

    Distances and kernels are computed in float64 whatever the input or autocast precision:
    with σ² down to 1e-6, float32 rounding of a squared distance (~1e-7 of the squared norms)
    would change the narrow kernels' values by several percent. The cost is negligible next
    to the network (a (2B, 2B, 19) kernel tensor). The result is returned in float32.
    """

    def __init__(self, kernel: nn.Module | None = None, estimator: str = "unbiased") -> None:
        super().__init__()
        check_choice(estimator, ESTIMATORS, "MMD estimator")
        self.kernel = kernel if kernel is not None else GaussianKernels()
        self.estimator = estimator

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            value = mmd2_from_kernel(self.kernel, x.to(torch.float64), y.to(torch.float64), self.estimator)
        return value.to(torch.promote_types(x.dtype, torch.float32))

    def extra_repr(self) -> str:
        return f"estimator={self.estimator!r}"


class MMDAlignment(AlignmentLoss):
    """λ · MMD²(z_source, z_target), the paper's term (SPEC 5); logs ``mmd2``.

    Args:
        weight: λ [default: 0.05, the paper; the published code used 0.01].
        sigmas2: kernel widths σ² [default: the published code's list].
        estimator: ``"unbiased"`` (paper eq. 2) or ``"biased"`` [default: ``"unbiased"``].
    """

    method = "mmd"

    def __init__(self, weight: float = 0.05, sigmas2: Sequence[float] = DEFAULT_SIGMAS2,
                 estimator: str = "unbiased") -> None:
        super().__init__(weight)
        self.loss = MMDLoss(GaussianKernels(sigmas2), estimator=estimator)

    def forward(self, z_source: torch.Tensor, z_target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        value = self.loss(z_source, z_target)
        return self.weight * value, {"mmd2": value.detach()}


def mmd2_measure(z_source: Any, z_target: Any, seed: int = 0, max_samples: int = MEASURE_MMD_SAMPLE) -> float:
    """Unbiased multi-kernel MMD² (the paper's kernels) between two sets of latents.

    Both sets are cut to the same n = min(n_s, n_t, ``max_samples``) rows, the same seeded
    random rows in both when n_s = n_t (so paired Y10/Y1 test sets stay paired).
    """
    zs, zt = measure_inputs(z_source, z_target)
    n = min(len(zs), len(zt), int(max_samples))
    if n < 2:
        raise OptionError(f"MMD² needs at least 2 latents per domain, got {len(zs)} and {len(zt)}")
    rng = np.random.default_rng(seed)
    idx_s = torch.as_tensor(np.sort(rng.permutation(len(zs))[:n]))
    idx_t = idx_s if len(zs) == len(zt) else torch.as_tensor(np.sort(rng.permutation(len(zt))[:n]))
    return float(mmd2(zs[idx_s], zt[idx_t], estimator="unbiased"))

