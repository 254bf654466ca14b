"""Training losses (SPEC 5) and the domain-adaptation methods as values.

- class weights for the cross-entropy (:func:`class_weights`);
- the multi-kernel MMD² of the paper (:class:`MMDLoss`, kernels injected in the style of the
  Transfer-Learning-Library: ``MMDLoss(GaussianKernels(sigmas2))``). It follows the paper
  (eq. 2, with its typo corrected: the last term is k(θ₁(i), θ₁(j))) and, as an option, the
  authors' published code (means over all pairs, clamped at 0);
- Deep CORAL (:class:`CORALLoss`, Sun & Saenko 2016);
- DANN's pieces (Ganin et al. 2016): :class:`GradientReversal`, :class:`DomainClassifier`,
  :class:`DANNLoss` and the reversal-weight schedule :func:`dann_lambda`;
- the registry that makes a training method a value (:data:`METHODS`, :data:`METHOD_SPECS`,
  :func:`alignment_loss`, :func:`alignment_measure`). Every alignment term has the same call,
  ``term, logs = loss(z_source, z_target)``, so the training step needs no per-method branch.

Checkpoint selection (every method). The kept checkpoint is the one with the best Y10
validation accuracy, ties broken by the lower Y10 validation loss: only Y10 labels are read,
never a Y1 label. The alternatives were rejected: the validation alignment measure (MMD²,
CORAL distance, domain-classifier accuracy) is minimised by a collapsed latent space that
classifies nothing, and DANN's domain accuracy oscillates with the adversarial game; Ganin et
al.'s reverse validation needs a second training per candidate. The alignment measure is
logged each epoch for information (``val_<measure>``) and is not used for the choice.
``adabn`` trains exactly as ``regular`` and so keeps the same checkpoint; its batch-norm
statistics are re-estimated afterwards on the unlabelled Y1 training images
(:func:`deepadversaries.adaptation.adabn.adapt_batchnorm`).

References:
    Ganin, Y., Ustinova, E., Ajakan, H., et al. 2016, "Domain-Adversarial Training of Neural
    Networks", JMLR 17(59), 1-35.
    Sun, B. & Saenko, K. 2016, "Deep CORAL: Correlation Alignment for Deep Domain
    Adaptation", ECCV 2016 Workshops, LNCS 9915, 443-450 (arXiv:1607.01719).
    Li, Y., Wang, N., Shi, J., Liu, J. & Hou, X. 2016, "Revisiting Batch Normalization For
    Practical Domain Adaptation", arXiv:1603.04779 (AdaBN).
    Gulrajani, I. & Lopez-Paz, D. 2021, "In Search of Lost Domain Generalization", ICLR 2021
    (DomainBed: default weights and discriminator size).
    Ben-David, S., Blitzer, J., Crammer, K. & Pereira, F. 2007, "Analysis of Representations
    for Domain Adaptation", NeurIPS 19 (the proxy A-distance).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deepadversaries import CLASSES
from deepadversaries.errors import DeepAdvError, OptionError, check_choice
from deepadversaries.methods import METHOD_SPECS, METHODS, method_spec  # noqa: F401 (METHODS re-exported)
from deepadversaries.models.networks import LATENT_DIM

#: the published code's kernel widths, as σ² in k(a, b) = exp(−‖a − b‖² / (2σ²))
DEFAULT_SIGMAS2: tuple[float, ...] = (
    1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 35.0,
    100.0, 1e3, 1e4, 1e5, 1e6,
)
ESTIMATORS = ("unbiased", "biased")


def class_weights(labels: np.ndarray | torch.Tensor, n_classes: int = len(CLASSES),
                  names: Sequence[str] = CLASSES) -> torch.Tensor:
    """Cross-entropy weights w_m = N / (M n_m) from the training labels (class indices).

    N is the number of images, M the number of classes and n_m the images of class m.
    A class without any training image is an error (the classifier could not learn it).

    Args:
        labels: (N,) class indices.
        n_classes: M [default: 3].
        names: class names for the message [default: the paper's].
    """
    labels = np.asarray(labels, dtype=np.int64).ravel()
    counts = np.bincount(labels, minlength=n_classes)[:n_classes]
    if len(labels) == 0 or (counts == 0).any():
        missing = [names[m] if m < len(names) else str(m) for m in np.flatnonzero(counts == 0)]
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
            raise OptionError("kernel widths sigma^2 must be a non-empty list of positive numbers")
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


# ----------------------------------------------------------------------------------------------
# Deep CORAL (Sun & Saenko 2016)
# ----------------------------------------------------------------------------------------------
def _as_latents(x: torch.Tensor | np.ndarray, what: str) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.ndim != 2 or not x.is_floating_point():
        raise OptionError(f"{what}: expected an (N, D) array of floats, got shape {tuple(x.shape)} ({x.dtype})")
    return x


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
    x, y = _as_latents(x, "CORAL source"), _as_latents(y, "CORAL target")
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


# ----------------------------------------------------------------------------------------------
# DANN (Ganin et al. 2016): gradient reversal, domain classifier, domain loss, λ_p schedule
# ----------------------------------------------------------------------------------------------
#: γ of the reversal-weight schedule λ_p = 2 / (1 + exp(−γ p)) − 1 (Ganin et al. 2016, sec. 5.2.2)
DANN_GAMMA = 10.0
#: width of the domain classifier's hidden layers (DomainBed's DANN default ``mlp_width``)
DANN_HIDDEN = 256


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


def dann_lambda(progress: float, gamma: float = DANN_GAMMA) -> float:
    """The reversal weight λ_p = 2 / (1 + exp(−γ p)) − 1 of Ganin et al. (2016, sec. 5.2.2).

    It rises from 0 at the start of training to ≈ 1 at the end, so that the domain classifier's
    noisy early signal does not disturb the features ("suppress noisy signal from the domain
    classifier at the early stages of the training procedure").

    Args:
        progress: p, the fraction of training done, in [0, 1] (the LightningModule passes
            ``global_step / total_steps``).
        gamma: γ [default: 10, as Ganin et al. in all their experiments].

    Returns:
        λ_p in [0, 1).

    Raises:
        OptionError: ``progress`` outside [0, 1] or not finite, or ``gamma`` < 0.
    """
    p = float(progress)
    if not (0.0 <= p <= 1.0):
        raise OptionError(f"training progress must be in [0, 1], got {progress!r}")
    if not (math.isfinite(gamma) and gamma >= 0):
        raise OptionError(f"the DANN schedule's gamma must be a non-negative number, got {gamma!r}")
    return 2.0 / (1.0 + math.exp(-gamma * p)) - 1.0


class DomainClassifier(nn.Module):
    """The DANN domain classifier: an MLP on the latent, one logit (> 0: "target domain").

    Architecture ``latent_dim → hidden → … → hidden → 1``, ReLU after each hidden layer
    (and dropout when ``dropout`` > 0). The default, two hidden layers of 256 units without
    dropout, is DomainBed's DANN discriminator (Gulrajani & Lopez-Paz 2021: ``mlp_width``
    256, ``mlp_depth`` 3, ``mlp_dropout`` 0), sized for latents of a few hundred dimensions.
    Ganin et al. (2016) used 1024-1024 with dropout 0.5 behind an AlexNet; on our 256-d
    latent that would be 1.3 M parameters, more than the whole ConvNet (1.19 M), so the
    adversary would dominate a small survey training set. This default has 132 k.

    Args:
        latent_dim: width d of the latent [default: 256, ``models.LATENT_DIM``].
        hidden: units per hidden layer [default: 256].
        depth: number of hidden layers [default: 2].
        dropout: dropout probability after each hidden ReLU [default: 0].

    Shapes:
        input (B, latent_dim) → output (B,) logits.
    """

    def __init__(self, latent_dim: int = LATENT_DIM, hidden: int = DANN_HIDDEN, depth: int = 2,
                 dropout: float = 0.0) -> None:
        super().__init__()
        for name, value in (("latent_dim", latent_dim), ("hidden", hidden), ("depth", depth)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise OptionError(f"domain classifier {name} must be a positive integer, got {value!r}")
        if not 0.0 <= dropout < 1.0:
            raise OptionError(f"domain classifier dropout must be in [0, 1), got {dropout!r}")
        layers: list[nn.Module] = []
        width = latent_dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)
        self.latent_dim = latent_dim

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).squeeze(-1)


class DANNLoss(nn.Module):
    """Domain-adversarial loss: gradient reversal → domain classifier → binary cross-entropy.

    Source rows have domain label 0, target rows 1. The loss is Ganin et al.'s (2016, eq. 18)
    domain term, the sum of the two domains' mean cross-entropies,
    L_d = mean_s[−log(1 − σ(h(z)))] + mean_t[−log σ(h(z))] (2 ln 2 ≈ 1.386 at chance), so
    each domain counts equally whatever the batch sizes. Minimising it trains the classifier h
    to tell the domains apart; through the reversal layer the same backward pass pushes the
    features the other way, with the factor λ_p set by :meth:`set_progress`.

    Args:
        discriminator: the domain classifier [default: ``DomainClassifier(latent_dim)``].
        latent_dim: width of the latent when the default classifier is built [default: 256].
        gamma: γ of the λ_p schedule [default: 10, Ganin et al. 2016].

    Call:
        ``loss, accuracy = dann(z_source (n_s, d), z_target (n_t, d))``: the scalar loss
        (float32, differentiable w.r.t. both latents and the classifier) and the balanced
        domain accuracy (mean of the per-domain accuracies; detached, 0.5 = indistinguishable).
    """

    def __init__(self, discriminator: nn.Module | None = None, *, latent_dim: int = LATENT_DIM,
                 gamma: float = DANN_GAMMA) -> None:
        super().__init__()
        self.discriminator = discriminator if discriminator is not None else DomainClassifier(latent_dim)
        self.gamma = float(gamma)
        self.reversal = GradientReversal(dann_lambda(0.0, self.gamma))
        self.progress = 0.0

    @property
    def coeff(self) -> float:
        """The current reversal factor λ_p."""
        return self.reversal.coeff

    def set_progress(self, progress: float) -> None:
        """Set λ_p from the training progress p ∈ [0, 1] (call once per training step)."""
        self.reversal.coeff = dann_lambda(progress, self.gamma)
        self.progress = float(progress)

    def forward(self, z_source: torch.Tensor, z_target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n_s, n_t = len(z_source), len(z_target)
        if n_s == 0 or n_t == 0:
            raise OptionError(f"DANN needs latents of both domains, got {n_s} source and {n_t} target rows")
        logits = self.discriminator(self.reversal(torch.cat([z_source, z_target], dim=0))).float()
        source, target = logits[:n_s], logits[n_s:]
        loss = (F.binary_cross_entropy_with_logits(source, torch.zeros_like(source))
                + F.binary_cross_entropy_with_logits(target, torch.ones_like(target)))
        with torch.no_grad():
            accuracy = 0.5 * ((source < 0).float().mean() + (target > 0).float().mean())
        return loss, accuracy

    def extra_repr(self) -> str:
        return f"gamma={self.gamma:g}, progress={self.progress:.4g}, lambda={self.coeff:.4g}"


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
    def from_settings(cls, weight: float, settings: dict[str, Any]) -> AlignmentLoss:
        """Build from the checked weight and the other given settings (see :func:`alignment_loss`)."""
        return cls(weight)

    def set_progress(self, progress: float) -> None:
        """Training progress p ∈ [0, 1]; a no-op unless the method has a schedule."""
        if not 0.0 <= float(progress) <= 1.0:
            raise OptionError(f"training progress must be in [0, 1], got {progress!r}")

    def forward(self, z_source: torch.Tensor, z_target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"weight={self.weight:g}"


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

    @classmethod
    def from_settings(cls, weight: float, settings: dict[str, Any]) -> MMDAlignment:
        return cls(weight, sigmas2=settings.get("mmd_sigmas2", DEFAULT_SIGMAS2),
                   estimator=settings.get("mmd_estimator", "unbiased"))

    def forward(self, z_source: torch.Tensor, z_target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        value = self.loss(z_source, z_target)
        return self.weight * value, {"mmd2": value.detach()}


class CORALAlignment(AlignmentLoss):
    """λ · CORAL(z_source, z_target) (Sun & Saenko 2016); logs ``coral``.

    Args:
        weight: λ [default: 1, see ``METHOD_SPECS["coral"].weight_source``].
    """

    method = "coral"

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__(weight)
        self.loss = CORALLoss()

    def forward(self, z_source: torch.Tensor, z_target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        value = self.loss(z_source, z_target)
        return self.weight * value, {"coral": value.detach()}


class DANNAlignment(AlignmentLoss):
    """λ · L_d through a gradient reversal with the λ_p schedule (Ganin et al. 2016).

    Logs ``dann_domain_loss`` (unweighted L_d), ``dann_domain_acc`` (balanced accuracy of the
    domain classifier on this batch; 0.5 = domains indistinguishable) and ``dann_lambda``
    (the current reversal factor λ_p). The domain classifier's parameters belong to this module:
    the optimiser must include ``alignment.parameters()``.

    Args:
        weight: weight of the domain loss [default: 1, Ganin et al.'s objective; the adaptation
            strength is the reversal factor λ_p].
        latent_dim: width of the latent [default: 256].
        gamma: γ of the λ_p schedule [default: 10].
        hidden: width of the domain classifier's two hidden layers [default: 256].
    """

    method = "dann"

    def __init__(self, weight: float = 1.0, latent_dim: int = LATENT_DIM, gamma: float = DANN_GAMMA,
                 hidden: int = DANN_HIDDEN) -> None:
        super().__init__(weight)
        self.loss = DANNLoss(DomainClassifier(latent_dim, hidden), gamma=gamma)

    @classmethod
    def from_settings(cls, weight: float, settings: dict[str, Any]) -> DANNAlignment:
        return cls(weight, latent_dim=settings.get("latent_dim", LATENT_DIM),
                   gamma=float(settings.get("dann_gamma", DANN_GAMMA)),
                   hidden=settings.get("dann_hidden", DANN_HIDDEN))

    def set_progress(self, progress: float) -> None:
        self.loss.set_progress(progress)

    def forward(self, z_source: torch.Tensor, z_target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        value, accuracy = self.loss(z_source, z_target)
        logs = {"dann_domain_loss": value.detach(), "dann_domain_acc": accuracy,
                "dann_lambda": value.new_tensor(self.loss.coeff)}
        return self.weight * value, logs


# ----------------------------------------------------------------------------------------------
# alignment measures (analysis, validation logs, tests)
# ----------------------------------------------------------------------------------------------
#: latents per domain used by the MMD² measure (its kernel tensor grows as (2n)² × 19)
MEASURE_MMD_SAMPLE = 512


def _measure_inputs(z_source: Any, z_target: Any) -> tuple[torch.Tensor, torch.Tensor]:
    zs = _as_latents(torch.as_tensor(np.asarray(z_source) if not torch.is_tensor(z_source) else z_source),
                     "source latents")
    zt = _as_latents(torch.as_tensor(np.asarray(z_target) if not torch.is_tensor(z_target) else z_target),
                     "target latents")
    if zs.shape[1] != zt.shape[1]:
        raise OptionError(f"latents of different widths: {tuple(zs.shape)} and {tuple(zt.shape)}")
    return zs.detach().cpu().to(torch.float64), zt.detach().cpu().to(torch.float64)


def mmd2_measure(z_source: Any, z_target: Any, seed: int = 0, max_samples: int = MEASURE_MMD_SAMPLE) -> float:
    """Unbiased multi-kernel MMD² (the paper's kernels) between two sets of latents.

    Both sets are cut to the same n = min(n_s, n_t, ``max_samples``) rows, the same seeded
    random rows in both when n_s = n_t (so paired Y10/Y1 test sets stay paired).
    """
    zs, zt = _measure_inputs(z_source, z_target)
    n = min(len(zs), len(zt), int(max_samples))
    if n < 2:
        raise OptionError(f"MMD² needs at least 2 latents per domain, got {len(zs)} and {len(zt)}")
    rng = np.random.default_rng(seed)
    idx_s = torch.as_tensor(np.sort(rng.permutation(len(zs))[:n]))
    idx_t = idx_s if len(zs) == len(zt) else torch.as_tensor(np.sort(rng.permutation(len(zt))[:n]))
    return float(mmd2(zs[idx_s], zt[idx_t], estimator="unbiased"))


def coral_measure(z_source: Any, z_target: Any, seed: int = 0) -> float:
    """CORAL distance ‖C_s − C_t‖²_F / (4 d²) on all rows (``seed`` unused)."""
    zs, zt = _measure_inputs(z_source, z_target)
    return float(coral_distance(zs, zt))


def proxy_a_distance(z_source: Any, z_target: Any, seed: int = 0) -> float:
    """Proxy A-distance 2 (1 − 2 ε) of a linear domain probe (Ben-David et al. 2007).

    Each domain is split in two halves (seeded); a standardised L2-regularised logistic
    regression (scikit-learn, C = 1) learns to tell the domains apart on the first halves, and
    ε is its balanced error (mean of the two domains' error rates) on the second halves.
    Ganin et al. (2016) report the same quantity with a linear SVM. 0 means the domains'
    latents are linearly indistinguishable, 2 perfectly separable (it can dip slightly below 0
    by chance). A fresh probe, independent of DANN's own adversary, so that it also measures
    the other methods.

    Raises:
        OptionError: fewer than 2 latents in a domain.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    zs, zt = _measure_inputs(z_source, z_target)
    if len(zs) < 2 or len(zt) < 2:
        raise OptionError(f"the proxy A-distance needs at least 2 latents per domain, got {len(zs)} and {len(zt)}")
    rng = np.random.default_rng(seed)
    halves = []
    for z in (zs.numpy(), zt.numpy()):
        order = rng.permutation(len(z))
        halves.append((z[order[: len(z) // 2]], z[order[len(z) // 2:]]))
    (s_fit, s_test), (t_fit, t_test) = halves
    x_fit = np.concatenate([s_fit, t_fit])
    y_fit = np.r_[np.zeros(len(s_fit)), np.ones(len(t_fit))]
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        probe.fit(x_fit, y_fit)
    error = 0.5 * (np.mean(probe.predict(s_test) != 0) + np.mean(probe.predict(t_test) != 1))
    return float(2.0 * (1.0 - 2.0 * error))


#: alignment measures by name: f(z_source, z_target, seed) -> float, lower = better aligned
ALIGNMENT_MEASURES: dict[str, Callable[..., float]] = {
    "mmd2": mmd2_measure,
    "coral": coral_measure,
    "proxy_a_distance": proxy_a_distance,
}


# ----------------------------------------------------------------------------------------------
# the registry: a training method is a value
# ----------------------------------------------------------------------------------------------



_ALIGNMENTS: dict[str, type[AlignmentLoss]] = {"mmd": MMDAlignment, "coral": CORALAlignment, "dann": DANNAlignment}
#: settings :func:`alignment_loss` understands (those of other methods are ignored)
ALIGNMENT_SETTINGS = ("mmd_weight", "mmd_sigmas2", "mmd_estimator", "coral_weight", "dann_weight", "dann_gamma",
                      "dann_hidden", "latent_dim")


def alignment_loss(method: str, **settings: Any) -> AlignmentLoss | None:
    """The alignment term of a training method, or ``None`` for one without (regular, adabn).

    Args:
        method: one of :data:`METHODS`.
        **settings: any of :data:`ALIGNMENT_SETTINGS`; a missing or ``None`` value takes the
            default. Settings of other methods are ignored, so a whole configuration's subset
            can be passed. ``mmd_weight`` [0.05], ``mmd_sigmas2`` [published list],
            ``mmd_estimator`` ["unbiased"], ``coral_weight`` [1], ``dann_weight`` [1],
            ``dann_gamma`` [10], ``dann_hidden`` [256], ``latent_dim`` [256].

    Returns:
        An :class:`AlignmentLoss`: ``term, logs = loss(z_source, z_target)``.

    Raises:
        OptionError: unknown method or setting, or a weight < 0.
    """
    spec = method_spec(method)
    unknown = sorted(set(settings) - set(ALIGNMENT_SETTINGS))
    if unknown:
        raise OptionError(f"unknown alignment setting {unknown[0]!r}; choose from {', '.join(ALIGNMENT_SETTINGS)}")
    given = {k: v for k, v in settings.items() if v is not None}
    for key in (m.weight_setting for m in METHOD_SPECS.values() if m.weight_setting):
        if key in given:
            given[key] = check_weight(key, given[key])
    build = _ALIGNMENTS.get(spec.name)
    if build is None:
        return None
    return build.from_settings(given.get(spec.weight_setting, spec.default_weight), given)


def alignment_measure(method: str, z_source: Any, z_target: Any, *, seed: int = 0) -> float:
    """The method's own alignment measure between two sets of latents (lower = better aligned).

    ``mmd`` → unbiased MMD² (the paper's kernels, up to 512 rows per domain); ``coral`` →
    CORAL distance; ``dann`` → proxy A-distance of a fresh linear domain probe (a measure
    independent of DANN's own adversary); ``regular`` and ``adabn`` → MMD², the paper's
    measure, for comparison with ``mmd``. Any measure by name: :data:`ALIGNMENT_MEASURES`.

    Args:
        method: one of :data:`METHODS`.
        z_source: (n_s, d) latents (tensor or array), e.g. Y10.
        z_target: (n_t, d) latents, e.g. Y1.
        seed: seed of the subsampling / probe split [default: 0].

    Returns:
        The measure as a float.
    """
    return ALIGNMENT_MEASURES[method_spec(method).measure](z_source, z_target, seed=seed)
