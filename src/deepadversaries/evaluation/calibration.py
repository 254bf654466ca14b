"""Calibration of a classifier's probabilities: ECE, Brier score, NLL and reliability bins.

For one domain's test set the evaluate stage calls :func:`calibration_metrics_from_logits`
(or :func:`calibration_metrics` on probabilities) and stores the result under the domain in
``metrics.json`` as ``"ece"``, ``"brier"``, ``"nll"`` and ``"reliability"``; the reliability
diagram is drawn by :func:`deepadversaries.plots.calibration.plot_reliability_diagram`.

Definitions (N images, C classes, p the predicted probabilities, y the true class):

- ECE (Naeini et al. 2015; Guo et al. 2017, eq. 3): the confidence of an image is its
  largest probability; images are put in 15 equal-width confidence bins on [0, 1]; ECE =
  Σ_b (n_b / N) |acc_b − conf_b|, with acc_b the fraction of correct predictions and conf_b
  the mean confidence in bin b (L1 norm). Computed by torchmetrics
  (``multiclass_calibration_error``, ``norm="l1"``). Bins are [k/15, (k+1)/15), the last one
  closed at 1: torchmetrics 1.9 bins the confidences in float32 and counts a confidence of
  exactly 1.0 (common for a confident model) in a hidden 16th bin (Lightning-AI/torchmetrics
  issue #3510), so probabilities above the largest float32 below 1 are passed as that value —
  a change below 6e-8 that puts them in the last bin, as the textbook definition and
  :func:`reliability_bins` do. (torchmetrics works in float32: the ECE is exact to ~1e-7.)
- Brier score (Brier 1950, the original multiclass form): (1/N) Σ_i Σ_c (p_ic − 1[y_i = c])²,
  between 0 (perfect) and 2; not halved and not divided by C.
- NLL: (1/N) Σ_i −ln p_i,y_i, in nats. From logits it is the cross-entropy of the
  log-softmax (exact even when a probability underflows); from probabilities each p is
  clipped below at :data:`NLL_EPS` so that an underflowed probability gives a large finite
  value instead of infinity.

References: Guo, C., Pleiss, G., Sun, Y. & Weinberger, K. Q. 2017, "On Calibration of Modern
Neural Networks", ICML; Naeini, M. P., Cooper, G. & Hauskrecht, M. 2015, AAAI; Brier, G. W.
1950, Monthly Weather Review 78, 1.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torchmetrics.functional.classification import multiclass_calibration_error

from deepadversaries.errors import OptionError

#: confidence bins of the ECE and the reliability diagram (Guo et al. 2017 use 15)
N_BINS = 15
#: lower clip of a probability in the NLL from probabilities (−ln 1e-12 ≈ 27.6 nats)
NLL_EPS = 1e-12
#: how far rows of given probabilities may sum from 1
SUM_TOLERANCE = 1e-3
#: the largest float32 below 1: torchmetrics bins confidences in float32, where 1.0 falls in its hidden bin
_BELOW_ONE = float(np.nextafter(np.float32(1.0), np.float32(0.0)))


def _labels(labels: Any, n: int, n_classes: int) -> torch.Tensor:
    y = torch.as_tensor(np.asarray(labels) if not torch.is_tensor(labels) else labels)
    if y.ndim != 1 or len(y) != n:
        raise OptionError(f"expected {n} class labels in a 1-d array, got shape {tuple(y.shape)}")
    if y.is_floating_point() and not bool(torch.all(y == torch.round(y))):
        raise OptionError("class labels must be integers")
    y = y.to(torch.int64)
    if n and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise OptionError(f"class labels must be in 0..{n_classes - 1}, got {int(y.min())}..{int(y.max())}")
    return y


def _check_scores(x: Any, what: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x).detach().cpu()
    if t.ndim != 2 or t.shape[1] < 2 or not t.is_floating_point():
        raise OptionError(f"expected {what} as an (N, C) array of floats with C >= 2, got shape {tuple(t.shape)}")
    if len(t) == 0:
        raise OptionError(f"no {what}: calibration needs at least one image")
    t = t.to(torch.float64)
    if not bool(torch.isfinite(t).all()):
        raise OptionError(f"{what} contain NaN or infinite values")
    return t


def _check_probabilities(probabilities: Any) -> torch.Tensor:
    p = _check_scores(probabilities, "probabilities")
    if bool((p < 0).any()) or bool((p > 1).any()):
        raise OptionError("probabilities must lie in [0, 1] (pass logits to calibration_metrics_from_logits)")
    worst = float((p.sum(dim=1) - 1).abs().max())
    if worst > SUM_TOLERANCE:
        raise OptionError(f"each row of probabilities must sum to 1 (a row is off by {worst:.3g})")
    return p


def _bin_index(confidence: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Bin k of each confidence, [k/n, (k+1)/n) with the last bin closed at 1.

    Found exactly as torchmetrics does (float32 confidences, float32 ``linspace`` edges,
    ``bucketize``), after the same clamp of 1.0, so that these bins are the ECE's bins.
    """
    conf32 = confidence.to(torch.float32).clamp(max=_BELOW_ONE)
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float32)
    return (torch.bucketize(conf32, edges, right=True) - 1).clamp(0, n_bins - 1)


def _check_bins(n_bins: int) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise OptionError(f"the number of calibration bins must be a positive integer, got {n_bins!r}")
    return n_bins


