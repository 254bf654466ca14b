"""corruptions: each corruption's physical effect, measured on its output by code written here,
against its severity table; severity 0 is the identity; a seed fixes the output; bad input is refused."""

from __future__ import annotations

import math

import galsim
import numpy as np
import pytest
import scipy.ndimage

from deepadversaries import corruptions as C
from deepadversaries.corruptions import CORRUPTIONS, corrupt
from deepadversaries.errors import OptionError
from deepadversaries.survey import sky_level

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
    a = corrupt(x, name, 3, np.random.default_rng(7))
    b = corrupt(x, name, 3, np.random.default_rng(7))
    c = corrupt(x, name, 3, np.random.default_rng(8))
    assert np.array_equal(x, before), "the input was modified"
    assert a.dtype == np.float32 and a.shape == x.shape and np.isfinite(a).all()
    assert np.array_equal(a, b)
    assert not np.array_equal(a, x)
    assert not np.array_equal(a, c)
    # one image (3, H, W) is a batch of one
    assert np.array_equal(corrupt(x[0], name, 3, np.random.default_rng(7)), corrupt(x[:1], name, 3, np.random.default_rng(7))[0])


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
    k = C.seeing_kernel("r", 5)
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
    out = corrupt(np.zeros((n, 3, 100, 100), np.float32), "cosmic_rays", severity, np.random.default_rng(4), domain)
    counts = np.zeros(3)
    for _, b, _, count in _components(out):
        counts[b] += count
    area_cm2 = (100 * 10e-4) ** 2  # 100 x 100 pixels of 10 um
    expected = C.COSMIC_RAY_RATE_CM2_MIN / 60 * area_cm2 * 30.0 * visits(years) * C.COSMIC_RAY_SURVIVAL[severity] * n
    total, mean = counts.sum(), expected.sum()
    # Poisson scatter, plus up to 2 % of tracks merged where two cross
    assert abs(total - mean) < 4 * math.sqrt(mean) + 0.02 * mean, (total, mean)
    assert counts[0] < counts[1]  # g has 80 visits per 10 years, r 184


def test_cosmic_ray_charge_is_that_of_a_muon_crossing_the_sensor():
    out = corrupt(np.zeros((600, 3, 100, 100), np.float32), "cosmic_rays", 5, np.random.default_rng(5))
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
def test_hot_pixels_fraction_positions_and_dark_current():
    n = 50
    out = corrupt(np.zeros((n, 3, 100, 100), np.float32), "hot_pixels", 5, np.random.default_rng(6))
    t = exposure()
    hot = out > 0.5 * 5.0 * t[:, None, None]
    assert np.array_equal(hot[:, 0], hot[:, 1]) and np.array_equal(hot[:, 0], hot[:, 2])  # same pixels in every band
    assert np.array_equal(hot, out != 0)
    expected = C.HOT_PIXEL_FRACTION[5] * n * 100 * 100
    assert abs(hot[:, 0].sum() - expected) < 4 * math.sqrt(expected)
    rate = out[:, 1][hot[:, 1]] / t[1]  # e-/s in r
    assert rate.min() > 4.8 and rate.max() < 51
    ratio = out[:, 1][hot[:, 1]] / out[:, 0][hot[:, 0]]
    assert np.median(ratio) == pytest.approx(t[1] / t[0], rel=0.02)  # dark current x exposure


def test_dead_pixels_hold_minus_the_sky():
    n = 50
    x = sky_noise(n, seed=3)
    out = corrupt(x, "dead_pixels", 4, np.random.default_rng(7))
    dead = np.stack([out[:, b] == np.float32(-sky()[b]) for b in range(3)], axis=1)
    assert np.array_equal(dead[:, 0], dead[:, 1]) and np.array_equal(dead[:, 0], dead[:, 2])
    assert np.array_equal(out[~dead], x[~dead])  # nothing else changes
    expected = C.DEAD_PIXEL_FRACTION[4] * n * 100 * 100
    assert abs(dead[:, 0].sum() - expected) < 4 * math.sqrt(expected)


@pytest.mark.parametrize("severity", [1, 5])
def test_bad_columns_count_and_positions(severity):
    n = 60
    x = sky_noise(n, seed=4)
    out = corrupt(x, "bad_columns", severity, np.random.default_rng(8))
    s = sky()
    t = exposure()
    columns_hit = []
    for i in range(n):
        changed = (out[i] != x[i]).all(axis=1)  # (3, W): every pixel of the column changed
        assert np.array_equal(changed[0], changed[1]) and np.array_equal(changed[0], changed[2])
        cols = np.flatnonzero(changed[0])
        assert len(cols) == C.BAD_COLUMNS[severity]
        untouched = np.setdiff1d(np.arange(100), cols)
        assert np.array_equal(out[i][:, :, untouched], x[i][:, :, untouched])
        for c in cols:
            dead = np.all(out[i, :, :, c] == (-s[:, None]).astype(np.float32))
            bright = np.all(out[i, :, :, c] - x[i, :, :, c] > 0.9 * 5.0 * t[:, None])
            assert dead or bright
        columns_hit.extend(cols)
    assert 35 < np.mean(columns_hit) < 65  # anywhere across the stamp


# --- saturation ---------------------------------------------------------------------------------------------
def test_saturation_caps_at_the_full_well_and_bleeds_along_columns():
    n = 20
    out = corrupt(np.zeros((n, 3, 100, 100), np.float32), "saturation", 3, np.random.default_rng(9))
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


def test_saturation_conserves_the_star_flux():
    n = 40
    out = corrupt(np.zeros((n, 3, 100, 100), np.float32), "saturation", 2, np.random.default_rng(10))
    r_mag = C.SATURATION_STAR_R_MAG[2]
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
    out = corrupt(np.zeros((n, 3, size, size), np.float32), "satellite", 2, np.random.default_rng(11))
    g_r, r_i = C.SOLAR_COLOURS
    g = C.SATELLITE_G_MAG[2]
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
    out = corrupt(x, "misregistration", severity, np.random.default_rng(12))
    for i in range(n):
        changed = [b for b in range(3) if not np.array_equal(out[i, b], x[i, b])]
        assert len(changed) == 1
        plane = out[i, changed[0]].astype(np.float64)
        dy, dx = np.array(scipy.ndimage.center_of_mass(plane)) - 31.5
        assert math.hypot(dx, dy) * 0.2 == pytest.approx(C.MISREGISTRATION_ARCSEC[severity], rel=0.01)
        assert plane.sum() == pytest.approx(x[i, 0].sum(), rel=1e-5)
    noise = sky_noise(4, size=64)
    moved = corrupt(noise, "misregistration", 5, np.random.default_rng(13))
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
    target_years = C.DEPTH_YEARS[severity] * years / 10
    for b in range(3):
        # on the input's flux scale, a y-year co-add has (D / y) times the variance of a D-year one
        assert np.var(out[:5, b]) == pytest.approx(years / target_years * sky(years)[b], rel=0.03)
        assert np.var(out[5:, b]) == pytest.approx(years / target_years * (sky(years)[b] + source[b]), rel=0.03)
        assert out[:, b].mean(dtype=np.float64) == pytest.approx(x[:, b].mean(dtype=np.float64),
                                                                 abs=5 * math.sqrt(years / target_years * 6 * sky(years)[b] / x[:, b].size))
