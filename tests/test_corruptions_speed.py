"""The corruptions' fast paths give the very numbers of the slow ones they replace (bit for bit)."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import scipy.stats

from deepadversaries.corruptions import suite


def _fits_round_trip(cube: np.ndarray, q: float, seed: int) -> np.ndarray:
    """astropy's own write and read of a RICE_1 tile-compressed cube (one tile per plane)."""
    from astropy.io import fits

    _, h, w = cube.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hdu = fits.CompImageHDU(cube, compression_type="RICE_1", quantize_level=q, quantize_method=1,
                                dither_seed=seed, tile_shape=(1, h, w))
        buffer = io.BytesIO()
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(buffer)
        buffer.seek(0)
        with fits.open(buffer) as hdus:
            return np.array(hdus[1].data, dtype=np.float32)


@pytest.mark.parametrize("q,seed", [(4.0, 1), (10.0, 777), (0.25, 10_000)])
def test_quantize_round_trip_matches_the_fits_file_round_trip(q: float, seed: int) -> None:
    rng = np.random.default_rng(3)
    cube = (rng.standard_normal((7, 20, 24)) * 30.0 + rng.uniform(0, 500, (7, 1, 1))).astype(np.float32)
    cube[2, 5:9, 5:9] += 40_000.0  # a bright source in one plane
    fast = suite._quantize_round_trip(cube, q, seed)
    assert fast is not None
    reference = _fits_round_trip(cube, q, seed)
    assert fast.dtype == np.float32
    np.testing.assert_array_equal(fast, reference)
    assert not np.array_equal(fast, cube)  # it is lossy: the test can tell quantised from untouched


def test_quantize_round_trip_leaves_nan_to_the_file_round_trip() -> None:
    cube = np.ones((2, 8, 8), np.float32)
    cube[0, 0, 0] = np.nan
    assert suite._quantize_round_trip(cube, 4.0, 5) is None


def test_compression_matches_the_file_round_trip_with_the_drawn_seed() -> None:
    rng = np.random.default_rng(11)
    images = (rng.standard_normal((3, 3, 16, 16)) * 20.0).astype(np.float32)
    out = suite.compression(images, 2, np.random.default_rng(42))
    seed = int(np.random.default_rng(42).integers(1, 10_001))  # the corruption's first and only draw
    q = suite.level("compression", 2)
    reference = _fits_round_trip(images.reshape(9, 16, 16), q, seed).reshape(images.shape)
    np.testing.assert_array_equal(out, reference)


@pytest.mark.parametrize("visits,rate", [(184, 1e-4), (80, 0.02), (18, 0.3), (1, 0.5)])
def test_visit_hits_float32_equals_the_binomial_quantile_by_searchsorted(visits: int, rate: float) -> None:
    rng = np.random.default_rng(visits)
    u = rng.random(200_000, dtype=np.float32)
    cdf = scipy.stats.binom.cdf(np.arange(visits + 1), visits, rate)
    # values on and beside the thresholds, where a float32 rounding of the cdf would miscount
    c32 = cdf[:4].astype(np.float32)
    near = np.concatenate([c32, np.nextafter(c32, np.float32(0)), np.nextafter(c32, np.float32(1))])
    near = near[(near >= 0) & (near < 1)]
    u = np.concatenate([u, near])
    expected = np.array([int(np.sum(cdf <= float(v))) for v in near])  # a loop: entries <= u
    hits = suite.visit_hits(u, visits, rate)
    assert hits.dtype == np.int64
    np.testing.assert_array_equal(hits, np.searchsorted(cdf, u.astype(np.float64), side="right").clip(0, visits))
    np.testing.assert_array_equal(hits[len(u) - len(near):], expected.clip(0, visits))


@pytest.mark.parametrize("lo,hi", [(-1160.0, 7452.0), (np.float64(-1160.3), np.float64(7452.7))])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_paper_stretch_in_place_equals_the_formula(lo, hi, dtype) -> None:
    """The in-place paper stretch the benchmark calls 49 times a run: clip, arcsinh(0.85 x / hi), (y + 1) / 2,
    bit for bit as the one-expression formula, and the input untouched."""
    from deepadversaries.data.stretches import apply_paper

    images = (np.random.default_rng(5).standard_normal((4, 3, 30, 30)) * 4000.0).astype(dtype)
    kept = images.copy()
    x = np.clip(np.asarray(images, dtype=np.float32), lo, hi)
    expected = ((np.arcsinh(0.85 * x / np.float32(hi)) + 1.0) / 2.0).astype(np.float32)
    out = apply_paper(images, lo, hi)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(images, kept)
