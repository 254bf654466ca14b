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


# --- draws made once per chunk and replayed for the later severities -----------------------------------------
def _galaxies(n: int, seed: int) -> np.ndarray:
    """Raw Y10-like stamps: a Gaussian blob of a few thousand electrons on the sky's noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:100, 0:100] - 49.5
    blob = np.exp(-(yy ** 2 + xx ** 2) / (2 * 6.0 ** 2))
    images = rng.standard_normal((n, 3, 100, 100)) * 400.0 + 3_000.0 * blob * rng.uniform(0.5, 2.0, (n, 3, 1, 1))
    return images.astype(np.float32)


@pytest.mark.parametrize("tables,defects,domain", [("rubin", "dithered", "Y10"), ("rubin", "masked", "Y1"),
                                                   ("stress", "no-dither", "Y10"), ("stress", "dithered", "Y1")])
def test_every_corruption_at_several_severities_equals_one_fresh_stream_per_severity(tables, defects, domain) -> None:
    from deepadversaries.corruptions.benchmark import corrupted_chunk, corrupted_chunks
    from deepadversaries.corruptions.registry import CORRUPTIONS

    raw = _galaxies(5, 7)
    options = suite.CorruptionOptions(tables, defects)
    severities = (5, 0, 1, 3, 2)  # any order; severity 0 draws nothing
    for name in CORRUPTIONS:
        together = corrupted_chunks(raw, name, severities, 0, seed=4, domain=domain, options=options)
        for severity, got in zip(severities, together):
            alone = corrupted_chunk(raw, name, severity, 0, seed=4, domain=domain, options=options)
            np.testing.assert_array_equal(got, alone, err_msg=f"{name} severity {severity}")


def test_replay_generator_replays_copies_and_goes_on_in_step_where_the_calls_differ() -> None:
    from deepadversaries.corruptions.draws import ReplayGenerator

    def calls(rng: np.random.Generator, mean: float) -> list:
        out = [rng.random((4, 3), dtype=np.float32), rng.integers(0, 100, 6), rng.standard_normal(5)]
        out.append(rng.poisson(np.array([1.0, mean])))  # differs between the two runs
        out += [rng.uniform(0.0, 2.0, 3), rng.standard_normal((2, 2), dtype=np.float32)]
        return out

    first = ReplayGenerator([9, 1])
    recorded = calls(first, 2.0)
    recorded[0] += 100.0  # the caller changes its result in place: the record keeps the drawn values
    for mean in (2.0, 30.0):
        replayed = calls(ReplayGenerator([9, 1], first.draws), mean)
        fresh = calls(np.random.default_rng([9, 1]), mean)
        for a, b in zip(replayed, fresh):
            np.testing.assert_array_equal(a, b)
    assert [d.method for d in first.draws] == ["random", "integers", "standard_normal", "poisson", "uniform",
                                               "standard_normal"]
    with pytest.raises(TypeError, match="does not replay Generator.normal"):
        ReplayGenerator([9, 1]).normal(0.0, 1.0)


@pytest.mark.parametrize("half_width", [1, 4, 8, 11])
def test_fft_convolution_with_rounded_padding_equals_a_direct_mirror_convolution(half_width: int) -> None:
    import scipy.ndimage

    rng = np.random.default_rng(half_width)
    planes = (rng.standard_normal((3, 30, 37)) * 50.0 + 200.0).astype(np.float32)
    kernel = rng.uniform(0.0, 1.0, (2 * half_width + 1, 2 * half_width + 1))  # not symmetric: orientation checked
    kernel /= kernel.sum()
    got = suite._convolve(planes, kernel)
    for plane, out in zip(planes, got):
        expected = scipy.ndimage.convolve(plane.astype(np.float64), kernel, mode="mirror")  # mirror = numpy's reflect
        np.testing.assert_allclose(out, expected, rtol=0, atol=2e-3)


def test_spectrum_cache_returns_the_computed_spectrum_and_keeps_its_own_copy_of_the_input() -> None:
    import scipy.fft

    cache = suite._SpectrumCache(2)
    rng = np.random.default_rng(0)
    a, b, c = (rng.standard_normal((2, 20, 20)).astype(np.float32) for _ in range(3))

    def direct(x: np.ndarray) -> np.ndarray:
        return scipy.fft.rfft2(np.pad(x, ((0, 0), (4, 4), (4, 4)), mode="reflect"), s=(30, 30))

    first = cache.spectrum(a, 4, (30, 30))
    assert cache.spectrum(a.copy(), 4, (30, 30)) is first  # a hit: the kept spectrum
    a_before = a.copy()
    a[0, 0, 0] += 1.0  # the caller changes its array: no longer the kept input
    np.testing.assert_array_equal(cache.spectrum(a, 4, (30, 30)), direct(a))
    np.testing.assert_array_equal(cache.spectrum(a_before, 4, (30, 30)), direct(a_before))
    for x in (b, c, a_before):  # at most two kept: the oldest are recomputed, the same numbers
        np.testing.assert_array_equal(cache.spectrum(x, 4, (30, 30)), direct(x))
    assert len(cache.entries) == 2 and not first.flags.writeable


def test_spectra_are_shared_only_inside_the_block_and_give_the_same_convolution(monkeypatch) -> None:
    computed = []
    spectrum_of = suite._spectrum_of
    monkeypatch.setattr(suite, "_spectrum_of", lambda *a: computed.append(1) or spectrum_of(*a))
    planes = np.random.default_rng(1).standard_normal((3, 30, 30)).astype(np.float32)
    kernel = np.outer([1.0, 2.0, 1.0], [1.0, 2.0, 1.0]) / 16.0
    outside = [suite._convolve(planes, kernel) for _ in range(2)]
    assert len(computed) == 2  # nothing kept outside shared_spectra
    with suite.shared_spectra():
        inside = [suite._convolve(planes.copy(), kernel) for _ in range(2)]
    assert len(computed) == 3  # one transform for both calls
    suite._convolve(planes, kernel)
    assert len(computed) == 4  # the block's cache is gone
    for out in (*outside, *inside):
        np.testing.assert_array_equal(out, outside[0])


@pytest.mark.parametrize("shape", [(100, 100), (31, 40), (40, 31)])
def test_misregistration_equals_the_full_complex_fourier_shift(shape) -> None:
    import scipy.fft
    import scipy.ndimage

    h, w = shape
    raw = (np.random.default_rng(5).standard_normal((6, 3, h, w)) * 40.0 + 300.0).astype(np.float32)
    got = suite.misregistration(raw, 5, np.random.default_rng(11))
    rng = np.random.default_rng(11)  # the same draws, in the same order, shifted one image at a time
    band = rng.integers(0, 3, 6)
    angle = rng.uniform(0.0, 2.0 * np.pi, 6)
    shift = suite.level("misregistration", 5) / suite.PIXEL_SCALE
    expected = raw.copy()
    for i in range(6):
        spectrum = scipy.ndimage.fourier_shift(scipy.fft.fft2(raw[i, band[i]].astype(np.float64)),
                                               (shift * np.sin(angle[i]), shift * np.cos(angle[i])))
        expected[i, band[i]] = scipy.fft.ifft2(spectrum).real
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-3)
    assert not np.allclose(got, raw, atol=1.0)
