"""Alignment measures: how far apart two domains' latents are (lower = better aligned), by name.

Each measure is ``f(z_source, z_target, seed) -> float`` on (n, d) latents (tensors or arrays):
the unbiased MMD² (:func:`~deepadversaries.adaptation.mmd.mmd2_measure`), the CORAL distance
(:func:`~deepadversaries.adaptation.coral.coral_measure`) and the proxy A-distance of a fresh
linear domain probe (:func:`proxy_a_distance`). A method's spec names its own measure
(``MethodSpec.measure``); :func:`alignment_measure` applies it. Used by the analysis, the
validation logs and the tests; no file I/O.

References:
    Ben-David, S., Blitzer, J., Crammer, K. & Pereira, F. 2007, "Analysis of Representations
    for Domain Adaptation", NeurIPS 19 (the proxy A-distance).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from deepadversaries.adaptation.coral import coral_measure
from deepadversaries.adaptation.mmd import mmd2_measure
from deepadversaries.adaptation.modules import measure_inputs
from deepadversaries.errors import OptionError
from deepadversaries.methods import method_spec


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

    zs, zt = measure_inputs(z_source, z_target)
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


def alignment_measure(method: str, z_source: Any, z_target: Any, *, seed: int = 0) -> float:
    """The method's own alignment measure between two sets of latents (lower = better aligned).

    ``mmd`` → unbiased MMD² (the paper's kernels, up to 512 rows per domain); ``coral`` →
    CORAL distance; ``dann`` → proxy A-distance of a fresh linear domain probe (a measure
    independent of DANN's own adversary); ``regular`` and ``adabn`` → MMD², the paper's
    measure, for comparison with ``mmd``. Any measure by name: :data:`ALIGNMENT_MEASURES`.

    Args:
        method: one of the registered methods (:mod:`deepadversaries.methods`).
        z_source: (n_s, d) latents (tensor or array), e.g. Y10.
        z_target: (n_t, d) latents, e.g. Y1.
        seed: seed of the subsampling / probe split [default: 0].

    Returns:
        The measure as a float.
    """
    return ALIGNMENT_MEASURES[method_spec(method).measure](z_source, z_target, seed=seed)