def reliability_bins(probabilities: Any, labels: Any, n_bins: int = N_BINS) -> dict[str, Any]:
    """The data of a reliability diagram: per confidence bin, count, mean confidence, accuracy.

    Args:
        probabilities: (N, C) predicted probabilities, rows summing to 1.
        labels: (N,) true class indices.
        n_bins: equal-width bins on [0, 1] [default: 15].

    Returns:
        ``{"n_bins", "edges" (n_bins + 1 floats), "count" (n_bins ints), "confidence",
        "accuracy" (n_bins floats, ``None`` for an empty bin)}``, JSON-ready;
        Σ count/N · |accuracy − confidence| over non-empty bins is the ECE.
    """
    p = _check_probabilities(probabilities)
    return _reliability(p, _labels(labels, len(p), p.shape[1]), _check_bins(n_bins))


def _reliability(p: torch.Tensor, y: torch.Tensor, n_bins: int) -> dict[str, Any]:
    confidence, predicted = p.max(dim=1)
    correct = (predicted == y).to(torch.float64)
    k = _bin_index(confidence, n_bins)
    count = torch.bincount(k, minlength=n_bins)
    conf_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, k, confidence)
    acc_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, k, correct)
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    return {
        "n_bins": n_bins,
        "edges": [float(e) for e in edges],
        "count": [int(c) for c in count],
        "confidence": [float(s / c) if c else None for s, c in zip(conf_sum, count)],
        "accuracy": [float(s / c) if c else None for s, c in zip(acc_sum, count)],
    }


def expected_calibration_error(probabilities: Any, labels: Any, n_bins: int = N_BINS) -> float:
    """ECE with ``n_bins`` equal-width bins, L1 (torchmetrics; see the module docstring)."""
    p = _check_probabilities(probabilities)
    return _ece(p, _labels(labels, len(p), p.shape[1]), _check_bins(n_bins))


def _ece(p: torch.Tensor, y: torch.Tensor, n_bins: int) -> float:
    p = p.clamp(max=_BELOW_ONE)  # a confidence of exactly 1 into the last bin (torchmetrics #3510)
    value = multiclass_calibration_error(p, y, num_classes=p.shape[1], n_bins=n_bins, norm="l1",
                                         validate_args=False)
    return float(value)


def brier_score(probabilities: Any, labels: Any) -> float:
    """Multiclass Brier score (1/N) Σ_i Σ_c (p_ic − 1[y_i = c])², in [0, 2]."""
    p = _check_probabilities(probabilities)
    return _brier(p, _labels(labels, len(p), p.shape[1]))


def _brier(p: torch.Tensor, y: torch.Tensor) -> float:
    onehot = torch.nn.functional.one_hot(y, p.shape[1]).to(torch.float64)
    return float(((p - onehot) ** 2).sum(dim=1).mean())


def negative_log_likelihood(probabilities: Any, labels: Any) -> float:
    """Mean −ln p(true class) in nats, each probability clipped below at :data:`NLL_EPS`."""
    p = _check_probabilities(probabilities)
    y = _labels(labels, len(p), p.shape[1])
    return _nll(torch.log(p.clamp_min(NLL_EPS)), y)


def _nll(log_p: torch.Tensor, y: torch.Tensor) -> float:
    return float(torch.nn.functional.nll_loss(log_p, y))


def _metrics(p: torch.Tensor, log_p: torch.Tensor, y: torch.Tensor, n_bins: int) -> dict[str, Any]:
    return {
        "ece": _ece(p, y, n_bins),
        "brier": _brier(p, y),
        "nll": _nll(log_p, y),
        "mean_confidence": float(p.max(dim=1).values.mean()),
        "reliability": _reliability(p, y, n_bins),
    }


def calibration_metrics(probabilities: Any, labels: Any, *, n_bins: int = N_BINS) -> dict[str, Any]:
    """ECE, Brier score, NLL and reliability bins of one domain's predictions.

    Args:
        probabilities: (N, C) predicted probabilities (array or tensor), rows summing to 1
            within 1e-3.
        labels: (N,) true class indices.
        n_bins: confidence bins of the ECE and the diagram [default: 15].

    Returns:
        ``{"ece", "brier", "nll", "mean_confidence": float, "reliability": dict}`` (see
        :func:`reliability_bins`); plain Python types, ready for JSON. No accuracy: the
        evaluate stage has it already (mean confidence − accuracy = overconfidence).

    Raises:
        OptionError: shapes that do not match, values outside [0, 1], rows not summing to 1,
            NaN, labels out of range, no images.
    """
    p = _check_probabilities(probabilities)
    y = _labels(labels, len(p), p.shape[1])
    return _metrics(p, torch.log(p.clamp_min(NLL_EPS)), y, _check_bins(n_bins))


def calibration_metrics_from_logits(logits: Any, labels: Any, *, n_bins: int = N_BINS) -> dict[str, Any]:
    """:func:`calibration_metrics` of softmax(logits), with the NLL from the log-softmax.

    Args:
        logits: (N, C) class logits (e.g. the first output of ``evaluation.predict``).
        labels: (N,) true class indices.
        n_bins: confidence bins [default: 15].

    Returns:
        As :func:`calibration_metrics`; softmax and log-softmax are taken in float64.
    """
    z = _check_scores(logits, "logits")
    y = _labels(labels, len(z), z.shape[1])
    log_p = torch.log_softmax(z, dim=1)
    return _metrics(log_p.exp(), log_p, y, _check_bins(n_bins))
