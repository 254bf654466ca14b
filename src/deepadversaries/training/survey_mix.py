"""``--augment survey-mix``: AugMix (Hendrycks et al. 2020) on chains of the package's own survey corruptions.

For each training image (raw electrons, *before* the dataset's normalisation) :class:`SurveyMix`
builds :data:`N_VIEWS` = 2 augmented views. Each view mixes :data:`N_CHAINS` = 3 chains; a chain
applies 1-3 (uniform, :data:`MAX_DEPTH`) corruptions, each drawn uniformly from the *training*
corruptions at a uniform severity 1-5, through :func:`deepadversaries.corruptions.suite.corrupt`
(so a corruption registered at run time joins by its family). The chains are mixed with
Dirichlet(1, 1, 1) weights and the result with the clean image with a Beta(1, 1) weight m, all in
electrons: ``view = m x + (1 - m) sum_k w_k chain_k(x)``; the view is then normalised by the
dataset's own :meth:`~deepadversaries.data.dataset.GalaxyDataset.model_input`.

The loss (:func:`js_consistency`, used by :class:`~deepadversaries.training.module.GalaxyClassifierModule`):
the weighted cross-entropy on the clean image plus λ JS(p_clean, p_aug1, p_aug2) with λ =
:data:`JS_WEIGHT` = 12 (AugMix's), JS = (1/3) Σ_i KL(p_i ‖ M), M = the mean of the three
(natural log; AugMix clamps M to [1e-7, 1] before its log, and so does this module).

The split of corruption families (:data:`TRAINING_FAMILIES`, :data:`HELD_OUT_FAMILIES`; the
``family`` field of :class:`~deepadversaries.corruptions.registry.CorruptionSpec`):

==========  ==========  =====================================================================
family      survey-mix  built-in corruptions
==========  ==========  =====================================================================
detector    trained on  cosmic_rays, hot_pixels, dead_pixels, bad_columns
pipeline    trained on  sky_error, background_gradient, misregistration, correlated_noise,
                        compression
observing   held out    seeing, psf_ellipticity, depth
scene       held out    star_neighbour, bleed, blend, satellite
==========  ==========  =====================================================================

Defects, noise and processing are trained on; what changes the galaxy's appearance through
the atmosphere and the scene (PSF, seeing, depth, neighbours, trails) is held out, so mCE over
:func:`held_out_corruptions` measures robustness to corruptions the model never saw.

Contracts: the augmenter draws only corruptions of :data:`TRAINING_FAMILIES`; the views depend
only on the images and the generator's state (deterministic given the seed); the input is not
modified; outputs are float32 of the input's shape.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from deepadversaries.corruptions import registry
from deepadversaries.corruptions import suite
from deepadversaries.errors import OptionError

__all__ = ["TRAINING_FAMILIES", "HELD_OUT_FAMILIES", "N_VIEWS", "N_CHAINS", "MAX_DEPTH", "JS_WEIGHT",
           "training_corruptions", "held_out_corruptions", "SurveyMix", "js_divergence", "js_consistency"]

#: corruption families survey-mix trains on (defects, noise and processing)
TRAINING_FAMILIES: tuple[str, ...] = ("detector", "pipeline")
#: corruption families held out of training: mCE on these measures robustness to what was not trained on
HELD_OUT_FAMILIES: tuple[str, ...] = ("observing", "scene")
#: augmented views per image (the JS term compares the clean image and these)
N_VIEWS = 2
#: chains mixed per view (AugMix's k)
N_CHAINS = 3
#: a chain applies 1 to MAX_DEPTH corruptions (uniform)
MAX_DEPTH = 3
#: λ of λ·JS (AugMix's)
JS_WEIGHT = 12.0
#: AugMix's clamp of the mixture before its logarithm
_MIXTURE_FLOOR = 1e-7

assert set(TRAINING_FAMILIES) | set(HELD_OUT_FAMILIES) == set(registry.FAMILIES)
assert not set(TRAINING_FAMILIES) & set(HELD_OUT_FAMILIES)


def training_corruptions() -> tuple[str, ...]:
    """The registered corruptions survey-mix draws from (families :data:`TRAINING_FAMILIES`), in the
    benchmark's order."""
    return tuple(name for name, spec in registry.CORRUPTIONS.items() if spec.family in TRAINING_FAMILIES)


def held_out_corruptions() -> tuple[str, ...]:
    """The registered corruptions survey-mix never trains on (families :data:`HELD_OUT_FAMILIES`), in the
    benchmark's order: the ones a survey-mix run's mCE should be stated on."""
    return tuple(name for name, spec in registry.CORRUPTIONS.items() if spec.family in HELD_OUT_FAMILIES)


