"""corruptions: each corruption's physical effect, measured on its output by code written here,
against its severity table; the tables pinned to docs/robustness.md's values; every controlled quantity
rises from severity 1 to 5; dithered and masked defects; blends; severity 0 is the identity; a seed fixes
the output; bad input is refused."""

from __future__ import annotations

import math
from pathlib import Path

import galsim
import numpy as np
import pytest
import scipy.ndimage
import scipy.stats

from deepadversaries.corruptions import suite as C
from deepadversaries.corruptions.registry import CORRUPTIONS
from deepadversaries.corruptions.suite import corrupt
from deepadversaries.errors import OptionError
from deepadversaries.simulation.survey import sky_level

#: the first version's levels (the stress set) with defects fixed on the sky (no dither)
STRESS = C.CorruptionOptions("stress", "no-dither")

BANDS = ("g", "r", "i")
#: the survey (SPEC 3.1), written out here: exposure per year (s), zero point (e-/s at m = 24)
EXPOSURE_PER_YEAR = {"g": 240.0, "r": 552.0, "i": 552.0}
ZERO_POINT = {"g": 50.70, "r": 43.70, "i": 32.36}
ZENITH_FWHM = {"g": 0.73, "r": 0.70, "i": 0.67}
LAM_OVER_DIAM = {"g": 0.0118, "r": 0.0153, "i": 0.0186}


def sky(years: float = 10) -> np.ndarray:
    return np.array([sky_level(b, years) for b in BANDS])


def visits(years: float = 10) -> np.ndarray:
    return np.array([EXPOSURE_PER_YEAR[b] * years / 30.0 for b in BANDS])


def exposure(years: float = 10) -> np.ndarray:
    return np.array([EXPOSURE_PER_YEAR[b] * years for b in BANDS])


