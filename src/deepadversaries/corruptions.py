"""Survey-realistic corruptions of LSST-like co-adds: the table of the robustness benchmark.

Each corruption is a function ``f(electrons, severity, rng, domain, bands) -> electrons`` on raw
images (N, B, H, W) in electrons, bands g, r, i (or a subset, ``bands``), background-subtracted (the dataset
format, SPEC 3.6), applied *before* the stretch. Severity 1-5 picks a row of the
corruption's table (a module-level dict, ImageNet-C style); severity 0 is the identity
(:func:`corrupt` handles it). ``domain`` ("Y10" or "Y1") gives the depth of the input,
from which a corruption takes the sky level, exposure time and number of visits of each
band (:mod:`deepadversaries.survey`). docs/robustness.md has the table with sources.

The co-addition model
---------------------
A stored image is a co-add: the sum over the N visits of one band (N = exposure / 30 s:
Y10 g 80, r and i 184; Y1 g 8, r and i 18.4) of each visit's electrons, minus the sky
B = N x (sky per visit). A pixel's noise variance is B + S (sky plus source, Poisson).
In this sum a single-visit defect of E electrons that survives outlier rejection adds
E electrons (the mean co-add gets E / N, and the stored co-add is N times the mean); it
is diluted *relative to the sky noise*, sqrt(B) grows as sqrt(N), so an E-electron
defect that is k sigma in one visit is k / sqrt(N) sigma in the co-add. A defect present
in every visit at the same sky pixel adds N x E. Which of the two a corruption is, and
which fraction survives masking / outlier rejection, is stated per corruption:

- **seeing**: the whole co-add was taken in worse seeing. Our datasets hold no scene per
  galaxy, so the image is not re-rendered; it is convolved with the matching kernel K,
  PSF_new = PSF_old (x) K. The atmospheric PSF is Kolmogorov, whose transfer function is
  exp(-c FWHM^(5/3) k^(5/3)); so K is itself Kolmogorov with FWHM_K^(5/3) =
  FWHM_new^(5/3) - FWHM_old^(5/3) (the optics, Airy, are unchanged). Convolution also
  smooths the noise (per-pixel variance x sum K^2), so Gaussian noise of variance
  (B + max(S, 0)) (1 - sum K^2) is added and the per-pixel variance is the survey's
  again. What remains different from a true re-rendering is that part of the noise is
  correlated over the kernel's scale.
- **sky_error**: the co-add's sky model is off by +-f B (sign random per image and band;
  + is under-subtraction). Deterministic: exactly +-f B is added to every pixel.
- **cosmic_rays**: per-visit events at random (dithered) positions, muon tracks through
  the 100-um sensor; a fraction (the severity) survives the per-visit repair and the
  co-add's outlier rejection and adds its full charge to the co-add sum.
- **hot_pixels**, **dead_pixels**, **bad_columns**: detector defects missed by the
  defect mask, at the same sky pixel in every visit of every band (a stack without
  dither between visits: the worst case; with LSST's dithers each visit's defect would
  land elsewhere, like a cosmic ray). Hot: dark current D e-/s adds Poisson(D x T) over the
  band's total exposure T. Dead (zero response): collects nothing, so after the sky is
  subtracted it holds exactly -B. Bad column: a whole column of the stamp dead or bright.
- **saturation**: a bright star (fixed on the sky, so in every visit) at a random pixel;
  each visit's pixels above the full well (100,000 e-) spill their excess charge up and
  down the column (charge conserved; what leaves the stamp is lost), and the co-add is N
  identical visits. No co-add pixel exceeds N x full well - B.
- **satellite**: one visit of one band (uniform) holds a LEO-satellite trail that
  survived masking: a satellite at 550 km crossing the stamp in milliseconds, out of
  focus (the pupil annulus at 550 km, about 3" wide, blurred by the seeing).
- **misregistration**: one band (uniform) of the co-add is shifted by a sub-pixel
  amount in a random direction (a WCS / differential-refraction error), by a Fourier
  phase shift: flux and noise variance are preserved exactly (a spline shift would
  smooth the noise).
- **compression**: the co-add went through fpack-style tile compression (FITS tiled
  image convention, RICE_1 with floating-point quantisation, SUBTRACTIVE_DITHER_1,
  step = sigma / q with sigma the tile's noise estimate) by astropy/CFITSIO itself; one
  tile per band of a stamp.
- **depth**: the co-add is shallower: y years instead of the input's D. The output stays
  on the input's flux scale (a photometrically calibrated co-add), so noise of variance
  (D / y - 1) (B + max(S, 0)) is added. For a Y10 input the table's years are used; for
  another depth D, the same fractions of D. Stretched with the Y10 constants, a Y1-depth
  image looks as the paper's Y1 images stretched with their own constants (their stretch
  constants are about a tenth of Y10's).

Determinism: the output depends only on the input, the severity, the domain and the
state of ``rng`` (a ``numpy.random.Generator``); randomness is drawn in a fixed order
per call, so one ``numpy.random.default_rng(seed)`` gives the same corrupted images for
every model (paired comparison). Inputs are never modified; outputs are float32.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import warnings
from collections.abc import Callable, Sequence

import galsim
import numpy as np
import scipy.fft
import scipy.ndimage
import scipy.stats

from .errors import OptionError, check_choice
from .survey import (
    BAND_SPECS,
    BANDS,
    DEPTHS,
    MIRROR_DIAMETER,
    OBSCURATION,
    PIXEL_SCALE,
    VISIT_S,
    exposure_time,
    psf,
    sky_level,
)

#: the severities of every table; 0 (the identity) is handled by :func:`corrupt`
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
MAX_SEVERITY = 5

# --- detector and site constants (sources in docs/robustness.md) -------------------------
#: LSST CCD pixel pitch, um (10 um = 0.2"; LSST camera focal-plane requirements)
PIXEL_SIZE_UM = 10.0
#: thickness of the fully depleted LSST sensors, um (camera requirement "> 100 um")
SENSOR_THICKNESS_UM = 100.0
#: full well per pixel, e- (LSST sensors are specified for >= 90 ke- and measured linear to
#: 100 ke-, Baumer & Roodman 2015; the issue's ~100,000 e-)
FULL_WELL_E = 100_000.0
#: cosmic-ray events per cm^2 per minute at the site. ASSUMPTION: the sea-level muon flux
#: through a horizontal detector, ~1 cm^-2 min^-1 (PDG Review of Particle Physics, "Cosmic
#: rays"), doubled for the 2.7 km altitude of Cerro Pachon and non-muon events (Groom 2004)
COSMIC_RAY_RATE_CM2_MIN = 2.0
#: most probable charge a minimum-ionising particle frees in silicon, e- per um of path
#: (most probable loss ~0.27 keV/um for ~100 um of Si, PDG "Passage of particles through
#: matter", at 3.62 eV per electron-hole pair)
COSMIC_RAY_MPV_E_PER_UM = 75.0
#: Landau width xi = 0.1535 MeV cm^2/g x Z/A (0.4985) x rho (2.329 g/cm^3) per um of Si,
#: 17.8 eV/um = 4.9 e-/um (PDG); the Moyal distribution stands in for the Landau
COSMIC_RAY_XI_E_PER_UM = 4.9
#: hot-pixel dark current, e-/s: from the bright-pixel threshold of the LSST sensor tests
#: (eotest BrightPixelsTask, 5 e-/pixel/s) to ten times it (the upper end is an ASSUMPTION)
HOT_PIXEL_RATE_E_S = (5.0, 50.0)
#: LEO satellite altitude, km (the Starlink shell of Tyson et al. 2020)
SATELLITE_ALTITUDE_KM = 550.0
EARTH_GM_KM3_S2 = 398_600.4418
EARTH_RADIUS_KM = 6_371.0
#: solar colours (g - r, r - i) of reflected sunlight and of the saturating star. ASSUMPTION:
#: approximately the Sun's AB colours in SDSS-like bands (Willmer 2018)
SOLAR_COLOURS = (0.45, 0.12)

# --- severity tables (severity -> parameter) ----------------------------------------------
#: seeing: zenith atmospheric FWHM in r, arcsec (survey median 0.70"; x1.2 ... x2.0). Every band
#: is scaled by the same factor over its own zenith FWHM; airmass 1.2 as the survey.
SEEING_FWHM_R: dict[int, float] = {1: 0.84, 2: 0.98, 3: 1.12, 4: 1.26, 5: 1.40}
#: sky-subtraction error: fraction of the co-add's sky level B (ASSUMPTION: no LSST
#: requirement states it; 0.05 % to 1 % of the sky)
SKY_ERROR_FRACTION: dict[int, float] = {1: 0.0005, 2: 0.001, 3: 0.002, 4: 0.005, 5: 0.01}
#: cosmic rays: fraction of the per-visit tracks that survive repair and outlier rejection
#: (ASSUMPTION: 5 %, a working pipeline, to 100 %, a plain sum without rejection)
COSMIC_RAY_SURVIVAL: dict[int, float] = {1: 0.05, 2: 0.1, 3: 0.25, 4: 0.5, 5: 1.0}
#: hot pixels: fraction of the stamp's pixels (up to 1 %, the OSS PixFrac ceiling on unusable
#: pixels per sensor, all of them unmasked at severity 5)
HOT_PIXEL_FRACTION: dict[int, float] = {1: 0.0005, 2: 0.001, 3: 0.002, 4: 0.005, 5: 0.01}
#: dead pixels: fraction of the stamp's pixels (as hot pixels)
DEAD_PIXEL_FRACTION: dict[int, float] = {1: 0.0005, 2: 0.001, 3: 0.002, 4: 0.005, 5: 0.01}
#: bad columns: number of dead or bright columns in the stamp (given that the stamp is hit)
BAD_COLUMNS: dict[int, int] = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5}
#: saturation: r magnitude of the star. A 30-s visit of this survey model saturates at r = 15.96
#: (g 16.04, i 15.72) for a star centred on a pixel (Ivezic et al. 2019 quote r ~ 16 for LSST);
#: each step is one magnitude brighter (2.5x the charge to bleed)
SATURATION_STAR_R_MAG: dict[int, float] = {1: 15.5, 2: 14.5, 3: 13.5, 4: 12.5, 5: 11.5}
#: satellite: g magnitude (Tyson et al. 2020: darkening goal g ~ 7, DarkSat 6.1, original
#: Starlink v0.9 4.5; 8 and 5.5 interpolate)
SATELLITE_G_MAG: dict[int, float] = {1: 8.0, 2: 7.0, 3: 6.1, 4: 5.5, 5: 4.5}
#: misregistration: shift of one band, arcsec (LSST SRD relative astrometry ~10 mas; up to the
#: size of uncorrected differential chromatic refraction, ~0.2")
MISREGISTRATION_ARCSEC: dict[int, float] = {1: 0.01, 2: 0.02, 3: 0.05, 4: 0.1, 5: 0.2}
#: compression: fpack quantisation level q, step = noise / q (Pence et al. 2009, 2010: q = 4 is
#: fpack's default and loses almost nothing; smaller q compresses more and loses more)
COMPRESSION_Q: dict[int, float] = {1: 4.0, 2: 2.0, 3: 1.0, 4: 0.5, 5: 0.25}
#: depth: years of survey for a Y10 input (the Y10 -> Y1 continuum of the paper)
DEPTH_YEARS: dict[int, float] = {1: 7.0, 2: 5.0, 3: 3.0, 4: 2.0, 5: 1.0}


def _as_batch(electrons: np.ndarray) -> np.ndarray:
    """A float32 copy to corrupt (the output's type; corruptions compute in float64 where it matters)."""
    return np.array(electrons, dtype=np.float32, copy=True)


def _years(domain: str) -> float:
    return float(DEPTHS[domain])


def band_sky(domain: str, bands: Sequence[str] = BANDS) -> np.ndarray:
    """Sky electrons per pixel B of each band (g, r, i, or ``bands``) at the depth of ``domain``, (B,)."""
    years = _years(domain)
    return np.array([sky_level(b, years) for b in bands])


def band_exposure(domain: str, bands: Sequence[str] = BANDS) -> np.ndarray:
    """Total exposure (s) of each band (g, r, i, or ``bands``) at the depth of ``domain``, (B,)."""
    years = _years(domain)
    return np.array([exposure_time(b, years) for b in bands])


def band_visits(domain: str, bands: Sequence[str] = BANDS) -> np.ndarray:
    """Number of 30-s visits N of each band at the depth of ``domain`` (fractional), (B,)."""
    return band_exposure(domain, bands) / VISIT_S


def _flux_rate(magnitude: float, band: str) -> float:
    """Electrons per second from a source of AB ``magnitude`` in ``band`` (survey zero point)."""
    return BAND_SPECS[band].zero_point * 10.0 ** (-0.4 * (magnitude - 24.0))


def _solar_magnitudes(reference: float, reference_band: str) -> dict[str, float]:
    """Per-band magnitudes of a source with solar colours, given one band's magnitude."""
    g_r, r_i = SOLAR_COLOURS
    r = {"g": reference - g_r, "r": reference, "i": reference + r_i}[reference_band]
    return {"g": r + g_r, "r": r, "i": r - r_i}


# --- seeing -------------------------------------------------------------------------------
def seeing_kernel_fwhm(band: str, severity: int) -> float:
    """FWHM (arcsec) of the Kolmogorov kernel K that turns the survey PSF of ``band`` into the
    one of ``severity``: FWHM_K^(5/3) = FWHM_new^(5/3) - FWHM_old^(5/3)."""
    spec = BAND_SPECS[band]
    old = spec.atmospheric_fwhm
    new = old * SEEING_FWHM_R[severity] / BAND_SPECS["r"].zenith_psf_fwhm
    return float((new ** (5 / 3) - old ** (5 / 3)) ** 0.6)


@functools.cache
def seeing_kernel(band: str, severity: int) -> np.ndarray:
    """The matching kernel K of ``band`` at ``severity``: a Kolmogorov profile sampled at the
    pixel centres (no pixel response: the image already has it), out to 4 FWHM (99 % of its
    flux), normalised to sum 1.

    Returns:
        (n, n) float64, n odd.
    """
    fwhm = seeing_kernel_fwhm(band, severity)
    n = 2 * math.ceil(4.0 * fwhm / PIXEL_SCALE) + 1
    kernel = galsim.Kolmogorov(fwhm=fwhm).drawImage(nx=n, ny=n, scale=PIXEL_SCALE, method="no_pixel").array
    kernel = np.asarray(kernel, dtype=np.float64)
    kernel.flags.writeable = False
    return kernel / kernel.sum()


def _convolve(planes: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Convolve (N, H, W) planes with an odd (n, n) kernel, mirror-padded at the edges ('same' size).

    The planes are mirror-padded by n // 2 and convolved circularly by FFT on a grid at least
    that large, which touches no wrapped pixel inside the original footprint. Single precision
    (relative error ~1e-7 of the image's range, far below its noise); returns float32.
    """
    p = kernel.shape[0] // 2
    _, h, w = planes.shape
    shape = (scipy.fft.next_fast_len(h + 2 * p, real=True), scipy.fft.next_fast_len(w + 2 * p, real=True))
    padded = np.pad(planes.astype(np.float32, copy=False), ((0, 0), (p, p), (p, p)), mode="reflect")
    wrapped = np.zeros(shape, dtype=np.float32)
    wrapped[: p + 1, : p + 1] = kernel[p:, p:]
    wrapped[: p + 1, -p:] = kernel[p:, :p]
    wrapped[-p:, : p + 1] = kernel[:p, p:]
    wrapped[-p:, -p:] = kernel[:p, :p]
    product = scipy.fft.rfft2(padded, s=shape) * scipy.fft.rfft2(wrapped)[None]
    return scipy.fft.irfft2(product, s=shape)[:, p:p + h, p:p + w]


def seeing(electrons: np.ndarray, severity: int, rng: np.random.Generator, domain: str = "Y10",
           bands: Sequence[str] = BANDS) -> np.ndarray:
    """Worse seeing: convolve with the matching Kolmogorov kernel, then restore the noise level.

    Args:
        electrons: (N, B, H, W) background-subtracted co-add electrons.
        severity: 1-5; the r-band zenith FWHM of :data:`SEEING_FWHM_R` (arcsec), every band
            scaled by the same factor.
        rng: the random stream of the restored noise.
        domain: depth of the input, "Y10" or "Y1" [default: "Y10"]; gives the sky level B.
        bands: the LSST bands of the channels [default: g, r, i].

    Returns:
        (N, B, H, W) float32 electrons: flux conserved; per-pixel variance B + S again, part of
        it correlated.
    """
    x = _as_batch(electrons)
    sky = band_sky(domain, bands)
    out = np.empty_like(x)
    for b, band in enumerate(bands):
        kernel = seeing_kernel(band, severity)
        smooth = _convolve(x[:, b], kernel)
        variance = (np.float32(sky[b]) + np.clip(smooth, 0.0, None)) * np.float32(1.0 - np.sum(kernel ** 2))
        out[:, b] = smooth + rng.standard_normal(smooth.shape, dtype=np.float32) * np.sqrt(variance)
    return out


# --- sky-subtraction error ------------------------------------------------------------------
def sky_error(electrons: np.ndarray, severity: int, rng: np.random.Generator, domain: str = "Y10",
              bands: Sequence[str] = BANDS) -> np.ndarray:
    """A sky-subtraction error of +-f B, f = :data:`SKY_ERROR_FRACTION`; sign random per image and band.

    Args:
        electrons: (N, B, H, W) co-add electrons.
        severity: 1-5.
        rng: draws the signs, (N, B).
        domain: depth of the input [default: "Y10"].
        bands: the LSST bands of the channels [default: g, r, i].

    Returns:
        (N, B, H, W) float32: each band of each image shifted by exactly +f B or -f B.
    """
    x = _as_batch(electrons)
    signs = rng.choice(np.array([-1.0, 1.0]), size=x.shape[:2])
    x += (signs * SKY_ERROR_FRACTION[severity] * band_sky(domain, bands)[None, :])[:, :, None, None]
    return x


# --- cosmic rays ----------------------------------------------------------------------------
def cosmic_ray_rate(height: int, width: int, domain: str = "Y10", bands: Sequence[str] = BANDS) -> np.ndarray:
    """Expected cosmic-ray tracks per stamp *before* rejection, per band (B,):
    rate x stamp area (cm^2) x 30 s x N visits."""
    area_cm2 = height * width * (PIXEL_SIZE_UM * 1e-4) ** 2
    return COSMIC_RAY_RATE_CM2_MIN / 60.0 * area_cm2 * VISIT_S * band_visits(domain, bands)


def cosmic_rays(electrons: np.ndarray, severity: int, rng: np.random.Generator, domain: str = "Y10",
                bands: Sequence[str] = BANDS) -> np.ndarray:
    """Muon tracks that survived co-addition, each adding its full charge to the co-add.

    Per image and band, Poisson(:func:`cosmic_ray_rate` x survival) tracks, survival =
    :data:`COSMIC_RAY_SURVIVAL`. Each track: centre uniform in the stamp, azimuth uniform,
    zenith angle theta with cos(theta) ~ p(u) = 4 u^3 (flux per solid angle ~ cos^2 theta on a
    horizontal sensor), projected length 100 um x tan(theta) / 10 um pixels (capped at twice the
    stamp), charge Moyal(MPV 75 e-/um, width 4.9 e-/um) x path 100 um / cos(theta), shared
    along the track in steps of at most 1/4 pixel (no charge diffusion).

    Args:
        electrons: (N, B, H, W) co-add electrons.
        severity: 1-5.
        rng: the random stream.
        domain: depth of the input (number of visits) [default: "Y10"].
        bands: the LSST bands of the channels [default: g, r, i].

    Returns:
        (N, B, H, W) float32 electrons.
    """
    x = _as_batch(electrons)
    n, _, h, w = x.shape
    lam = cosmic_ray_rate(h, w, domain, bands) * COSMIC_RAY_SURVIVAL[severity]
    counts = rng.poisson(np.broadcast_to(lam, (n, len(bands))))
    total = int(counts.sum())
    if total == 0:
        return x
    image = np.repeat(np.repeat(np.arange(n), len(bands)), counts.ravel())
    band = np.repeat(np.tile(np.arange(len(bands)), n), counts.ravel())
    cx = rng.uniform(-0.5, w - 0.5, total)
    cy = rng.uniform(-0.5, h - 0.5, total)
    phi = rng.uniform(0.0, 2.0 * np.pi, total)
    cos_theta = np.clip(rng.uniform(0.0, 1.0, total) ** 0.25, 1e-3, 1.0)
    tan_theta = np.sqrt(1.0 - cos_theta ** 2) / cos_theta
    length = np.minimum(SENSOR_THICKNESS_UM * tan_theta / PIXEL_SIZE_UM, 2.0 * max(h, w))
    path_um = SENSOR_THICKNESS_UM / cos_theta
    charge = scipy.stats.moyal.rvs(loc=COSMIC_RAY_MPV_E_PER_UM * path_um, scale=COSMIC_RAY_XI_E_PER_UM * path_um,
                                   random_state=rng)
    charge = np.clip(charge, 0.0, None)
    steps = np.ceil(4.0 * length).astype(np.int64) + 1
    track = np.repeat(np.arange(total), steps)
    first = np.cumsum(steps) - steps
    k = np.arange(len(track)) - np.repeat(first, steps)
    t = np.where(steps[track] > 1, k / np.maximum(steps[track] - 1, 1) - 0.5, 0.0)
    px = cx[track] + t * length[track] * np.cos(phi[track])
    py = cy[track] + t * length[track] * np.sin(phi[track])
    ix = np.floor(px + 0.5).astype(np.int64)
    iy = np.floor(py + 0.5).astype(np.int64)
    inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    track = track[inside]
    np.add.at(x, (image[track], band[track], iy[inside], ix[inside]), (charge / steps)[track])
    return x


# --- detector defects -------------------------------------------------------------------------
def _defect_mask(rng: np.random.Generator, shape: tuple[int, int, int], fraction: float) -> np.ndarray:
    """Boolean (N, H, W): each pixel a defect with probability ``fraction`` (same in every band)."""
    return rng.random(shape) < fraction


def _hot_rates(rng: np.random.Generator, size: int) -> np.ndarray:
    """Dark currents (e-/s) log-uniform over :data:`HOT_PIXEL_RATE_E_S`."""
    lo, hi = HOT_PIXEL_RATE_E_S
    return lo * (hi / lo) ** rng.uniform(0.0, 1.0, size)


def hot_pixels(electrons: np.ndarray, severity: int, rng: np.random.Generator, domain: str = "Y10",
               bands: Sequence[str] = BANDS) -> np.ndarray:
    """Hot pixels missed by the defect mask and the dark model: + Poisson(D x T) in every band.

    A fraction :data:`HOT_PIXEL_FRACTION` of the pixels (the same pixels in all bands: a
    detector defect, no dither), dark current D log-uniform in :data:`HOT_PIXEL_RATE_E_S`,
    T the band's total exposure at the domain's depth.

    Args:
        electrons: (N, B, H, W) background-subtracted co-add electrons (g, r, i).
        severity: 1-5, a row of the table.
        rng: the random stream (draws in a fixed order).
        domain: depth of the input, "Y10" or "Y1" [default: "Y10"].
        bands: the LSST bands of the channels [default: g, r, i].

    Returns:
        (N, B, H, W) float32 electrons.
    """
    x = _as_batch(electrons)
    n, _, h, w = x.shape
    mask = _defect_mask(rng, (n, h, w), HOT_PIXEL_FRACTION[severity])
    img, row, col = np.nonzero(mask)
    rates = _hot_rates(rng, len(img))
    for b, t in enumerate(band_exposure(domain, bands)):
        x[img, b, row, col] += rng.poisson(rates * t)
    return x


def dead_pixels(electrons: np.ndarray, severity: int, rng: np.random.Generator, domain: str = "Y10",
                bands: Sequence[str] = BANDS) -> np.ndarray:
    """Dead (zero-response) pixels missed by the defect mask: exactly -B in every band.

    A fraction :data:`DEAD_PIXEL_FRACTION` of the pixels, the same in all bands; such a pixel
    collects neither source nor sky, so once the sky B is subtracted it holds -B, noiseless.

    Args:
        electrons: (N, B, H, W) background-subtracted co-add electrons (g, r, i).
        severity: 1-5, a row of the table.
        rng: the random stream (draws in a fixed order).
        domain: depth of the input, "Y10" or "Y1" [default: "Y10"].
        bands: the LSST bands of the channels [default: g, r, i].

    Returns:
        (N, B, H, W) float32 electrons.
    """
    x = _as_batch(electrons)
    n, _, h, w = x.shape
    mask = _defect_mask(rng, (n, h, w), DEAD_PIXEL_FRACTION[severity])
    img, row, col = np.nonzero(mask)
    for b, sky in enumerate(band_sky(domain, bands)):
        x[img, b, row, col] = -sky
    return x


def bad_columns(electrons: np.ndarray, severity: int, rng: np.random.Generator, domain: str = "Y10",
                bands: Sequence[str] = BANDS) -> np.ndarray:
    """Whole bad columns: :data:`BAD_COLUMNS` distinct columns per image, each dead or bright.

    Dead (probability 1/2; a charge trap blocks the column): every pixel -B. Bright: every
    pixel + Poisson(D x T), D log-uniform in :data:`HOT_PIXEL_RATE_E_S` per column (eotest's
    bright-column rule: >= 20 pixels above 5 e-/s). Same columns in all bands.

    Args:
        electrons: (N, B, H, W) background-subtracted co-add electrons (g, r, i).
        severity: 1-5, a row of the table.
        rng: the random stream (draws in a fixed order).
        domain: depth of the input, "Y10" or "Y1" [default: "Y10"].
        bands: the LSST bands of the channels [default: g, r, i].

    Returns:
        (N, B, H, W) float32 electrons.
    """
    x = _as_batch(electrons)
    n, _, h, w = x.shape
    k = min(BAD_COLUMNS[severity], w)
    columns = np.argsort(rng.random((n, w)), axis=1)[:, :k]
    dead = rng.random((n, k)) < 0.5
    rates = _hot_rates(rng, n * k).reshape(n, k)
    sky = band_sky(domain, bands)
    exposure = band_exposure(domain, bands)
    img = np.repeat(np.arange(n), k)
    col = columns.ravel()
    is_dead = dead.ravel()
    for b in range(len(bands)):
        bright = rng.poisson(np.repeat((rates.ravel() * exposure[b])[:, None], h, axis=1))  # (n k, h)
        values = np.where(is_dead[:, None], -sky[b], x[img, b, :, col] + bright)
        x[img, b, :, col] = values
    return x


# --- saturation ------------------------------------------------------------------------------------
@functools.cache
def _psf_stamp(band: str, height: int, width: int) -> np.ndarray:
    """The survey PSF of ``band`` (with the pixel), unit flux, centred in a (2H+1, 2W+1) image."""
    image = psf(band).drawImage(nx=2 * width + 1, ny=2 * height + 1, scale=PIXEL_SCALE)
    arr = np.asarray(image.array, dtype=np.float64)
    arr = arr / arr.sum()
    arr.flags.writeable = False
    return arr


def bleed(per_visit: np.ndarray, full_well: float = FULL_WELL_E) -> np.ndarray:
    """Blooming along columns: charge above ``full_well`` spills half up, half down the column.

    Each pixel keeps at most ``full_well``; the excess travels along its column (axis -2),
    filling the first pixels with room; charge carried past the edge of the array is lost.

    Args:
        per_visit: (..., H, W) electrons of one exposure.
        full_well: capacity of a pixel, electrons [default: :data:`FULL_WELL_E`].

    Returns:
        (..., H, W) float64, every pixel <= ``full_well``, charge conserved inside the array.
    """
    v = np.array(per_visit, dtype=np.float64, copy=True)
    half = np.clip(v - full_well, 0.0, None) / 2.0
    np.minimum(v, full_well, out=v)
    h = v.shape[-2]
    for order in (range(h), range(h - 1, -1, -1)):  # up the column, then down
        carry = np.zeros(v.shape[:-2] + v.shape[-1:])
        for i in order:
            row = v[..., i, :]
            fill = np.minimum(carry, full_well - row)
            row += fill
            carry += half[..., i, :] - fill
    return v


def saturation(electrons: np.ndarray, severity: int, rng: np.random.Generator, domain: str = "Y10",
               bands: Sequence[str] = BANDS) -> np.ndarray:
    """A bright star that saturates: full well per visit and bleed trails along the columns.

    The star (r magnitude :data:`SATURATION_STAR_R_MAG`, solar colours) sits on a random pixel
    centre; its co-add electrons S get Poisson noise in the Gaussian approximation (variance S;
    exact enough where S matters, and elsewhere the sky noise dominates); each of the N identical visits
    ((co-add + B) / N) bleeds at the full well (:func:`bleed`); the co-add is N x visit - B.

    Args:
        electrons: (N, B, H, W) background-subtracted co-add electrons (g, r, i).
        severity: 1-5, a row of the table.
        rng: the random stream (draws in a fixed order).
        domain: depth of the input, "Y10" or "Y1" [default: "Y10"].
        bands: the LSST bands of the channels [default: g, r, i].

    Returns:
        (N, B, H, W) float32 electrons, no pixel above N x full well - B.
    """
    x = _as_batch(electrons)
    n, _, h, w = x.shape
    y0 = rng.integers(0, h, n)
    x0 = rng.integers(0, w, n)
    rows = (h - y0)[:, None] + np.arange(h)[None, :]
    cols = (w - x0)[:, None] + np.arange(w)[None, :]
    mags = _solar_magnitudes(SATURATION_STAR_R_MAG[severity], "r")
    years = _years(domain)
    sky = band_sky(domain, bands)
    visits = band_visits(domain, bands)
    for b, band in enumerate(bands):
        stamp = _psf_stamp(band, h, w)
        star = stamp[rows[:, :, None], cols[:, None, :]] * (_flux_rate(mags[band], band) * exposure_time(band, years))
        noisy = star + np.sqrt(star) * rng.standard_normal(star.shape, dtype=np.float32)
        per_visit = (x[:, b] + sky[b] + noisy) / visits[b]
        x[:, b] = bleed(per_visit) * visits[b] - sky[b]
    return x


# --- satellite trail -----------------------------------------------------------------------------------
def satellite_angular_speed() -> float:
    """Angular speed (arcsec/s) of a circular-orbit satellite at :data:`SATELLITE_ALTITUDE_KM`
    seen at the zenith: sqrt(GM / (R + h)) / h."""
    speed = math.sqrt(EARTH_GM_KM3_S2 / (EARTH_RADIUS_KM + SATELLITE_ALTITUDE_KM))
    return speed / SATELLITE_ALTITUDE_KM * 180.0 / math.pi * 3600.0


def satellite_line_density(magnitude: float, band: str) -> float:
    """Electrons per arcsec of trail length left in one visit by a satellite of ``magnitude``
    in ``band``: flux rate / angular speed."""
    return _flux_rate(magnitude, band) / satellite_angular_speed()


@functools.cache
def satellite_profile(band: str) -> tuple[np.ndarray, np.ndarray]:
    """Cross-track profile of a trail (1/arcsec, unit integral) on a grid of distances (arcsec).

    The out-of-focus image of a satellite at 550 km is the pupil annulus (outer radius
    (D / 2) / h, inner radius x obscuration) swept along the track: chord length of the
    annulus at distance d; then blurred by the band's seeing (a Gaussian of the atmospheric
    FWHM).

    Returns:
        (distances, profile), both (M,) float64.
    """
    r_out = MIRROR_DIAMETER / 2.0 / (SATELLITE_ALTITUDE_KM * 1e3) * 180.0 / math.pi * 3600.0
    r_in = OBSCURATION * r_out
    step = 0.005
    d = np.arange(-4.0 * r_out, 4.0 * r_out + step / 2, step)
    chord = 2.0 * (np.sqrt(np.clip(r_out ** 2 - d ** 2, 0.0, None)) - np.sqrt(np.clip(r_in ** 2 - d ** 2, 0.0, None)))
    sigma = BAND_SPECS[band].atmospheric_fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    profile = scipy.ndimage.gaussian_filter1d(chord, sigma / step, mode="constant")
    profile /= profile.sum() * step
    d.flags.writeable = False
    profile.flags.writeable = False
    return d, profile


def satellite(electrons: np.ndarray, severity: int, rng: np.random.Generator, domain: str = "Y10",
              bands: Sequence[str] = BANDS) -> np.ndarray:
    """A satellite trail that survived masking, in one visit of one band (uniform).

    Line density :func:`satellite_line_density` (g magnitude :data:`SATELLITE_G_MAG`, solar
    colours), profile :func:`satellite_profile`, sampled at pixel centres, Poisson noise; the
    line passes through a uniform point of the stamp at a uniform angle.

    Args:
        electrons: (N, B, H, W) background-subtracted co-add electrons (g, r, i).
        severity: 1-5, a row of the table.
        rng: the random stream (draws in a fixed order).
        domain: depth of the input, "Y10" or "Y1" [default: "Y10"].
        bands: the LSST bands of the channels [default: g, r, i].

    Returns:
        (N, B, H, W) float32 electrons.
    """
    x = _as_batch(electrons)
    n, _, h, w = x.shape
    band_index = rng.integers(0, len(bands), n)
    cx = rng.uniform(-0.5, w - 0.5, n)
    cy = rng.uniform(-0.5, h - 0.5, n)
    angle = rng.uniform(0.0, np.pi, n)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    mags = _solar_magnitudes(SATELLITE_G_MAG[severity], "g")
    trail = np.empty((n, h, w))
    for b, band in enumerate(bands):
        sel = np.flatnonzero(band_index == b)
        if len(sel) == 0:
            continue
        dist = ((xx[None] - cx[sel, None, None]) * np.sin(angle[sel])[:, None, None]
                - (yy[None] - cy[sel, None, None]) * np.cos(angle[sel])[:, None, None]) * PIXEL_SCALE
        grid, profile = satellite_profile(band)
        density = satellite_line_density(mags[band], band)
        trail[sel] = density * np.interp(dist, grid, profile, left=0.0, right=0.0) * PIXEL_SCALE ** 2
    x[np.arange(n), band_index] += rng.poisson(trail)
    return x


# --- misregistration ---------------------------------------------------------------------------------------
def misregistration(electrons: np.ndarray, severity: int, rng: np.random.Generator,
                    domain: str = "Y10", bands: Sequence[str] = BANDS) -> np.ndarray:
    """One band (uniform) shifted by :data:`MISREGISTRATION_ARCSEC` in a uniform direction.

    The shift is a Fourier phase shift (``scipy.ndimage.fourier_shift``; periodic at the
    edges): flux and noise variance are preserved exactly.

    Args:
        electrons: (N, B, H, W) background-subtracted co-add electrons (g, r, i).
        severity: 1-5, a row of the table.
        rng: the random stream (draws in a fixed order).
        domain: depth of the input, "Y10" or "Y1" [default: "Y10"]; not used.
        bands: the LSST bands of the channels [default: g, r, i].

    Returns:
        (N, B, H, W) float32 electrons.
    """
    x = _as_batch(electrons)
    n = x.shape[0]
    band_index = rng.integers(0, len(bands), n)
    angle = rng.uniform(0.0, 2.0 * np.pi, n)
    shift = MISREGISTRATION_ARCSEC[severity] / PIXEL_SCALE
    rows = np.arange(n)
    spectra = scipy.fft.fft2(x[rows, band_index].astype(np.float64))
    for i in range(n):
        spectra[i] = scipy.ndimage.fourier_shift(spectra[i], (shift * np.sin(angle[i]), shift * np.cos(angle[i])))
    x[rows, band_index] = scipy.fft.ifft2(spectra).real
    return x


# --- compression ---------------------------------------------------------------------------------------------
def compression(electrons: np.ndarray, severity: int, rng: np.random.Generator, domain: str = "Y10",
                bands: Sequence[str] = BANDS) -> np.ndarray:
    """fpack-style lossy tile compression: quantise at q = :data:`COMPRESSION_Q`, RICE_1, decompress.

    Done by astropy's ``CompImageHDU`` (CFITSIO): each band of each stamp is one tile, its
    noise sigma estimated by CFITSIO, step sigma / q, SUBTRACTIVE_DITHER_1 with a dither seed
    drawn from ``rng``.

    Args:
        electrons: (N, B, H, W) background-subtracted co-add electrons (g, r, i).
        severity: 1-5, a row of the table.
        rng: the random stream (draws in a fixed order).
        domain: depth of the input, "Y10" or "Y1" [default: "Y10"]; not used.
        bands: the LSST bands of the channels [default: g, r, i].

    Returns:
        (N, B, H, W) float32 electrons (the decompressed image).
    """
    from astropy.io import fits

    x = np.ascontiguousarray(electrons, dtype=np.float32)
    n, c, h, w = x.shape
    seed = int(rng.integers(1, 10_001))
    cube = x.reshape(n * c, h, w)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hdu = fits.CompImageHDU(cube, compression_type="RICE_1", quantize_level=COMPRESSION_Q[severity],
                                quantize_method=1, dither_seed=seed, tile_shape=(1, h, w))
        buffer = io.BytesIO()
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(buffer)
        buffer.seek(0)
        with fits.open(buffer) as hdus:
            out = np.array(hdus[1].data, dtype=np.float32)
    return out.reshape(n, c, h, w)


# --- depth ------------------------------------------------------------------------------------------------------
def depth_years(severity: int, domain: str = "Y10") -> float:
    """Depth (years) of the output: :data:`DEPTH_YEARS` for a Y10 input, the same fraction of
    the depth for another domain."""
    return DEPTH_YEARS[severity] * _years(domain) / 10.0


def depth(electrons: np.ndarray, severity: int, rng: np.random.Generator, domain: str = "Y10",
          bands: Sequence[str] = BANDS) -> np.ndarray:
    """A shallower co-add on the same flux scale: add Gaussian noise of variance (D / y - 1)(B + max(S, 0)).

    Args:
        electrons: (N, B, H, W) co-add electrons at depth D = the domain's years.
        severity: 1-5; y = :func:`depth_years`.
        rng: the random stream.
        domain: depth of the input [default: "Y10"].
        bands: the LSST bands of the channels [default: g, r, i].

    Returns:
        (N, B, H, W) float32: the mean unchanged, the variance (D / y) times the input's.
    """
    x = _as_batch(electrons)
    ratio = _years(domain) / depth_years(severity, domain)
    sky = band_sky(domain, bands).astype(np.float32)[None, :, None, None]
    variance = np.float32(ratio - 1.0) * (sky + np.clip(x, 0.0, None))
    x += rng.standard_normal(x.shape, dtype=np.float32) * np.sqrt(variance)
    return x


# --- the table ----------------------------------------------------------------------------------------------------
Corruption = Callable[[np.ndarray, int, np.random.Generator, str, Sequence[str]], np.ndarray]

#: every corruption by name, in the benchmark's order
CORRUPTIONS: dict[str, Corruption] = {
    "seeing": seeing,
    "sky_error": sky_error,
    "cosmic_rays": cosmic_rays,
    "hot_pixels": hot_pixels,
    "dead_pixels": dead_pixels,
    "bad_columns": bad_columns,
    "saturation": saturation,
    "satellite": satellite,
    "misregistration": misregistration,
    "compression": compression,
    "depth": depth,
}

#: each corruption's severity table, its parameter and unit
TABLES: dict[str, tuple[dict[int, float], str, str]] = {
    "seeing": (SEEING_FWHM_R, "r-band zenith seeing FWHM", "arcsec"),
    "sky_error": (SKY_ERROR_FRACTION, "sky-subtraction error", "fraction of sky"),
    "cosmic_rays": (COSMIC_RAY_SURVIVAL, "tracks surviving rejection", "fraction"),
    "hot_pixels": (HOT_PIXEL_FRACTION, "hot pixels", "fraction of pixels"),
    "dead_pixels": (DEAD_PIXEL_FRACTION, "dead pixels", "fraction of pixels"),
    "bad_columns": (BAD_COLUMNS, "bad columns", "columns per stamp"),
    "saturation": (SATURATION_STAR_R_MAG, "saturating star", "r mag"),
    "satellite": (SATELLITE_G_MAG, "satellite", "g mag"),
    "misregistration": (MISREGISTRATION_ARCSEC, "band shift", "arcsec"),
    "compression": (COMPRESSION_Q, "quantisation level q", "noise / step"),
    "depth": (DEPTH_YEARS, "depth", "years (Y10 input)"),
}


def parameter_label(name: str, severity: int) -> str:
    """A short label of one table entry, e.g. ``'1.12"'`` or ``"q = 2"``; ``"clean"`` for severity 0."""
    check_choice(name, CORRUPTIONS, "corruption")
    severity = check_severity(severity)
    if severity == 0:
        return "clean"
    value = TABLES[name][0][severity]
    text = {"hot_pixels": f"{100 * value:g} %", "dead_pixels": f"{100 * value:g} %",
            "sky_error": f"±{100 * value:g} % sky", "cosmic_rays": f"{100 * value:g} % kept",
            "bad_columns": f"{value:g} col", "saturation": f"r = {value:g}", "satellite": f"g = {value:g}",
            "compression": f"q = {value:g}", "depth": f"Y{value:g}", "seeing": f'{value:g}"',
            "misregistration": f'{1000 * value:g} mas'}[name]
    return text


def table_fingerprint() -> str:
    """A short hash of every table and constant above: results with equal fingerprints used the
    same corruptions."""
    content = {
        "tables": {name: {str(s): v for s, v in table.items()} for name, (table, _, _) in TABLES.items()},
        "constants": [PIXEL_SIZE_UM, SENSOR_THICKNESS_UM, FULL_WELL_E, COSMIC_RAY_RATE_CM2_MIN,
                      COSMIC_RAY_MPV_E_PER_UM, COSMIC_RAY_XI_E_PER_UM, list(HOT_PIXEL_RATE_E_S),
                      SATELLITE_ALTITUDE_KM, list(SOLAR_COLOURS), "v1"],
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def check_severity(severity: int) -> int:
    """Return ``severity`` as an int if it is 0-5; else raise :class:`OptionError`."""
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or not 0 <= int(severity) <= MAX_SEVERITY:
        raise OptionError(f"severity {severity!r} is outside 0-{MAX_SEVERITY} (0 = no corruption)")
    return int(severity)


def check_bands(bands: Sequence[str]) -> tuple[str, ...]:
    """Return ``bands`` if the corruption table can model them: distinct LSST bands it has
    parameters for (g, r, i, in any order and any subset); else an :class:`OptionError`."""
    names = tuple(str(b) for b in bands)
    unknown = [b for b in names if b not in BAND_SPECS]
    if not names or unknown or len(set(names)) != len(names):
        raise OptionError(f"the corruption table models LSST co-adds in the bands {', '.join(BAND_SPECS)} (their "
                          f"sky, exposure and PSF); bands {', '.join(names) or 'none'} are not among them (name "
                          "the bands at import, --bands g,r, when they are LSST bands)")
    return names


def corrupt(images: np.ndarray, name: str, severity: int, rng: np.random.Generator | int | None,
            domain: str = "Y10", bands: Sequence[str] = BANDS) -> np.ndarray:
    """Apply one corruption at one severity to raw images.

    Args:
        images: (N, B, H, W) or one (B, H, W) image, background-subtracted electrons in the
            bands ``bands``, unstretched.
        name: a key of :data:`CORRUPTIONS`.
        severity: 0-5; 0 returns an unchanged float32 copy.
        rng: a ``numpy.random.Generator`` (or a seed for ``numpy.random.default_rng``).
        domain: the depth of ``images``, "Y10" or "Y1" [default: "Y10"].
        bands: the images' bands in channel order, LSST bands of :data:`~deepadversaries.survey.BAND_SPECS`
            (a subset of g, r, i) [default: ("g", "r", "i")]; each band gets its own sky, exposure and PSF.

    Returns:
        float32 electrons of the input's shape; the input is not modified.

    Raises:
        OptionError: unknown corruption, domain or band, severity outside 0-5, images not (N, B, H, W).
    """
    check_choice(name, CORRUPTIONS, "corruption")
    severity = check_severity(severity)
    check_choice(domain, DEPTHS, "domain")
    bands = check_bands(bands)
    arr = np.asarray(images)
    single = arr.ndim == 3
    batch = arr[None] if single else arr
    if batch.ndim != 4 or batch.shape[1] != len(bands):
        raise OptionError(f"images must have shape (N, {len(bands)}, H, W) or ({len(bands)}, H, W) for the bands "
                          f"{', '.join(bands)}; got {arr.shape}")
    if severity == 0 or len(batch) == 0:
        out = np.array(batch, dtype=np.float32, copy=True)
    else:
        generator = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        out = CORRUPTIONS[name](batch, severity, generator, domain, bands)
    return out[0] if single else out