class SurveyMix:
    """The survey-mix augmenter: raw electrons -> :data:`N_VIEWS` normalised AugMix views.

    Args:
        normalise: raw electrons (N, B, H, W) -> float32 model input of the same shape (the dataset's
            ``lambda raw: ds.model_input(raw, "Y10")``).
        domain: the depth of the raw images, "Y10" or "Y1" [default: "Y10"].
        bands: their LSST bands in channel order [default: ("g", "r", "i")].
        corruptions: the corruptions to draw from [default: :func:`training_corruptions`, read at
            construction]; a held-out one is refused.
    """

    def __init__(self, normalise: Callable[[np.ndarray], np.ndarray], *, domain: str = "Y10",
                 bands: Sequence[str] = suite.BANDS, corruptions: Sequence[str] | None = None) -> None:
        self.normalise = normalise
        self.domain = domain
        self.bands = suite.check_bands(bands)
        names = tuple(corruptions) if corruptions is not None else training_corruptions()
        if not names:
            raise OptionError("survey-mix has no training corruption to draw from (families "
                              f"{', '.join(TRAINING_FAMILIES)})")
        for name in names:
            if registry.get_spec(name).family not in TRAINING_FAMILIES:
                raise OptionError(f"corruption {name!r} (family {registry.get_spec(name).family}) is held out of "
                                  f"survey-mix training; the training families are {', '.join(TRAINING_FAMILIES)}")
        self.corruptions = names

    def mix(self, raw: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The AugMix views of a batch, in electrons (before normalisation).

        Args:
            raw: (N, B, H, W) raw electrons of :attr:`domain`, bands :attr:`bands`.
            rng: the generator every draw comes from (chains, corruptions, severities, weights).

        Returns:
            (N_VIEWS, N, B, H, W) float32 electrons: ``m x + (1 - m) Σ_k w_k chain_k(x)`` per view.
        """
        x = np.asarray(raw, dtype=np.float32)
        n = len(x)
        n_chains = N_VIEWS * N_CHAINS
        chains = np.broadcast_to(x, (n_chains, *x.shape)).reshape(n_chains * n, *x.shape[1:]).copy()
        depth = rng.integers(1, MAX_DEPTH + 1, size=n_chains * n)
        for step in range(MAX_DEPTH):
            op = rng.integers(0, len(self.corruptions), size=n_chains * n)
            severity = rng.integers(1, 6, size=n_chains * n)
            active = depth > step
            # one call per (corruption, severity) over every chain that draws it (vectorised; fixed order)
            for k, name in enumerate(self.corruptions):
                for s in range(1, 6):
                    rows = np.flatnonzero(active & (op == k) & (severity == s))
                    if len(rows):
                        chains[rows] = suite.corrupt(chains[rows], name, s, rng, self.domain, self.bands)
        chains = chains.reshape(N_VIEWS, N_CHAINS, n, *x.shape[1:])
        weights = rng.dirichlet(np.ones(N_CHAINS), size=(N_VIEWS, n)).astype(np.float32)  # (V, N, K)
        m = rng.beta(1.0, 1.0, size=(N_VIEWS, n)).astype(np.float32)  # (V, N)
        mixed = np.einsum("vnk,vkn...->vn...", weights, chains)
        m = m.reshape(N_VIEWS, n, *([1] * (x.ndim - 1)))
        return (m * x[None] + (1.0 - m) * mixed).astype(np.float32)

    def __call__(self, raw: np.ndarray, rng: np.random.Generator) -> tuple[torch.Tensor, ...]:
        """:meth:`mix`'s views normalised to model input: :data:`N_VIEWS` float32 tensors (N, B, H, W)."""
        views = self.mix(raw, rng)
        return tuple(torch.from_numpy(np.ascontiguousarray(self.normalise(v), dtype=np.float32)) for v in views)


def js_divergence(probabilities: Sequence[torch.Tensor]) -> torch.Tensor:
    """The generalised Jensen–Shannon divergence of k distributions, as AugMix computes it.

    Args:
        probabilities: k tensors (N, C) of class probabilities (rows sum to 1).

    Returns:
        scalar: the mean over the N rows of (1/k) Σ_i KL(p_i ‖ M), M = clamp(mean_i p_i, 1e-7, 1),
        natural log (nats). For k = 2 it is scipy's ``jensenshannon(p, q) ** 2``.
    """
    k = len(probabilities)
    mixture = torch.clamp(sum(probabilities) / k, _MIXTURE_FLOOR, 1.0).log()
    return sum(F.kl_div(mixture, p, reduction="batchmean") for p in probabilities) / k


def js_consistency(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """AugMix's consistency term JS(softmax(l_clean), softmax(l_aug1), ...) of logits (N, C) each,
    unweighted (the loss adds :data:`JS_WEIGHT` times it)."""
    return js_divergence([F.softmax(lg.float(), dim=1) for lg in logits])
