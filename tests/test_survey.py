"""The LSST survey model (SPEC 3.1): constants, PSF, noise, depth scaling."""

from __future__ import annotations

import galsim
import numpy as np
import pytest

from deepadversaries.simulation import survey
from deepadversaries.data.dataset import load_dataset

# SPEC 3.1, written out independently of survey.BAND_SPECS
ZERO_POINT = {"g": 50.70, "r": 43.70, "i": 32.36}
SKY_MAG = {"g": 22.3, "r": 21.2, "i": 20.5}
EXPOSURE_PER_YEAR = {"g": 240.0, "r": 552.0, "i": 552.0}
ZENITH_FWHM = {"g": 0.73, "r": 0.70, "i": 0.67}


def sky(band: str, years: int) -> float:
    """SPEC 3.1: sky electrons per pixel = t x zp x 10^(-0.4 (m_sky - 24)) x 0.2^2."""
    return EXPOSURE_PER_YEAR[band] * years * ZERO_POINT[band] * 10 ** (-0.4 * (SKY_MAG[band] - 24)) * 0.2**2


@pytest.mark.parametrize("band", survey.BANDS)
def test_electrons_and_sky_follow_the_formula(band):
    for years in (1, 10):
        t = EXPOSURE_PER_YEAR[band] * years
        assert survey.electrons(24.0, band, years) == pytest.approx(t * ZERO_POINT[band])
        assert survey.electrons(21.5, band, years) == pytest.approx(t * ZERO_POINT[band] * 10 ** (0.4 * 2.5))
        assert survey.sky_level(band, years) == pytest.approx(sky(band, years))
        assert survey.magnitude(survey.electrons(23.1, band, years), band, years) == pytest.approx(23.1)
    assert survey.sky_level(band, 10) == pytest.approx(10 * survey.sky_level(band, 1))


@pytest.mark.parametrize("band", survey.BANDS)
def test_psf_fwhm_is_kolmogorov_at_airmass(band):
    image = survey.psf(band).drawImage(nx=64, ny=64, scale=0.02, method="no_pixel")
    fwhm = galsim.ImageF(image.array.astype(np.float32), scale=0.02).calculateFWHM()
    expected = ZENITH_FWHM[band] * 1.2**0.6  # the Airy core (~0.02") adds almost nothing
    assert fwhm == pytest.approx(expected, rel=0.03)


@pytest.mark.parametrize("band", survey.BANDS)
@pytest.mark.parametrize("years", [1, 10])
def test_empty_sky_is_poisson_around_zero(band, years):
    level = sky(band, years)
    image = survey.add_noise(np.zeros((100, 100)), band, years, seed=17)
    sigma = np.sqrt(level)
    assert abs(image.mean()) < 0.05 * sigma
    assert image.std() == pytest.approx(sigma, rel=0.05)
    # Poisson draws of the sky, minus the sky: integer counts once the sky is added back
    np.testing.assert_allclose(image + level, np.round(image + level), atol=1e-6)


def test_y10_collects_ten_times_the_electrons_of_y1():
    scene = survey.psf("r").withFlux(2.0e5).drawImage(nx=100, ny=100, scale=survey.PIXEL_SCALE).array
    stack = np.stack([scene * 0.6, scene, scene * 1.2])
    y10 = survey.observe(stack, 10, (1, 2, 3)).astype(np.float64)
    y1 = survey.observe(stack, 1, (4, 5, 6)).astype(np.float64)
    for b, band in enumerate(survey.BANDS):
        total = stack[b].sum()
        level = sky(band, 1)
        # sum over pixels: expectation 10x / 1x the scene, Poisson variance of signal + sky
        sd10 = np.sqrt(10 * (total + level * scene.size))
        sd1 = np.sqrt(total + level * scene.size)
        assert abs(y10[b].sum() - 10 * total) < 5 * sd10
        assert abs(y1[b].sum() - total) < 5 * sd1
    # so, relative to the signal, Y1 is sqrt(10) noisier: sky noise ratio sqrt(10), signal ratio 10
    corner = (slice(0, 25), slice(0, 25))
    ratio = y10[1][corner].std() / y1[1][corner].std()
    assert ratio == pytest.approx(np.sqrt(10), rel=0.1)


def test_peak_snr_of_a_constructed_scene_by_hand():
    """S/N of the brightest pixel: S / sqrt(S + sky), S = years x the one-year scene's peak electrons."""
    scene = np.zeros((3, 5, 5))
    scene[:, 2, 2] = [100.0, 400.0, 900.0]
    scene[:, 0, 0] = [50.0, 50.0, 50.0]  # a fainter pixel elsewhere does not count
    for years in (1, 10):
        snr = survey.peak_snr(scene, years)
        for b, band in enumerate(survey.BANDS):
            s = years * scene[b, 2, 2]
            assert snr[b] == pytest.approx(s / np.sqrt(s + sky(band, years)), rel=1e-9)
    # e.g. r at Y10: 4000 e- on a sky of 127,198 e- per pixel
    assert survey.peak_snr(scene, 10)[1] == pytest.approx(4000 / np.sqrt(4000 + 127198.0654), rel=1e-7)


def test_dataset_background_matches_the_sky(tiny_dataset):
    """Corners of the simulated images: mean ~0 and std ~sqrt(sky) per band and depth (within 5 %)."""
    ds = load_dataset(tiny_dataset)
    labels = ds.labels("train")
    keep = labels != 2  # mergers' tidal features can reach the corners
    for domain, years in survey.DEPTHS.items():
        images = np.asarray(ds.images(domain, "train", stretched=False))[keep]
        corners = np.concatenate([images[:, :, :20, :20], images[:, :, -20:, -20:]], axis=2)
        for b, band in enumerate(survey.BANDS):
            pixels = corners[:, b].astype(np.float64).ravel()
            sigma = np.sqrt(sky(band, years))
            assert abs(pixels.mean()) < 0.05 * sigma, (domain, band)
            assert pixels.std() == pytest.approx(sigma, rel=0.05), (domain, band)
