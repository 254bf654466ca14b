"""Normalisations: parse, fit in bounded memory, apply; the paper kind against data.py's own implementation."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from deepadversaries.data import dataset as data, stretches
from deepadversaries.errors import OptionError
from deepadversaries.data.stretches import Stretch, apply, fit, parse, percentiles_inplace, sample_indices


def raw_images(n: int = 20, bands: int = 3, size: int = 12, seed: int = 0) -> np.ndarray:
    """Sky noise around 0 with a bright source per band, bands of different brightness."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 10, (n, bands, size, size))
    x[:, :, size // 2, size // 2] += rng.uniform(100, 1000, (n, bands)) * np.arange(1, bands + 1)
    return x.astype(np.float32)


def test_parse():
    assert parse("paper") == Stretch("paper") and parse(" ZScore ") == Stretch("zscore")
    assert parse("asinh:8") == Stretch("asinh", 8.0) and str(parse("asinh:0.5")) == "asinh:0.5"
    assert parse("none").kind == "none" and parse(Stretch("none")) == Stretch("none")
    for bad, pattern in (("log", "unknown --stretch"), ("asinh", "asinh needs"), ("asinh:x", "asinh needs"),
                         ("asinh:0", "Q must be"), ("asinh:nan", "Q must be"), ("paper:3", "only asinh")):
        with pytest.raises(OptionError, match=pattern):
            parse(bad)


def test_paper_equals_data_apply_stretch():
    """Independent implementations of SPEC 3.5 agree bit for bit, on the same constants."""
    x = raw_images(8)
    lo, hi = data.stretch_constants(x)
    np.testing.assert_array_equal(apply("paper", {"low": lo, "high": hi}, x), data.apply_stretch(x, lo, hi))
    # and from float64 or big-endian input alike
    np.testing.assert_array_equal(apply("paper", {"low": lo, "high": hi}, x.astype(">f4")),
                                  data.apply_stretch(x, lo, hi))
    params = fit("paper", x)
    assert (params["low"], params["high"]) == pytest.approx((lo, hi), rel=1e-12)
    y = apply("paper", params, x)
    assert y.dtype == np.float32 and y.max() == pytest.approx((np.arcsinh(0.85) + 1) / 2)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 1000, 12345])
def test_percentiles_inplace_equals_numpy(n):
    rng = np.random.default_rng(n)
    v = rng.standard_cauchy(n).astype(np.float32)
    expected = np.percentile(v.astype(np.float64), (0.1, 50, 99.9, 100))
    assert percentiles_inplace(v.copy(), (0.1, 50, 99.9, 100)) == list(expected)


def test_percentile_fit_uses_a_seeded_bounded_subsample():
    x = raw_images(60)
    idx = sample_indices(60, int(np.prod(x.shape[1:])), sample=10, seed=4)
    assert len(idx) == 10 and list(idx) == sorted(set(idx.tolist()))
    assert np.array_equal(idx, sample_indices(60, int(np.prod(x.shape[1:])), sample=10, seed=4))
    assert not np.array_equal(idx, sample_indices(60, int(np.prod(x.shape[1:])), sample=10, seed=5))
    params = fit("paper", x, sample=10, seed=4, chunk=3)
    assert (params["low"], params["high"]) == pytest.approx(data.stretch_constants(x[idx]), rel=1e-12)
    assert len(sample_indices(60, stretches.FIT_MAX_PIXELS // 4)) == 4  # the pixel cap
    assert np.array_equal(sample_indices(30, 100), np.arange(30))  # small splits are used whole


def test_zscore_is_per_band_mean0_std1_on_the_training_split():
    x = raw_images(25, bands=4)
    params = fit("zscore", x, chunk=4)  # streamed in uneven chunks
    np.testing.assert_allclose(params["mean"], x.astype(np.float64).mean(axis=(0, 2, 3)), rtol=1e-10)
    np.testing.assert_allclose(params["std"], x.astype(np.float64).std(axis=(0, 2, 3)), rtol=1e-10)
    y = apply("zscore", params, x)
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(y.std(axis=(0, 2, 3)), 1, atol=1e-5)
    with pytest.raises(OptionError, match="band 1 is constant"):
        fit("zscore", np.stack([x[:, 0], np.zeros_like(x[:, 0])], axis=1))


def test_asinh_against_the_formula():
    x = raw_images(20)
    params = fit("asinh:8", x)
    scale = [np.percentile(x[:, b].astype(np.float64), 99.9) for b in range(3)]
    assert params["Q"] == 8.0 and params["scale"] == pytest.approx(scale, rel=1e-12)
    expected = np.arcsinh(8.0 * x.astype(np.float64) / np.array(scale)[None, :, None, None]) / 8.0
    y = apply("asinh", params, x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    # Q -> 0 is linear: x / s_b
    small = apply("asinh", {"Q": 1e-6, "scale": scale}, x)
    np.testing.assert_allclose(small, x / np.array(scale, np.float32)[None, :, None, None], rtol=1e-4, atol=1e-5)
    with pytest.raises(OptionError, match="band 0 has scale"):
        fit("asinh:8", -np.abs(x))


def test_none_is_identity_and_errors():
    x = raw_images(3)
    assert fit("none", x) == {}
    y = apply("none", {}, x)
    np.testing.assert_array_equal(y, x)
    assert y is not x
    with pytest.raises(OptionError, match="unusable constants"):
        fit("paper", np.zeros((4, 3, 5, 5), np.float32))
    with pytest.raises(OptionError, match="expected training images"):
        fit("paper", np.zeros((0, 3, 5, 5), np.float32))
    with pytest.raises(OptionError, match="per-band"):
        apply("zscore", {"mean": [0, 0], "std": [1, 1]}, x)
    with pytest.raises(OptionError, match="lack or mistype"):
        apply("paper", {}, x)


def test_fit_memory_is_bounded_by_sample_and_chunk(tmp_path):
    """On a memory-mapped split of 400 images, the fits hold at most the subsample and one chunk."""
    x = raw_images(400, bands=3, size=32)
    path = tmp_path / "train.npy"
    np.save(path, x)
    size = x.nbytes
    del x
    mm = np.load(path, mmap_mode="r")
    fit("paper", mm[:4])  # load lazily imported modules first
    for kind in ("paper", "asinh:8", "zscore"):
        tracemalloc.start()
        try:
            fit(kind, mm, chunk=8, sample=20)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < size / 8, (kind, peak, size)


@pytest.mark.parametrize("kind", ["paper", "asinh:8", "zscore", "none"])
def test_invert_undoes_apply(kind):
    x = raw_images(10)
    params = fit(kind, x)
    y = apply(kind, params, x)
    back = stretches.invert(kind, params, y)
    inside = (x > params["low"]) & (x < params["high"]) if kind == "paper" else np.ones_like(x, bool)
    np.testing.assert_allclose(back[inside], x[inside], rtol=1e-4, atol=1e-2)
    if kind == "paper":
        np.testing.assert_allclose(back, data.invert_stretch(y, params["high"]), rtol=1e-6)
