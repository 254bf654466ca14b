"""Training losses (SPEC 5): class weights for the cross-entropy and the multi-kernel MMD².

The MMD follows the paper (eq. 2, with its typo corrected: the last term is
k(θ₁(i), θ₁(j))) and, as an option, the authors' published code (means over all
pairs, clamped at 0). Losses are modules whose kernels are injected, in the style of
the Transfer-Learning-Library: ``MMDLoss(GaussianKernels(sigmas2))``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from . import CLASSES
from .errors import DeepAdvError

#: the published code's kernel widths, as σ² in k(a, b) = exp(−‖a − b‖² / (2σ²))
DEFAULT_SIGMAS2: tuple[float, ...] = (
    1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 35.0,
    100.0, 1e3, 1e4, 1e5, 1e6,
)
ESTIMATORS = ("unbiased", "biased")


def class_weights(labels: np.ndarray | torch.Tensor, n_classes: int = len(CLASSES)) -> torch.Tensor:
    """Cross-entropy weights w_m = N / (M n_m) from the training labels (class indices).

    N is the number of images, M the number of classes and n_m the images of class m.
    A class without any training image is an error (the classifier could not learn it).
    """
    labels = np.asarray(labels, dtype=np.int64).ravel()
    counts = np.bincount(labels, minlength=n_classes)[:n_classes]
    if len(labels) == 0 or (counts == 0).any():
        missing = [CLASSES[m] if m < len(CLASSES) else str(m) for m in np.flatnonzero(counts == 0)]
        raise DeepAdvError(f"the training split has no images of class {', '.join(missing)}; "
                           "every class needs training examples")
    return torch.as_tensor(len(labels) / (n_classes * counts), dtype=torch.float32)


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
            raise ValueError("kernel widths sigma^2 must be a non-empty list of positive numbers")
        self.register_buffer("neg_half_inv_sigmas2", -0.5 / sigmas2, persistent=False)

    @property
    def sigmas2(self) -> tuple[float, ...]:
        return tuple(float(v) for v in (-0.5 / self.neg_half_inv_sigmas2).tolist())

    def forward(self, d2: torch.Tensor) -> torch.Tensor:
        """Kernel matrix from a matrix of squared distances."""
        coef = self.neg_half_inv_sigmas2.to(d2.dtype)
        return torch.exp(d2.unsqueeze(-1) * coef).sum(dim=-1)


def mmd2_from_kernel(kernel: nn.Module, x: torch.Tensor, y: torch.Tensor, estimator: str = "unbiased") -> torch.Tensor:
    """MMD² between samples ``x`` (N, D) and ``y`` (N, D) with a kernel acting on squared distances."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown MMD estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"expected two (N, D) samples with the same D, got {tuple(x.shape)} and {tuple(y.shape)}")
    n, m = len(x), len(y)
    if estimator == "unbiased" and (n != m or n < 2):
        raise ValueError(f"the unbiased estimator (paper eq. 2) needs two samples of equal size >= 2, got {n} and {m}")
    if n == 0 or m == 0:
        raise ValueError("MMD of an empty sample")
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

    ``unbiased``: the paper's eq. 2 (an unbiased U-statistic; may be slightly negative).
    ``biased``: the published code's means over all pairs, clamped at 0.
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
        if estimator not in ESTIMATORS:
            raise ValueError(f"unknown MMD estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
        self.kernel = kernel if kernel is not None else GaussianKernels()
        self.estimator = estimator

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            value = mmd2_from_kernel(self.kernel, x.to(torch.float64), y.to(torch.float64), self.estimator)
        return value.to(torch.promote_types(x.dtype, torch.float32))

    def extra_repr(self) -> str:
        return f"estimator={self.estimator!r}"
