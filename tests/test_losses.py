"""Class weights and the multi-kernel MMD² (SPEC 5) against plain references."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist
from sklearn.utils.class_weight import compute_class_weight

from deepadversaries.errors import DeepAdvError
from deepadversaries.losses import (DEFAULT_SIGMAS2, GaussianKernels, MMDLoss, class_weights, mmd2,
                                    pairwise_sq_distances)


def test_class_weights_formula():
    labels = np.array([0] * 6 + [1] * 3 + [2] * 1)
    w = class_weights(labels).numpy()
    np.testing.assert_allclose(w, [10 / (3 * 6), 10 / (3 * 3), 10 / (3 * 1)], rtol=1e-6)
    # scikit-learn's "balanced" weights are the same formula
    np.testing.assert_allclose(w, compute_class_weight("balanced", classes=np.arange(3), y=labels), rtol=1e-6)
    with pytest.raises(DeepAdvError, match="merger"):
        class_weights(np.array([0, 1, 1, 0]))


def test_default_kernel_widths_are_the_published_list():
    assert DEFAULT_SIGMAS2 == (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1, 5, 10, 15, 20, 25, 30, 35, 100,
                               1e3, 1e4, 1e5, 1e6)
    assert GaussianKernels().sigmas2 == pytest.approx(DEFAULT_SIGMAS2)


def test_pairwise_distances_match_scipy():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(9, 6)), rng.normal(size=(7, 6))
    d2 = pairwise_sq_distances(torch.from_numpy(x), torch.from_numpy(y)).numpy()
    np.testing.assert_allclose(d2, cdist(x, y, "sqeuclidean"), rtol=1e-10, atol=1e-12)


def _k(a, b, sigmas2=DEFAULT_SIGMAS2):
    d2 = float(sum((ai - bi) ** 2 for ai, bi in zip(a, b)))
    return sum(math.exp(-d2 / (2.0 * s)) for s in sigmas2)


def _mmd2_loops(x, y, estimator):
    """The estimators written out as plain double loops in float64."""
    n, m = len(x), len(y)
    if estimator == "unbiased":  # paper eq. 2 with the last term k(θ1(i), θ1(j))
        total = 0.0
        for i, j in itertools.product(range(n), range(n)):
            if i != j:
                total += _k(x[i], x[j]) - _k(x[i], y[j]) - _k(y[i], x[j]) + _k(y[i], y[j])
        return total / (n * (n - 1))
    xx = sum(_k(x[i], x[j]) for i in range(n) for j in range(n)) / n**2
    yy = sum(_k(y[i], y[j]) for i in range(m) for j in range(m)) / m**2
    xy = sum(_k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return max(xx + yy - 2 * xy, 0.0)


@pytest.mark.parametrize("estimator", ["unbiased", "biased"])
@pytest.mark.parametrize("scale,shift", [(0.05, 0.0), (0.3, 0.2), (2.0, 1.0)])
def test_mmd2_equals_double_loop(estimator, scale, shift):
    rng = np.random.default_rng(int(scale * 100) + int(shift * 10))
    x = rng.normal(0.0, scale, size=(7, 5))
    y = rng.normal(shift, scale, size=(7, 5))
    expected = _mmd2_loops(x.tolist(), y.tolist(), estimator)
    got = mmd2(torch.from_numpy(x), torch.from_numpy(y), estimator=estimator).item()
    assert got == pytest.approx(expected, rel=1e-6, abs=1e-12)
    # float32 latents (as in training) stay close to the float64 reference
    got32 = mmd2(torch.from_numpy(x).float(), torch.from_numpy(y).float(), estimator=estimator).item()
    assert got32 == pytest.approx(expected, rel=1e-3, abs=1e-5)


def test_mmd2_near_zero_for_one_distribution_and_positive_for_shifted():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(256, 16, generator=gen)
    b = torch.randn(256, 16, generator=gen)
    shifted = torch.randn(256, 16, generator=gen) + 0.5
    for estimator, tolerance in (("unbiased", 0.05), ("biased", 0.25)):  # the biased one has a O(1/N) bias
        same = mmd2(a, b, estimator=estimator).item()
        diff = mmd2(a, shifted, estimator=estimator).item()
        assert diff > 0.1, (estimator, diff)
        assert abs(same) < tolerance * diff, (estimator, same, diff)
    # unbiased: the estimate scatters around 0 for one distribution, so it is sometimes negative
    values = [mmd2(torch.randn(64, 4, generator=gen), torch.randn(64, 4, generator=gen)).item() for _ in range(20)]
    assert min(values) < 0 < max(values)
    assert abs(np.mean(values)) < 3 * np.std(values) / np.sqrt(len(values))


def test_biased_mmd2_is_never_negative():
    gen = torch.Generator().manual_seed(1)
    for _ in range(30):
        n = int(torch.randint(2, 40, (1,), generator=gen))
        x = torch.randn(n, 8, generator=gen) * float(torch.rand(1, generator=gen) * 3)
        y = x + 1e-4 * torch.randn(n, 8, generator=gen)
        assert mmd2(x, y, estimator="biased").item() >= 0.0
        assert mmd2(x.double(), x.double(), estimator="biased").item() == pytest.approx(0.0, abs=1e-9)
        assert 0.0 <= MMDLoss(estimator="biased")(x, x.clone()).item() < 1e-6  # float64 inside the module


def test_mmd_loss_module_matches_function_and_has_gradients():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(32, 256, generator=gen, requires_grad=True)
    y = (torch.randn(32, 256, generator=gen) * 1.5 + 0.3)
    loss_fn = MMDLoss(GaussianKernels(DEFAULT_SIGMAS2), estimator="unbiased")
    value = loss_fn(x, y)
    assert value.item() == pytest.approx(mmd2(x.detach().double(), y.double()).item(), rel=1e-6)
    value.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # under bf16 autocast the MMD is still computed in float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        v16 = loss_fn(x.detach().bfloat16(), y.bfloat16())
    assert v16.dtype == torch.float32 and v16.item() == pytest.approx(value.item(), rel=0.05)
    with pytest.raises(ValueError):
        MMDLoss(estimator="median")
    with pytest.raises(ValueError, match="equal size"):
        loss_fn(x[:5], y[:6])
