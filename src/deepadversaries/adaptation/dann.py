"""DANN domain adaptation (Ganin et al. 2016): domain classifier, domain loss, λ_p schedule, alignment term.

- :func:`dann_lambda`: the reversal-weight schedule λ_p = 2 / (1 + exp(−γ p)) − 1;
- :class:`DomainClassifier`: the MLP that tells the domains apart from the latent;
- :class:`DANNLoss`: gradient reversal (:mod:`deepadversaries.adaptation.modules`) → domain
  classifier → binary cross-entropy;
- :class:`DANNAlignment`: the term the ``dann`` method adds to the cross-entropy (its spec,
  settings and defaults: :data:`deepadversaries.methods.METHOD_SPECS` ``["dann"]``). Its domain
  classifier's parameters belong to the term: the optimiser must include them.

DANN's own alignment measure is the proxy A-distance of a fresh linear probe
(:func:`deepadversaries.adaptation.measures.proxy_a_distance`), independent of its adversary.

No file I/O.

References:
    Ganin, Y., Ustinova, E., Ajakan, H., et al. 2016, "Domain-Adversarial Training of Neural
    Networks", JMLR 17(59), 1-35.
    Gulrajani, I. & Lopez-Paz, D. 2021, "In Search of Lost Domain Generalization", ICLR 2021
    (DomainBed: default weight and discriminator size).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deepadversaries.adaptation.modules import AlignmentLoss, GradientReversal
from deepadversaries.errors import OptionError
from deepadversaries.methods import DANN_GAMMA, DANN_HIDDEN
from deepadversaries.models.networks import LATENT_DIM


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
    def from_settings(cls, settings: Mapping[str, Any], *, latent_dim: int = LATENT_DIM) -> DANNAlignment:
        """The ``dann`` spec's builder: the term from its settings (weight, gamma, hidden) and the latent width."""
        return cls(latent_dim=latent_dim, **settings)

    def set_progress(self, progress: float) -> None:
        self.loss.set_progress(progress)

    def forward(self, z_source: torch.Tensor, z_target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        value, accuracy = self.loss(z_source, z_target)
        logs = {"dann_domain_loss": value.detach(), "dann_domain_acc": accuracy,
                "dann_lambda": value.new_tensor(self.loss.coeff)}
        return self.weight * value, logs

