"""Calibration metrics (ECE, Brier, NLL, reliability bins) against hand computations, and the diagram."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss

from deepadversaries.evaluation.calibration import (NLL_EPS, brier_score, calibration_metrics, calibration_metrics_from_logits,
                                         expected_calibration_error, negative_log_likelihood, reliability_bins)
from deepadversaries.errors import OptionError
from deepadversaries.plots.calibration import plot_reliability_diagram


def test_hand_case_with_a_perfectly_calibrated_bin():
    # four images, confidence 0.75 each (bin [0.733, 0.8)), three right: accuracy 0.75 = confidence
    p = np.array([[0.75, 0.25, 0.0]] * 4)
    y = np.array([0, 0, 0, 1])
    m = calibration_metrics(p, y)
    assert m["ece"] == pytest.approx(0.0, abs=1e-7)
    # right: 0.25^2 + 0.25^2 = 0.125; wrong (true class 1): 0.75^2 + 0.75^2 = 1.125
    assert m["brier"] == pytest.approx((3 * 0.125 + 1.125) / 4)
    assert m["nll"] == pytest.approx((-3 * math.log(0.75) - math.log(0.25)) / 4)
    assert m["mean_confidence"] == pytest.approx(0.75)
    rel = m["reliability"]
    assert rel["n_bins"] == 15 and len(rel["edges"]) == 16 and rel["edges"][11] == pytest.approx(11 / 15)
    assert rel["count"] == [0] * 11 + [4] + [0] * 3
    assert rel["confidence"][11] == pytest.approx(0.75) and rel["accuracy"][11] == pytest.approx(0.75)
    assert rel["confidence"][0] is None and rel["accuracy"][14] is None


def test_hand_case_with_a_confidence_of_exactly_one():
    # image 1: confidence 1.0, wrong; image 2: 0.95, right; image 3: 0.6, right (bin [0.6, 0.667) starts at
    # 0.6 exactly, so use 0.62).  Bins: last [0.933, 1] holds images 1 and 2, bin 9 holds image 3.
    p = np.array([[1.0, 0.0, 0.0], [0.95, 0.05, 0.0], [0.62, 0.2, 0.18]])
    y = np.array([1, 0, 0])
    # ECE = 2/3 |1/2 - (1 + 0.95)/2| + 1/3 |1 - 0.62|
    ece = 2 / 3 * abs(0.5 - 0.975) + 1 / 3 * abs(1 - 0.62)
    assert expected_calibration_error(p, y) == pytest.approx(ece, abs=1e-6)
    assert reliability_bins(p, y)["count"] == [0] * 9 + [1] + [0] * 4 + [2]
    # Brier: (1^2 + 1^2) + (0.05^2 + 0.05^2) + (0.38^2 + 0.2^2 + 0.18^2)
    assert brier_score(p, y) == pytest.approx((2 + 0.005 + 0.38**2 + 0.04 + 0.0324) / 3)
    # NLL: the zero probability is clipped at NLL_EPS
    assert negative_log_likelihood(p, y) == pytest.approx((-math.log(NLL_EPS) - math.log(0.95) - math.log(0.62)) / 3)


def test_ece_is_the_weighted_gap_of_the_reliability_bins_and_matches_sklearn_nll():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 3, generator=gen) * 2.5
    y = torch.randint(0, 3, (500,), generator=gen)
    y[:300] = logits[:300].argmax(1)
    p = torch.softmax(logits.double(), 1).numpy()
    m = calibration_metrics(p, y.numpy())
    rel = m["reliability"]
    count = np.array(rel["count"])
    assert count.sum() == 500
    gaps = [c / 500 * abs(a - f) for c, a, f in zip(count, rel["accuracy"], rel["confidence"]) if c]
    assert m["ece"] == pytest.approx(sum(gaps), abs=1e-6)  # torchmetrics works in float32
    # the bins by hand: bin k holds confidences in [k/15, (k+1)/15)
    conf = p.max(1)
    for k in range(15):
        inside = (conf >= k / 15) & (conf < (k + 1) / 15)
        assert count[k] == inside.sum()
        if inside.any():
            assert rel["confidence"][k] == pytest.approx(conf[inside].mean())
            assert rel["accuracy"][k] == pytest.approx((p[inside].argmax(1) == y.numpy()[inside]).mean())
    assert m["nll"] == pytest.approx(log_loss(y.numpy(), p, labels=[0, 1, 2]), rel=1e-9)
    onehot = np.eye(3)[y.numpy()]
    assert m["brier"] == pytest.approx(((p - onehot) ** 2).sum(1).mean(), rel=1e-12)


def test_from_logits_equals_probabilities_and_keeps_the_nll_exact():
    logits = np.array([[2.0, 0.5, -1.0], [0.1, 0.3, 0.2], [-0.5, 1.5, 3.0]])
    y = np.array([0, 2, 1])
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    a, b = calibration_metrics_from_logits(logits, y), calibration_metrics(p, y)
    for key in ("ece", "brier", "nll", "mean_confidence"):
        assert a[key] == pytest.approx(b[key], rel=1e-9, abs=1e-7)
    assert a["reliability"]["count"] == b["reliability"]["count"]
    # a probability that underflows: the log-softmax still gives -ln p = 400 exactly
    extreme = calibration_metrics_from_logits(np.array([[0.0, -200.0, 200.0]]), np.array([1]))
    assert extreme["nll"] == pytest.approx(400.0, rel=1e-12)
    assert extreme["brier"] == pytest.approx(2.0)


@pytest.mark.parametrize("probabilities,labels,message", [
    ([[0.5, 0.6, 0.0]], [0], "sum to 1"),
    ([[1.2, -0.2, 0.0]], [0], r"\[0, 1\]"),
    ([[0.5, 0.5]], [0, 1], "expected 1 class labels"),
    ([[0.5, 0.5]], [2], "labels must be in 0..1"),
    ([[np.nan, 0.5]], [0], "NaN"),
    (np.zeros((0, 3)), np.zeros(0, int), "at least one image"),
    ([0.5, 0.5], [0], r"\(N, C\)"),
])
def test_bad_input_is_an_option_error(probabilities, labels, message):
    with pytest.raises(OptionError, match=message):
        calibration_metrics(np.asarray(probabilities, dtype=float), np.asarray(labels))
    with pytest.raises(OptionError, match="positive integer"):
        calibration_metrics(np.array([[0.5, 0.5]]), np.array([0]), n_bins=0)


def test_reliability_diagram_is_written(tmp_path):
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(200, 3, generator=gen) * 3
    y = torch.randint(0, 3, (200,), generator=gen)
    y10 = calibration_metrics_from_logits(logits, y)
    y1 = reliability_bins(torch.softmax(logits.double() * 0.3, 1), y)  # bins only: the ECE comes from the bins
    out = plot_reliability_diagram({"Y10": y10, "Y1": y1}, tmp_path / "reliability.png", "convnet dann · test")
    assert out == tmp_path / "reliability.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    with pytest.raises(OptionError, match="at least one domain"):
        plot_reliability_diagram({}, tmp_path / "none.png")
    with pytest.raises(OptionError, match="Y1: not reliability"):
        plot_reliability_diagram({"Y1": {"ece": 0.1}}, tmp_path / "bad.png")