def sky_noise(n: int, size: int = 100, seed: int = 0, years: float = 10) -> np.ndarray:
    """Background-only co-adds: Gaussian noise of variance B per band."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, 3, size, size)) * np.sqrt(sky(years))[None, :, None, None]).astype(np.float32)


def survey_psf(band: str, zenith_fwhm: float) -> galsim.GSObject:
    """Kolmogorov(zenith FWHM x 1.2^0.6) convolved with Airy(lambda/D, obscuration 0.64), as SPEC 3.1."""
    return galsim.Convolve(galsim.Kolmogorov(fwhm=zenith_fwhm * 1.2 ** 0.6),
                           galsim.Airy(lam_over_diam=LAM_OVER_DIAM[band], obscuration=0.64))


# --- generic properties ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_severity_zero_is_identity_and_a_seed_fixes_the_output(name):
    x = sky_noise(16, size=48, seed=1)  # 16 stamps: several surviving cosmic rays at severity 3
    x[:, :, 20:28, 20:28] += 5e4  # a source, so that source-dependent terms are exercised
    before = x.copy()
    assert np.array_equal(corrupt(x, name, 0, np.random.default_rng(0)), x)
    a = corrupt(x, name, 3, np.random.default_rng(7), options=STRESS)
    b = corrupt(x, name, 3, np.random.default_rng(7), options=STRESS)
    c = corrupt(x, name, 3, np.random.default_rng(8), options=STRESS)
    assert np.array_equal(x, before), "the input was modified"
    assert a.dtype == np.float32 and a.shape == x.shape and np.isfinite(a).all()
    assert np.array_equal(a, b)
    assert not np.array_equal(a, x)
    assert not np.array_equal(a, c)
    # one image (3, H, W) is a batch of one
    assert np.array_equal(corrupt(x[0], name, 3, np.random.default_rng(7), options=STRESS),
                          corrupt(x[:1], name, 3, np.random.default_rng(7), options=STRESS)[0])


def test_bad_input_is_refused_with_one_line():
    x = sky_noise(1, size=16)
    for bad in (-1, 6, 2.5, True, "3"):
        with pytest.raises(OptionError, match="severity") as err:
            corrupt(x, "seeing", bad, np.random.default_rng(0))
        assert "\n" not in str(err.value)
    with pytest.raises(OptionError, match="unknown corruption 'blur'; choose one of seeing"):
        corrupt(x, "blur", 1, np.random.default_rng(0))
    with pytest.raises(OptionError, match="unknown domain"):
        corrupt(x, "seeing", 1, np.random.default_rng(0), domain="Y5")
    with pytest.raises(OptionError, match="shape"):
        corrupt(x[:, :2], "seeing", 1, np.random.default_rng(0))


# --- seeing -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("severity", [1, 3, 5])
def test_seeing_gives_the_table_fwhm_to_a_point_source(severity):
    size, flux = 96, 1e8
    image = np.stack([survey_psf(b, ZENITH_FWHM[b]).drawImage(nx=size, ny=size, scale=0.2).array * flux
                      for b in BANDS])[None].astype(np.float32)
    out = corrupt(image, "seeing", severity, np.random.default_rng(0))
    factor = C.SEEING_FWHM_R[severity] / ZENITH_FWHM["r"]
    for b, band in enumerate(BANDS):
        target_psf = survey_psf(band, ZENITH_FWHM[band] * factor)
        target = target_psf.drawImage(nx=size, ny=size, scale=0.2)
        measured = galsim.Image(np.ascontiguousarray(out[0, b], dtype=np.float64), scale=0.2).calculateFWHM()
        assert measured == pytest.approx(target.calculateFWHM(), rel=0.03), band
        if band == "r":  # and the table's number is that PSF's FWHM (the Airy adds ~1 %)
            assert target_psf.calculateFWHM() == pytest.approx(C.SEEING_FWHM_R[severity] * 1.2 ** 0.6, rel=0.03)
        # flux conserved, to the noise put back: variance at most B + S per pixel
        added_sd = math.sqrt(size * size * sky()[b] + flux)
        assert abs(out[0, b].sum(dtype=np.float64) - image[0, b].sum(dtype=np.float64)) < 5 * added_sd


def test_seeing_restores_the_survey_noise_level():
    x = sky_noise(6, seed=2)
    out = corrupt(x, "seeing", 5, np.random.default_rng(1))
    for b in range(3):
        assert np.var(out[:, b, 10:-10, 10:-10]) == pytest.approx(sky()[b], rel=0.03)
    # the smoothing alone would have left a fraction sum(K^2) of the variance: far less
    k = C.seeing_kernel("r", C.SEEING_FWHM_R[5])
    assert np.sum(k ** 2) < 0.1


# --- sky-subtraction error ----------------------------------------------------------------------------
@pytest.mark.parametrize("severity", [1, 5])
@pytest.mark.parametrize("domain,years", [("Y10", 10), ("Y1", 1)])
def test_sky_error_shifts_each_band_by_the_table_fraction_of_the_sky(severity, domain, years):
    x = sky_noise(40, size=32, years=years)
    out = corrupt(x, "sky_error", severity, np.random.default_rng(3), domain=domain)
    shift = (out.astype(np.float64) - x).reshape(40, 3, -1)
    expected = C.SKY_ERROR_FRACTION[severity] * sky(years)
    assert np.allclose(np.abs(shift.mean(axis=2)), expected[None, :], rtol=1e-4)
    assert shift.std(axis=2).max() < 1e-3 * expected.min() + 0.02  # a constant offset
    signs = np.sign(shift.mean(axis=2))
    assert (signs > 0).any() and (signs < 0).any()  # over- and under-subtraction both occur


# --- cosmic rays --------------------------------------------------------------------------------------
def _components(out: np.ndarray):
    """Connected hit regions (8-connectivity) of every band of every image: (index, band, labels, count)."""
    for i in range(out.shape[0]):
        for b in range(3):
            labels, count = scipy.ndimage.label(out[i, b] > 0, structure=np.ones((3, 3)))
            yield i, b, labels, count


@pytest.mark.parametrize("severity,domain,years", [(5, "Y10", 10), (1, "Y10", 10), (5, "Y1", 1)])
def test_cosmic_ray_tracks_per_stamp_match_rate_times_area(severity, domain, years):
    n = 400
    out = corrupt(np.zeros((n, 3, 100, 100), np.float32), "cosmic_rays", severity, np.random.default_rng(4), domain,
                  options=STRESS)
    counts = np.zeros(3)
    for _, b, _, count in _components(out):
        counts[b] += count
    area_cm2 = (100 * 10e-4) ** 2  # 100 x 100 pixels of 10 um
    expected = C.COSMIC_RAY_RATE_CM2_MIN / 60 * area_cm2 * 30.0 * visits(years) * C.level("cosmic_rays", severity, STRESS) * n
    total, mean = counts.sum(), expected.sum()
    # Poisson scatter, plus up to 2 % of tracks merged where two cross
    assert abs(total - mean) < 4 * math.sqrt(mean) + 0.02 * mean, (total, mean)
    assert counts[0] < counts[1]  # g has 80 visits per 10 years, r 184


def test_cosmic_ray_charge_is_that_of_a_muon_crossing_the_sensor():
    out = corrupt(np.zeros((600, 3, 100, 100), np.float32), "cosmic_rays", 5, np.random.default_rng(5), options=STRESS)
    short, long_ = [], []
    for i, b, labels, count in _components(out):
        for k in range(1, count + 1):
            rows, cols = np.nonzero(labels == k)
            if rows.min() == 0 or cols.min() == 0 or rows.max() == 99 or cols.max() == 99:
                continue  # part of the track may lie outside the stamp
            (short if len(rows) <= 2 else long_).append(out[i, b][rows, cols].sum())
    vertical = 75.0 * 100.0  # most probable 75 e-/um over the 100-um sensor
    assert len(short) > 30
    assert 0.95 * vertical < np.median(short) < 1.3 * vertical
    assert np.median(long_) > np.median(short)  # inclined tracks cross more silicon


# --- detector defects ---------------------------------------------------------------------------------------
def test_no_dither_hot_pixels_fraction_positions_and_dark_current():
    n = 50
    out = corrupt(np.zeros((n, 3, 100, 100), np.float32), "hot_pixels", 5, np.random.default_rng(6), options=STRESS)
    t = exposure()
    hot = out > 0.5 * 5.0 * t[:, None, None]
    assert np.array_equal(hot[:, 0], hot[:, 1]) and np.array_equal(hot[:, 0], hot[:, 2])  # same pixels in every band
    assert np.array_equal(hot, out != 0)
    expected = 0.01 * n * 100 * 100
    assert abs(hot[:, 0].sum() - expected) < 4 * math.sqrt(expected)
    rate = out[:, 1][hot[:, 1]] / t[1]  # e-/s in r
    assert rate.min() > 4.8 and rate.max() < 51
    ratio = out[:, 1][hot[:, 1]] / out[:, 0][hot[:, 0]]
    assert np.median(ratio) == pytest.approx(t[1] / t[0], rel=0.02)  # dark current x exposure


def test_no_dither_dead_pixels_hold_minus_the_sky():
    n = 50
    x = sky_noise(n, seed=3)
    out = corrupt(x, "dead_pixels", 4, np.random.default_rng(7), options=STRESS)
    dead = np.stack([out[:, b] == np.float32(-sky()[b]) for b in range(3)], axis=1)
    assert np.array_equal(dead[:, 0], dead[:, 1]) and np.array_equal(dead[:, 0], dead[:, 2])
    assert np.array_equal(out[~dead], x[~dead])  # nothing else changes
    expected = 0.005 * n * 100 * 100
    assert abs(dead[:, 0].sum() - expected) < 4 * math.sqrt(expected)


@pytest.mark.parametrize("severity", [1, 5])
def test_no_dither_bad_columns_count_and_positions(severity):
    n = 60
    x = sky_noise(n, seed=4)
    out = corrupt(x, "bad_columns", severity, np.random.default_rng(8), options=STRESS)
    s = sky()
    t = exposure()
    columns_hit = []
    for i in range(n):
        changed = (out[i] != x[i]).all(axis=1)  # (3, W): every pixel of the column changed
        assert np.array_equal(changed[0], changed[1]) and np.array_equal(changed[0], changed[2])
        cols = np.flatnonzero(changed[0])
        untouched = np.setdiff1d(np.arange(100), cols)
        assert np.array_equal(out[i][:, :, untouched], x[i][:, :, untouched])
        for c in cols:
            dead = np.all(out[i, :, :, c] == (-s[:, None]).astype(np.float32))
            bright = np.all(out[i, :, :, c] - x[i, :, :, c] > 0.9 * 5.0 * t[:, None])
            assert dead or bright
        columns_hit.extend(cols)
    expected = {1: 1.0, 5: 5.0}[severity] * n  # the stress table's columns per stamp, each column p = c / 100
    assert abs(len(columns_hit) - expected) < 4 * math.sqrt(expected)
    assert 35 < np.mean(columns_hit) < 65  # anywhere across the stamp


# --- saturation ---------------------------------------------------------------------------------------------
def test_saturated_star_caps_at_the_full_well_and_bleeds_along_columns():
    n = 20
    out = corrupt(np.zeros((n, 3, 100, 100), np.float32), "star_neighbour", 3, np.random.default_rng(9), options=STRESS)
    cap = visits() * C.FULL_WELL_E - sky()  # co-add of N visits at full well, sky subtracted
    for b in range(3):
        assert out[:, b].max() <= cap[b] * (1 + 1e-6)
    saturated = out >= (cap * (1 - 1e-6))[None, :, None, None].astype(np.float32)
    assert saturated[:, 1].any(axis=(1, 2)).all()  # a 14th-magnitude star saturates in r every time
    for i in range(n):
        for b in range(3):
            rows, cols = np.nonzero(saturated[i, b])
            if len(rows) == 0:
                continue
            for c in np.unique(cols):  # one contiguous run per column: a bleed trail
                r = np.sort(rows[cols == c])
                assert np.all(np.diff(r) == 1)
            assert np.ptp(rows) > np.ptp(cols)  # longer along the columns than across


def test_saturated_star_conserves_the_star_flux():
    n = 40
    out = corrupt(np.zeros((n, 3, 100, 100), np.float32), "star_neighbour", 2, np.random.default_rng(10), options=STRESS)
    r_mag = 14.5  # the stress table's severity 2
    star = EXPOSURE_PER_YEAR["r"] * 10 * ZERO_POINT["r"] * 10 ** (-0.4 * (r_mag - 24))
    cap = visits()[1] * C.FULL_WELL_E - sky()[1]
    used = 0
    for i in range(n):
        rows, cols = np.nonzero(out[i, 1] >= cap * (1 - 1e-6))
        if len(rows) == 0 or rows.min() < 20 or rows.max() > 79 or cols.min() < 20 or cols.max() > 79:
            continue  # the trail or the PSF wings may leave the stamp
        used += 1
        assert out[i, 1].astype(np.float64).sum() == pytest.approx(star, rel=0.02)
    assert used >= 5


# --- satellite ------------------------------------------------------------------------------------------------
def _orbital_line_density(magnitude: float, band: str) -> float:
    """Electrons per arcsec of trail: flux / angular speed of a circular orbit at 550 km seen at the zenith."""
    speed_km_s = math.sqrt(398600.4418 / (6371.0 + 550.0))
    arcsec_per_s = speed_km_s / 550.0 * 206264.806
    return ZERO_POINT[band] * 10 ** (-0.4 * (magnitude - 24)) / arcsec_per_s


def test_satellite_trail_line_density_and_width():
    n, size = 30, 200
    out = corrupt(np.zeros((n, 3, size, size), np.float32), "satellite", 2, np.random.default_rng(11), options=STRESS)
    g_r, r_i = C.SOLAR_COLOURS
    g = 7.0  # the stress table's severity 2
    mags = {"g": g, "r": g - g_r, "i": g - g_r - r_i}
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    used = 0
    for i in range(n):
        bands = [b for b in range(3) if out[i, b].any()]
        assert len(bands) == 1  # one visit of one band
        b = bands[0]
        e = out[i, b].astype(np.float64)
        w = e / e.sum()
        cx, cy = (w * xx).sum(), (w * yy).sum()
        cov = np.cov(np.stack([xx.ravel() - cx, yy.ravel() - cy]), aweights=w.ravel())
        u = np.linalg.eigh(cov)[1][:, -1]  # along the trail
        nrm = np.array([-u[1], u[0]])
        corners = [np.array([cx, cy]) + s * 40 * u + t * 20 * nrm for s in (-1, 1) for t in (-1, 1)]
        if not all(0 <= p[0] <= size - 1 and 0 <= p[1] <= size - 1 for p in corners):
            continue
        used += 1
        along = (xx - cx) * u[0] + (yy - cy) * u[1]
        across = (xx - cx) * nrm[0] + (yy - cy) * nrm[1]
        window = (np.abs(along) <= 40) & (np.abs(across) <= 20)
        measured = e[window].sum() / (80 * 0.2)  # electrons per arcsec of trail
        assert measured == pytest.approx(_orbital_line_density(mags[BANDS[b]], BANDS[b]), rel=0.05)
        # cross-track profile: FWHM about 3" (Tyson et al. 2020), from 0.5-pixel bins
        strip = np.abs(along) <= 40
        bins = np.arange(-20, 20.5, 0.5)
        prof = np.histogram(across[strip], bins, weights=e[strip])[0] / np.histogram(across[strip], bins)[0]
        centres = (bins[:-1] + bins[1:]) / 2
        above = centres[prof >= prof.max() / 2]
        fwhm = (above.max() - above.min() + 0.5) * 0.2
        assert 2.4 < fwhm < 3.8
    assert used >= 5


# --- misregistration ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("severity", [3, 5])
def test_misregistration_shifts_one_band_by_the_table_amount(severity):
    n, size = 20, 64
    yy, xx = np.mgrid[0:size, 0:size]
    blob = 1e4 * np.exp(-((xx - 31.5) ** 2 + (yy - 31.5) ** 2) / (2 * 3.0 ** 2))
    x = np.broadcast_to(blob, (n, 3, size, size)).astype(np.float32)
    out = corrupt(x, "misregistration", severity, np.random.default_rng(12), options=STRESS)
    for i in range(n):
        changed = [b for b in range(3) if not np.array_equal(out[i, b], x[i, b])]
        assert len(changed) == 1
        plane = out[i, changed[0]].astype(np.float64)
        dy, dx = np.array(scipy.ndimage.center_of_mass(plane)) - 31.5
        assert math.hypot(dx, dy) * 0.2 == pytest.approx({3: 0.05, 5: 0.2}[severity], rel=0.01)
        assert plane.sum() == pytest.approx(x[i, 0].sum(), rel=1e-5)
    noise = sky_noise(4, size=64)
    moved = corrupt(noise, "misregistration", 5, np.random.default_rng(13), options=STRESS)
    assert np.var(moved) == pytest.approx(np.var(noise), rel=0.01)  # a phase shift does not smooth the noise


# --- compression ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("severity", [1, 3, 5])
def test_compression_adds_the_quantisation_noise_of_step_sigma_over_q(severity):
    sigma = 300.0
    rng = np.random.default_rng(14)
    x = (rng.standard_normal((20, 3, 100, 100)) * sigma).astype(np.float32)
    x[:, :, 40:60, 40:60] += 2e4  # a galaxy does not change the tile's noise estimate much
    out = corrupt(x, "compression", severity, np.random.default_rng(15))
    err = out.astype(np.float64) - x
    step = sigma / C.COMPRESSION_Q[severity]
    assert err.var() == pytest.approx(step ** 2 / 12, rel=0.1)  # uniform error over one step (dithered)
    assert np.abs(err).max() <= 0.5 * step * 1.2
    assert abs(err.mean()) < 5 * math.sqrt(step ** 2 / 12 / err.size)  # no bias: flux conserved


# --- depth --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("severity", [1, 3, 5])
@pytest.mark.parametrize("domain,years", [("Y10", 10), ("Y1", 1)])
def test_depth_gives_the_noise_of_the_table_years(severity, domain, years):
    x = sky_noise(10, seed=5, years=years)
    source = 5.0 * sky(years)  # a bright flat source, with its own Poisson variance
    x[5:] = (source[None, :, None, None]
             + np.random.default_rng(6).standard_normal((5, 3, 100, 100)) * np.sqrt(sky(years) + source)[None, :, None, None])
    out = corrupt(x, "depth", severity, np.random.default_rng(16), domain=domain)
    target_years = C.DEPTH_FRACTION[severity] * years
    for b in range(3):
        # on the input's flux scale, a y-year co-add has (D / y) times the variance of a D-year one
        assert np.var(out[:5, b]) == pytest.approx(years / target_years * sky(years)[b], rel=0.03)
        assert np.var(out[5:, b]) == pytest.approx(years / target_years * (sky(years)[b] + source[b]), rel=0.03)
        assert out[:, b].mean(dtype=np.float64) == pytest.approx(x[:, b].mean(dtype=np.float64),
                                                                 abs=5 * math.sqrt(years / target_years * 6 * sky(years)[b] / x[:, b].size))


# --- the tables, pinned to docs/robustness.md ------------------------------------------------------------------
#: the values docs/robustness.md prints (written out here, not read from the module)
DOC_RUBIN = {
    "seeing": (0.735, 0.77, 0.805, 0.84, 0.91),
    "sky_error": (0.0001, 0.0002, 0.0005, 0.001, 0.002),
    "cosmic_rays": (0.005, 0.01, 0.02, 0.05, 0.1),
    "hot_pixels": (0.0005, 0.001, 0.002, 0.005, 0.01),
    "dead_pixels": (0.0005, 0.001, 0.002, 0.005, 0.01),
    "bad_columns": (0.05, 0.1, 0.2, 0.5, 1.0),
    "star_neighbour": (21.0, 20.0, 19.0, 18.0, 17.0),
    "bleed": (15.0, 14.5, 14.0, 13.5, 13.0),
    "satellite": (10.0, 9.5, 9.0, 8.5, 8.0),
    "misregistration": (0.005, 0.01, 0.02, 0.03, 0.05),
    "compression": (10.0, 4.0, 2.0, 1.0, 0.5),
    "depth": (0.9, 0.8, 0.7, 0.6, 0.5),
    "blend": (0.1, 0.2, 0.35, 0.5, 1.0),
    "psf_ellipticity": (0.01, 0.02, 0.04, 0.07, 0.1),
    "background_gradient": (0.0001, 0.0002, 0.0005, 0.001, 0.002),
    "correlated_noise": (0.3, 0.4, 0.5, 0.6, 0.8),
}
DOC_STRESS = {
    "seeing": (0.84, 0.98, 1.12, 1.26, 1.40),
    "sky_error": (0.0005, 0.001, 0.002, 0.005, 0.01),
    "cosmic_rays": (0.05, 0.1, 0.25, 0.5, 1.0),
    "hot_pixels": (0.0005, 0.001, 0.002, 0.005, 0.01),
    "dead_pixels": (0.0005, 0.001, 0.002, 0.005, 0.01),
    "bad_columns": (1.0, 2.0, 3.0, 4.0, 5.0),
    "star_neighbour": (15.5, 14.5, 13.5, 12.5, 11.5),
    "bleed": (13.0, 12.0, 11.0, 10.0, 9.0),
    "satellite": (8.0, 7.0, 6.1, 5.5, 4.5),
    "misregistration": (0.01, 0.02, 0.05, 0.1, 0.2),
    "compression": (4.0, 2.0, 1.0, 0.5, 0.25),
    "depth": (0.7, 0.5, 0.3, 0.2, 0.1),
    "blend": (0.5, 1.0, 2.0, 3.0, 5.0),
    "psf_ellipticity": (0.1, 0.15, 0.2, 0.25, 0.3),
    "background_gradient": (0.002, 0.005, 0.01, 0.02, 0.05),
    "correlated_noise": (0.8, 1.0, 1.2, 1.5, 2.0),
}


@pytest.mark.parametrize("tables,doc", [("rubin", DOC_RUBIN), ("stress", DOC_STRESS)])
def test_tables_are_the_documented_values(tables, doc):
    assert set(CORRUPTIONS) == set(doc)
    options = C.CorruptionOptions(tables)
    for name, values in doc.items():
        assert tuple(C.level(name, s, options) for s in range(1, 6)) == pytest.approx(values), name
    # and docs/robustness.md prints these numbers in the set's table
    text = (Path(__file__).resolve().parents[1] / "docs" / "robustness.md").read_text()
    heading = {"rubin": "### Rubin tables (default)", "stress": "### Stress tables (`--stress`)"}[tables]
    section = text[text.index(heading):].split("\n\n", 2)[1]
    rows = {line.split("|")[1].strip().strip("`"): [float(v) for v in line.split("|")[3:8]]
            for line in section.splitlines() if line.startswith("| `")}
    assert rows == {name: pytest.approx(list(values)) for name, values in doc.items()}


def test_sky_error_surface_brightness_column():
    # the docs' mag/arcsec^2 column: r sky 21.2 mag/arcsec^2; 0.01 % of it is 10 mag fainter
    assert C.sky_error_surface_brightness(1e-4, 21.2) == pytest.approx(31.2)
    assert C.sky_error_surface_brightness(2e-3, 21.2) == pytest.approx(21.2 + 2.5 * math.log10(500))


# --- each corruption's controlled quantity rises from severity 1 to 5 ---------------------------------------------
def _point_sources(size: int = 64, flux: float = 1e8) -> np.ndarray:
    return np.stack([survey_psf(b, ZENITH_FWHM[b]).drawImage(nx=size, ny=size, scale=0.2).array * flux
                     for b in BANDS])[None].astype(np.float32)


def _blob(n: int, size: int = 64, peak: float = 2e4, width: float = 4.0) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    blob = peak * np.exp(-((xx - (size - 1) / 2) ** 2 + (yy - (size - 1) / 2) ** 2) / (2 * width ** 2))
    return np.broadcast_to(blob, (n, 3, size, size)).astype(np.float32).copy()


def _lag1(a: np.ndarray) -> float:
    return float(np.corrcoef(a[..., :, 1:].ravel(), a[..., :, :-1].ravel())[0, 1])


def _quantity(name: str, severity: int) -> float:
    """The physical quantity corruption ``name`` controls, measured on its output at ``severity``
    (the same random stream for every severity: nested draws)."""
    rng = np.random.default_rng(100)
    if name == "seeing":
        out = corrupt(_point_sources(), name, severity, rng)
        return galsim.Image(np.ascontiguousarray(out[0, 1], np.float64), scale=0.2).calculateFWHM()
    if name == "psf_ellipticity":
        out = corrupt(_point_sources(), name, severity, rng)
        shape = galsim.Image(np.ascontiguousarray(out[0, 1], np.float64), scale=0.2).FindAdaptiveMom()
        return math.hypot(shape.observed_shape.e1, shape.observed_shape.e2)
    if name == "sky_error":
        x = np.zeros((20, 3, 16, 16), np.float32)
        return float(np.abs(corrupt(x, name, severity, rng).mean(axis=(2, 3))).mean())
    if name == "background_gradient":
        out = corrupt(np.zeros((10, 3, 64, 64), np.float32), name, severity, rng)
        return float(np.ptp(out, axis=(2, 3)).mean())
    if name in ("cosmic_rays", "hot_pixels", "star_neighbour", "satellite", "bleed"):
        out = corrupt(np.zeros((100, 3, 64, 64), np.float32), name, severity, rng,
                      options=C.CorruptionOptions() if name != "cosmic_rays" else STRESS)
        return float(out.astype(np.float64).sum())
    if name == "dead_pixels":
        x = np.full((50, 3, 32, 32), 1000.0, np.float32)
        return float((x - corrupt(x, name, severity, rng)).astype(np.float64).sum())
    if name == "bad_columns":
        x = sky_noise(100, size=32)
        return float(np.abs(corrupt(x, name, severity, rng) - x).astype(np.float64).sum())
    if name == "misregistration":
        x = _blob(20)
        out = corrupt(x, name, severity, rng)
        shifts = [np.hypot(*(np.array(scipy.ndimage.center_of_mass(out[i, b].astype(np.float64))) - 31.5))
                  for i in range(20) for b in range(3) if not np.array_equal(out[i, b], x[i, b])]
        return float(np.mean(shifts))
    if name == "correlated_noise":
        return _lag1(corrupt(sky_noise(8, size=64), name, severity, rng)[:, 1])
    if name == "compression":
        x = sky_noise(10, size=64)
        return float(np.var(corrupt(x, name, severity, rng).astype(np.float64) - x))
    if name == "depth":
        return float(np.var(corrupt(sky_noise(10, size=64), name, severity, rng)))
    if name == "blend":
        x = _blob(30, size=100)
        out = corrupt(x, name, severity, rng)
        return float(np.median((out[:, 1].sum(axis=(1, 2), dtype=np.float64) - x[:, 1].sum(axis=(1, 2), dtype=np.float64))
                               / x[:, 1].sum(axis=(1, 2), dtype=np.float64)))
    raise AssertionError(f"no quantity for {name}")


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_the_controlled_quantity_rises_with_severity(name):
    values = [_quantity(name, s) for s in (1, 2, 3, 4, 5)]
    assert all(b > a for a, b in zip(values, values[1:])), values


# --- defects under dithering and masking ---------------------------------------------------------------------------
@pytest.mark.parametrize("domain,years", [("Y10", 10), ("Y1", 1)])
def test_dithered_hot_pixels_follow_the_visit_count_and_rate(domain, years):
    n, f = 40, 0.01  # the Rubin table's severity 5: 1 % of the pixels hot per visit
    out = corrupt(np.zeros((n, 3, 100, 100), np.float32), "hot_pixels", 5, np.random.default_rng(21), domain)
    hit = out > 0
    mean_rate = (50.0 - 5.0) / math.log(10.0)  # mean of a log-uniform dark current on [5, 50] e-/s
    for b, band in enumerate(BANDS):
        n_visits = round(EXPOSURE_PER_YEAR[band] * years / 30.0)
        # a sky pixel is hit in at least one of its N visits with probability 1 - (1 - f)^N
        expected = 1.0 - scipy.stats.binom.pmf(0, n_visits, f)
        assert hit[:, b].mean() == pytest.approx(expected, abs=4 * math.sqrt(expected * (1 - expected) / hit[:, b].size) + 0.003)
        # the charge: N f visits' worth of dark current x 30 s per pixel on average
        assert out[:, b].mean(dtype=np.float64) == pytest.approx(n_visits * f * mean_rate * 30.0, rel=0.05)
        # a pixel hit in k visits holds at most k x 50 e-/s x 30 s (plus Poisson scatter)
        assert out[:, b].max() <= (scipy.stats.binom.ppf(1 - 1e-9, n_visits, f) * 50 * 30) * 1.5
    assert not np.array_equal(hit[:, 0], hit[:, 1])  # each band's visits land elsewhere


def test_masked_defects_are_interpolated_from_their_neighbours():
    n, size = 6, 40
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    plane = np.broadcast_to(3.0 * xx + 2.0 * yy + 100.0, (n, 3, size, size)).astype(np.float32).copy()
    masked = C.CorruptionOptions(defects="masked")
    for name in ("hot_pixels", "dead_pixels"):
        out = corrupt(plane, name, 5, np.random.default_rng(22), options=masked)
        changed = np.argwhere((out != plane).any(axis=1))
        # compare with the mean of the unmasked 8-neighbours, computed by a loop here
        mask = np.random.default_rng(22).random((n, size, size)) < 0.01
        assert len(np.argwhere(mask)) > 0
        for i, r, c in np.argwhere(mask):
            values = [plane[i, :, rr, cc] for rr in range(r - 1, r + 2) for cc in range(c - 1, c + 2)
                      if (rr, cc) != (r, c) and 0 <= rr < size and 0 <= cc < size and not mask[i, rr, cc]]
            assert np.allclose(out[i, :, r, c], np.mean(values, axis=0), rtol=1e-5), name
        assert {tuple(p) for p in changed} <= {tuple(p) for p in np.argwhere(mask)}  # nothing else changes
    cols = corrupt(plane, "bad_columns", 5, np.random.default_rng(23), options=C.CorruptionOptions("stress", "masked"))
    # a lone masked column of a linear plane is the mean of its left and right neighbours: the plane itself
    assert np.abs(cols - plane).max() < 1e-3 * plane.max() + 3.0 * 1.5  # only adjacent masked columns differ more


def test_dithered_dead_pixels_remove_one_visit_per_hit():
    n = 30
    x = np.full((n, 3, 50, 50), 2000.0, np.float32)
    out = corrupt(x, "dead_pixels", 5, np.random.default_rng(24))
    s = sky()
    for b, band in enumerate(BANDS):
        n_visits = round(EXPOSURE_PER_YEAR[band] * 10 / 30.0)
        lost = (x[:, b] - out[:, b]) / ((2000.0 + s[b]) / n_visits)  # visits lost per pixel
        assert np.allclose(lost, np.round(lost), atol=1e-2)  # whole visits
        assert lost.mean() == pytest.approx(n_visits * 0.01, rel=0.1)


def test_nested_draws_keep_the_positions_of_lower_severities():
    x = np.zeros((20, 3, 64, 64), np.float32)
    low = corrupt(x, "hot_pixels", 2, np.random.default_rng(5))
    high = corrupt(x, "hot_pixels", 5, np.random.default_rng(5))
    assert ((low > 0) <= (high > 0)).all() and (high > 0).sum() > (low > 0).sum()
    low = corrupt(x, "cosmic_rays", 2, np.random.default_rng(5), options=STRESS)
    high = corrupt(x, "cosmic_rays", 5, np.random.default_rng(5), options=STRESS)
    assert ((low > 0) <= (high > 0)).all() and (high > 0).sum() > (low > 0).sum()


# --- stars, blends, PSF, background, warping ---------------------------------------------------------------------------
def test_star_neighbour_keeps_its_distance_and_bleed_enters_from_outside():
    n = 40
    out = corrupt(np.zeros((n, 3, 100, 100), np.float32), "star_neighbour", 5, np.random.default_rng(30))
    for i in range(n):
        r, c = np.unravel_index(np.argmax(out[i, 1]), (100, 100))
        assert math.hypot(r - 49.5, c - 49.5) * 0.2 >= 4.0 - 0.15
    cap = visits() * C.FULL_WELL_E - sky()
    assert (out <= cap[None, :, None, None]).all()  # the Rubin table's stars do not saturate
    out = corrupt(np.zeros((n, 3, 100, 100), np.float32), "bleed", 3, np.random.default_rng(31))
    saturated = out[:, 1] >= cap[1] * (1 - 1e-6)
    touching = saturated.any(axis=(1, 2))
    assert touching.mean() > 0.5  # a r = 14 star's trail reaches 1-4" into the stamp
    for i in np.flatnonzero(touching):
        rows, cols = np.nonzero(saturated[i])
        assert np.ptp(cols) <= 6  # a trail along the columns of the star's core
        assert rows.min() == 0 or rows.max() == 99  # entering from the top or the bottom edge


def test_blend_adds_the_neighbour_and_keeps_the_primary():
    n = 20
    x = _blob(n, size=100, peak=3e4, width=5.0)
    neighbours = C.blend_neighbours(x, 4, np.random.default_rng(40))
    out = corrupt(x, "blend", 4, np.random.default_rng(40))
    # the flux in the stamp is the primary's plus the neighbour's (to the neighbour's Poisson noise)
    for i in range(n):
        for b in range(3):
            total = out[i, b].sum(dtype=np.float64)
            expected = x[i, b].sum(dtype=np.float64) + neighbours[i, b].sum()
            assert abs(total - expected) < 5 * math.sqrt(neighbours[i, b].sum()) + 1.0
        # the neighbour carries the table's flux ratio (0.5 at severity 4) of the primary in r, less what left the stamp
        ratio = neighbours[i, 1].sum() / x[i, 1].sum(dtype=np.float64)
        assert 0.3 < ratio <= 0.5 * (1 + 1e-6)
        # the primary is neither moved nor rescaled: its centre is the neighbour-free residual's
        residual = out[i, 1].astype(np.float64) - neighbours[i, 1]
        assert np.allclose(scipy.ndimage.center_of_mass(np.clip(residual[40:60, 40:60], 0, None)),
                           scipy.ndimage.center_of_mass(x[i, 1, 40:60, 40:60].astype(np.float64)), atol=0.3)
    offsets = [np.hypot(*(np.array(scipy.ndimage.center_of_mass(neighbours[i, 1])) - 49.5)) * 0.2 for i in range(n)]
    assert 1.0 < np.median(offsets) < 5.5  # 1.5-5" away


def test_psf_ellipticity_shears_the_psf_and_restores_the_noise():
    out = corrupt(_point_sources(), "psf_ellipticity", 4, np.random.default_rng(50))
    shape = galsim.Image(np.ascontiguousarray(out[0, 1], np.float64), scale=0.2).FindAdaptiveMom()
    # the r band's PSF distortion |e| = (a^2 - b^2) / (a^2 + b^2) is the table's 0.07
    assert math.hypot(shape.observed_shape.e1, shape.observed_shape.e2) == pytest.approx(0.07, abs=0.015)
    noise = corrupt(sky_noise(6, size=64), "psf_ellipticity", 5, np.random.default_rng(51))
    for b in range(3):
        assert np.var(noise[:, b]) == pytest.approx(sky()[b], rel=0.04)


def test_correlated_noise_keeps_the_variance_and_correlates_neighbours():
    x = sky_noise(8, size=64)
    out = corrupt(x, "correlated_noise", 3, np.random.default_rng(52))
    for b in range(3):
        assert np.var(out[:, b]) == pytest.approx(sky()[b], rel=0.05)
    # a Gaussian kernel of sigma 0.5 px correlates neighbours by exp(-1 / (4 sigma^2)) = e^-1
    assert _lag1(out[:, 1]) == pytest.approx(math.exp(-1.0), abs=0.05)
    assert abs(_lag1(x[:, 1])) < 0.03


def test_background_gradient_is_a_plane_of_the_table_amplitude():
    out = corrupt(np.zeros((10, 3, 64, 64), np.float32), "background_gradient", 3, np.random.default_rng(53))
    for i in range(10):
        for b in range(3):
            yy, xx = np.mgrid[0:64, 0:64]
            design = np.stack([np.ones(64 * 64), xx.ravel(), yy.ravel()], axis=1)
            coef, residual, *_ = np.linalg.lstsq(design, out[i, b].ravel().astype(np.float64), rcond=None)
            assert np.abs(out[i, b].ravel() - design @ coef).max() < 1e-3 * sky()[b]  # a plane (no source: no over-subtraction)
            assert np.ptp(out[i, b]) == pytest.approx(0.0005 * sky()[b], rel=1e-3)
    # around a bright source, the background mesh over-subtracts: the far pixels dip below zero on average
    x = _blob(10, size=64, peak=1e5)
    dip = corrupt(x, "background_gradient", 5, np.random.default_rng(54)) - x
    assert dip.mean() < 0


# --- small stamps: draws of one and offsets beyond the stamp -----------------------------------------------
@pytest.mark.parametrize("name", ["cosmic_rays", "blend"])
def test_small_stamps_with_single_draws_and_far_neighbours(name):
    """A 12x12 stamp draws zero or one cosmic ray per call (scipy's moyal then returns a scalar unless
    asked for a size) and puts most blend neighbours wholly outside the stamp; both must corrupt, keep
    the shape and never lower the flux they add to."""
    x = np.zeros((1, 3, 12, 12), np.float32)
    for seed in range(60):
        for severity in (1, 5):
            out = corrupt(x, name, severity, np.random.default_rng(seed), options=STRESS)
            assert out.shape == x.shape and out.dtype == np.float32
            assert np.all(np.isfinite(out))
    if name == "cosmic_rays":  # at least one of those calls drew exactly one ray and kept it
        hits = [np.count_nonzero(corrupt(x, name, 5, np.random.default_rng(s), options=STRESS)) for s in range(60)]
        assert any(h > 0 for h in hits)
