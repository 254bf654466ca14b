"""Survey-realistic corruptions of LSST-like co-adds: the operations of the robustness benchmark.

Each corruption is a function ``f(electrons, severity, rng, domain, bands, options) -> electrons``
on raw images (N, B, H, W) in electrons, bands g, r, i (or a subset, ``bands``),
background-subtracted (the dataset format, SPEC 3.6), applied *before* the stretch. Severity 1-5
picks a row of the corruption's table in the chosen table set
(:mod:`deepadversaries.corruptions.tables`: ``"rubin"``, the default, or ``"stress"``); severity 0
is the identity (:func:`corrupt` handles it). ``domain`` ("Y10" or "Y1") gives the depth of the
input, from which a corruption takes the sky level, exposure time and number of visits of each
band (:mod:`deepadversaries.simulation.survey`). docs/robustness.md has the tables with their sources.
Each function is registered, with its tables, label and sources, by one
:class:`~deepadversaries.corruptions.registry.CorruptionSpec` (:mod:`deepadversaries.corruptions.registry`);
:func:`corrupt` applies any registered corruption, a run-time registration included.

The co-addition model
---------------------
A stored image is a co-add: the sum over the N visits of one band (N = exposure / 30 s: Y10 g 80,
r and i 184; Y1 g 8, r and i 18) of each visit's electrons, minus the sky B = N x (sky per
visit); a pixel's noise variance is B + S. A single-visit defect of E electrons that survives
masking and outlier rejection adds E electrons; one at the same sky pixel in every visit adds N x E.

- **Detector defects** (hot, dead pixels, bad columns) have three placements
  (``CorruptionOptions.defects``): ``"dithered"`` (default; LSST dithers every visit, so each
  visit's defects land on new sky pixels: a sky pixel is hit in k ~ Binomial(N, f) visits, each
  hit adding one visit's dark charge or removing one visit's light), ``"masked"`` (the defect is
  masked and the co-add pixel interpolated from its unmasked neighbours, as a pipeline leaves it)
  and ``"no-dither"`` (the same sky pixel in every visit, unmasked: the first version's worst case,
  an ASSUMPTION no LSST co-add satisfies).
- **star_neighbour**: a star (r magnitude of the table, solar colours) at least
  STAR_MIN_SEPARATION_ARCSEC from the stamp centre; per-visit saturation and bleed when it is bright
  enough (the Rubin table's stars are all unsaturated: the control).
- **bleed**: a saturated star just outside the stamp (beyond its top or bottom edge); its bleed
  trail (and PSF wings) run into the stamp.
- **blend**: a second galaxy from the package's own simulator (a bank of noiseless renders) at a
  uniform angle and a distance in BLEND_OFFSET_ARCSEC, scaled to the table's flux ratio to the
  primary (r band, the primary's flux estimated as the stamp's sum), with its Poisson noise; the
  primary is not moved or changed, so its label stands.
- **psf_ellipticity**: the co-add PSF is sheared: every band is convolved with a line Gaussian
  whose second moments turn the band's PSF into one of ellipticity e (r: the table's value; g, r,
  i scaled by PSF_BAND_FACTORS, each band's angle spread about a common one: a chromatic PSF-model
  error); noise restored as for seeing.
- **background_gradient**: a plane across the stamp of the table's fraction of the sky (edge to
  edge, random direction) plus the local over-subtraction a background mesh leaves around a bright
  source (a broad negative Gaussian holding a fraction of the galaxy's flux spread over one mesh
  cell).
- **correlated_noise**: co-add warping: the image convolved with the effective resampling kernel
  (a Gaussian of the table's RMS), then noise smoothed by the same kernel restores the survey's
  per-pixel variance: the noise is correlated at the kernel's scale.
- The others (seeing, sky_error, cosmic_rays, satellite, misregistration, compression, depth) as
  in the first version; their physics is in each function's docstring.

Nested draws and determinism: every corruption draws its random numbers in a fixed order and
count that do not depend on the severity, and turns them into defects by monotone rules (a pixel
is hit when its uniform draw falls below the table's rate; a track survives when its uniform draw
falls below the surviving fraction): with one ``numpy.random.default_rng(seed)`` per chunk for all
severities, higher severities keep the positions of lower ones and add more. The output depends
only on the input, the severity, the domain, the options and the state of ``rng``; inputs are never
modified; outputs are float32. The functions may run in several threads at once. Inside
:func:`shared_spectra` the FFT convolutions (seeing, PSF ellipticity, correlated noise) keep the
spectra of their last padded inputs (each hit checked equal value by value), so planes convolved
at several severities are transformed once; the numbers are those of the computation.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import io
import math
import threading
import warnings
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import galsim
import numpy as np
import scipy.fft
import scipy.ndimage
import scipy.stats

from deepadversaries.corruptions.tables import (
    BACKGROUND_BIN_PIXELS, BLEED_STAR_OFFSET_ARCSEC, BLEND_BANK_SIZE, BLEND_OFFSET_ARCSEC,
    COSMIC_RAY_MPV_E_PER_UM, COSMIC_RAY_RATE_CM2_MIN, COSMIC_RAY_XI_E_PER_UM, EARTH_GM_KM3_S2,
    EARTH_RADIUS_KM, FULL_WELL_E, HOT_PIXEL_RATE_E_S, PIXEL_SIZE_UM, PSF_ANGLE_SPREAD_DEG, PSF_BAND_FACTORS,
    SATELLITE_ALTITUDE_KM, SENSOR_THICKNESS_UM, SOLAR_COLOURS, STAR_MIN_SEPARATION_ARCSEC,
    sky_error_surface_brightness,
)
from deepadversaries.corruptions.tables import (
    BAD_COLUMNS, BLEED_STAR_R_MAG, BLEND_FLUX_RATIO, COMPRESSION_Q, CORRELATED_NOISE_SIGMA_PX,
    COSMIC_RAY_SURVIVAL, DEAD_PIXEL_FRACTION, DEPTH_FRACTION, HOT_PIXEL_FRACTION, MISREGISTRATION_ARCSEC,
    PSF_ELLIPTICITY, SATELLITE_G_MAG, SEEING_FWHM_R, SKY_ERROR_FRACTION, STAR_NEIGHBOUR_R_MAG,
    BACKGROUND_GRADIENT,
)
from deepadversaries.corruptions.survey_numbers import SurveyNumbers
from deepadversaries.corruptions.registry import CORRUPTIONS, TABLE_SET_NAMES, get_spec, table_fingerprint
from deepadversaries.errors import OptionError, check_choice
from deepadversaries.simulation.survey import (
    BAND_SPECS, BANDS, DEPTHS, MIRROR_DIAMETER, OBSCURATION, PIXEL_SCALE, VISIT_S, exposure_time, psf,
    sky_level,
)

__all__ = [
    "BAD_COLUMNS", "BLEED_STAR_R_MAG", "BLEND_FLUX_RATIO", "COMPRESSION_Q", "CORRELATED_NOISE_SIGMA_PX",
    "COSMIC_RAY_SURVIVAL", "DEAD_PIXEL_FRACTION", "DEPTH_FRACTION", "HOT_PIXEL_FRACTION", "MISREGISTRATION_ARCSEC",
    "PSF_ELLIPTICITY", "SATELLITE_G_MAG", "SEEING_FWHM_R", "SKY_ERROR_FRACTION", "STAR_NEIGHBOUR_R_MAG",
    "BACKGROUND_GRADIENT", "CORRUPTIONS", "DEFECT_PLACEMENTS", "CorruptionOptions", "corrupt", "table_fingerprint",
]

#: the severities of every table; 0 (the identity) is handled by :func:`corrupt`
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
MAX_SEVERITY = 5
#: how detector defects are placed: per visit under dithering, masked and interpolated, or fixed
DEFECT_PLACEMENTS = ("dithered", "masked", "no-dither")
#: the built-in corruptions whose placement ``CorruptionOptions.defects`` chooses (their specs say so)
DEFECTS = tuple(name for name, spec in CORRUPTIONS.items() if spec.defect_placement)


@dataclass(frozen=True)
class CorruptionOptions:
    """How the corruptions are parametrised.

    Attributes:
        tables: the table set, "rubin" (Rubin-grounded) or "stress" (the first version's strongest
            levels) [default: "rubin"].
        defects: placement of detector defects, "dithered", "masked" or "no-dither" [default: "dithered"].
        survey: the user's survey numbers (sky, exposure, visits, zero point per band) in place of the
            LSST model's at the domain's depth [default: None, LSST's]
            (:mod:`deepadversaries.corruptions.survey_numbers`).
    """

    tables: str = "rubin"
    defects: str = "dithered"
    survey: SurveyNumbers | None = None

    def __post_init__(self) -> None:
        check_choice(self.tables, TABLE_SET_NAMES, "table set")
        check_choice(self.defects, DEFECT_PLACEMENTS, "defect placement")


DEFAULT_OPTIONS = CorruptionOptions()


def level(name: str, severity: int, options: CorruptionOptions = DEFAULT_OPTIONS) -> float:
    """The table value of corruption ``name`` at ``severity`` (1-5) in the options' table set (its spec's)."""
    return float(get_spec(name).table(options.tables)[severity])


def _as_batch(electrons: np.ndarray) -> np.ndarray:
    """A float32 copy to corrupt (the output's type; corruptions compute in float64 where it matters)."""
    return np.array(electrons, dtype=np.float32, copy=True)


def _years(domain: str) -> float:
    return float(DEPTHS[domain])


def band_sky(domain: str, bands: Sequence[str] = BANDS, options: CorruptionOptions | None = None) -> np.ndarray:
    """Sky electrons per pixel B of each band (g, r, i, or ``bands``) at the depth of ``domain``, (B,);
    the user's survey numbers' when ``options.survey`` is set."""
    if options is not None and options.survey is not None:
        return options.survey.sky(bands)
    years = _years(domain)
    return np.array([sky_level(b, years) for b in bands])


def band_exposure(domain: str, bands: Sequence[str] = BANDS, options: CorruptionOptions | None = None) -> np.ndarray:
    """Total exposure (s) of each band (g, r, i, or ``bands``) at the depth of ``domain``, (B,);
    the user's survey numbers' when ``options.survey`` is set."""
    if options is not None and options.survey is not None:
        return options.survey.exposure(bands)
    years = _years(domain)
    return np.array([exposure_time(b, years) for b in bands])


def band_visits(domain: str, bands: Sequence[str] = BANDS, options: CorruptionOptions | None = None) -> np.ndarray:
    """Number of visits N of each band at the depth of ``domain`` (fractional; 30-s visits, or the
    user's survey's visit length), (B,)."""
    if options is not None and options.survey is not None:
        return options.survey.exposure(bands) / options.survey.visit_s
    return band_exposure(domain, bands, options) / VISIT_S


def _flux_rate(magnitude: float, band: str, options: CorruptionOptions | None = None) -> float:
    """Electrons per second from a source of AB ``magnitude`` in ``band`` (survey zero point; the user's
    survey's when ``options.survey`` is set)."""
    if options is not None and options.survey is not None:
        return options.survey.band(band).zero_point * 10.0 ** (-0.4 * (magnitude - 24.0))
    return BAND_SPECS[band].zero_point * 10.0 ** (-0.4 * (magnitude - 24.0))


def _solar_magnitudes(reference: float, reference_band: str) -> dict[str, float]:
    """Per-band magnitudes of a source with solar colours, given one band's magnitude."""
    g_r, r_i = SOLAR_COLOURS
    r = {"g": reference - g_r, "r": reference, "i": reference + r_i}[reference_band]
    return {"g": r + g_r, "r": r, "i": r - r_i}


def _restore_noise(smooth: np.ndarray, sky: float, kept_variance: float | np.ndarray,
                   rng: np.random.Generator) -> np.ndarray:
    """Add white noise of variance (sky + max(S, 0)) (1 - kept) to smoothed planes, so the per-pixel
    variance is the survey's again (``kept`` = sum K^2 of the smoothing kernel, scalar or per plane)."""
    kept = np.asarray(kept_variance, dtype=np.float32)
    kept = kept.reshape(kept.shape + (1,) * (smooth.ndim - kept.ndim)) if kept.ndim else kept
    if smooth.dtype != np.float32:
        variance = (np.float32(sky) + np.clip(smooth, 0.0, None)) * np.clip(np.float32(1.0) - kept, 0.0, None)
        return smooth + rng.standard_normal(smooth.shape, dtype=np.float32) * np.sqrt(variance)
    # float32: the same operations in place (+ and * commute bit for bit), two arrays instead of six
    variance = np.maximum(smooth, np.float32(0.0))  # = np.clip(smooth, 0, None), twice as fast
    variance += np.float32(sky)
    variance *= np.clip(np.float32(1.0) - kept, 0.0, None)
    np.sqrt(variance, out=variance)
    noise = rng.standard_normal(smooth.shape, dtype=np.float32)
    noise *= variance
    noise += smooth
    return noise


# --- seeing -------------------------------------------------------------------------------
def seeing_kernel_fwhm(band: str, fwhm_r: float) -> float:
    """FWHM (arcsec) of the Kolmogorov kernel K that turns the survey PSF of ``band`` into one whose
    r-band zenith FWHM is ``fwhm_r``: FWHM_K^(5/3) = FWHM_new^(5/3) - FWHM_old^(5/3)."""
    spec = BAND_SPECS[band]
    old = spec.atmospheric_fwhm
    new = old * fwhm_r / BAND_SPECS["r"].zenith_psf_fwhm
    return float((new ** (5 / 3) - old ** (5 / 3)) ** 0.6)


@functools.cache
def seeing_kernel(band: str, fwhm_r: float) -> np.ndarray:
    """The matching kernel K of ``band`` for an r-band zenith FWHM ``fwhm_r`` (arcsec): a Kolmogorov
    profile sampled at the pixel centres, out to 4 FWHM, normalised to sum 1. Returns (n, n) float64, n odd."""
    fwhm = seeing_kernel_fwhm(band, fwhm_r)
    n = 2 * math.ceil(4.0 * fwhm / PIXEL_SCALE) + 1
    kernel = galsim.Kolmogorov(fwhm=fwhm).drawImage(nx=n, ny=n, scale=PIXEL_SCALE, method="no_pixel").array
    kernel = np.asarray(kernel, dtype=np.float64)
    kernel = kernel / kernel.sum()
    kernel.flags.writeable = False
    return kernel


def _spectrum_of(planes: np.ndarray, pad: int, shape: tuple[int, int]) -> np.ndarray:
    """The rfft2, on an FFT grid ``shape``, of (N, H, W) planes mirror-padded by ``pad`` pixels (float32)."""
    data = np.ascontiguousarray(planes, dtype=np.float32)
    return scipy.fft.rfft2(np.pad(data, ((0, 0), (pad, pad), (pad, pad)), mode="reflect"), s=shape)


class _SpectrumCache:
    """The spectra (:func:`_spectrum_of`) of the last ``size`` padded inputs, keyed by (shape, pad,
    FFT size, crc32 of the bytes) and checked equal value by value to a kept copy of the input: a hit
    returns exactly the spectrum the computation would. Read-only spectra; one thread's."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.entries: collections.OrderedDict = collections.OrderedDict()

    def spectrum(self, planes: np.ndarray, pad: int, shape: tuple[int, int]) -> np.ndarray:
        data = np.ascontiguousarray(planes, dtype=np.float32)
        key = (data.shape, pad, shape, zlib.crc32(data))
        hit = self.entries.get(key)
        if hit is not None and np.array_equal(hit[0], data):
            self.entries.move_to_end(key)
            return hit[1]
        spectrum = _spectrum_of(data, pad, shape)
        spectrum.flags.writeable = False
        self.entries[key] = (data.copy(), spectrum)
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)
        return spectrum


#: padded-plane spectra kept inside :func:`shared_spectra` (each ~25 MB for a 256-image chunk of
#: 100 x 100 planes; one corruption at several severities needs at most 6)
SPECTRUM_CACHE_SIZE = 12
_ACTIVE = threading.local()


@contextlib.contextmanager
def shared_spectra(size: int = SPECTRUM_CACHE_SIZE) -> Iterator[None]:
    """Within the block, this thread's FFT convolutions (seeing, PSF ellipticity, correlated noise)
    keep the spectra of their last ``size`` padded inputs (:class:`_SpectrumCache`), so the same
    planes convolved at several severities are transformed once; the numbers are the computation's.
    Nothing is kept after the block, or in another thread.

    Args:
        size: spectra kept at most [default: :data:`SPECTRUM_CACHE_SIZE`].
    """
    previous = getattr(_ACTIVE, "cache", None)
    _ACTIVE.cache = _SpectrumCache(size)
    try:
        yield
    finally:
        _ACTIVE.cache = previous


def _padded_spectrum(planes: np.ndarray, pad: int, shape: tuple[int, int]) -> np.ndarray:
    """:func:`_spectrum_of`, from this thread's :func:`shared_spectra` cache where one is open."""
    cache = getattr(_ACTIVE, "cache", None)
    return _spectrum_of(planes, pad, shape) if cache is None else cache.spectrum(planes, pad, shape)


def _convolve(planes: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Convolve (N, H, W) planes with an odd (n, n) kernel, mirror-padded at the edges ('same' size),
    by FFT in single precision; returns float32. The padding is the kernel's half-width rounded up to
    a multiple of 8 (any padding at least the half-width gives the same convolution), so kernels of
    similar size share the planes' spectrum inside :func:`shared_spectra`."""
    p = kernel.shape[0] // 2
    _, h, w = planes.shape
    pad = 8 * math.ceil(max(p, 1) / 8)
    shape = (scipy.fft.next_fast_len(h + 2 * pad, real=True), scipy.fft.next_fast_len(w + 2 * pad, real=True))
    wrapped = np.zeros(shape, dtype=np.float32)
    wrapped[: p + 1, : p + 1] = kernel[p:, p:]
    wrapped[: p + 1, -p:] = kernel[p:, :p]
    wrapped[-p:, : p + 1] = kernel[:p, p:]
    wrapped[-p:, -p:] = kernel[:p, :p]
    product = _padded_spectrum(planes, pad, shape) * scipy.fft.rfft2(wrapped)[None]
    return scipy.fft.irfft2(product, s=shape)[:, pad:pad + h, pad:pad + w]


def seeing(electrons: np.ndarray, severity: int, rng: np.random.Generator, domain: str = "Y10",
           bands: Sequence[str] = BANDS, options: CorruptionOptions = DEFAULT_OPTIONS) -> np.ndarray:
    """Worse seeing of the whole co-add: convolve with the matching Kolmogorov kernel, restore the noise.

    Args:
        electrons: (N, B, H, W) background-subtracted co-add electrons.
        severity: 1-5; the r-band zenith FWHM of the table (arcsec), every band scaled by the same factor.
        rng: the random stream of the restored noise.
        domain: depth of the input, "Y10" or "Y1" [default: "Y10"]; gives the sky level B.
        bands: the LSST bands of the channels [default: g, r, i].
        options: the table set [default: Rubin].

    Returns:
        (N, B, H, W) float32 electrons: flux conserved; per-pixel variance B + S again, part of it correlated.
    """
    x = _as_batch(electrons)
    sky = band_sky(domain, bands, options)
    out = np.empty_like(x)
    for b, band in enumerate(bands):
        kernel = seeing_kernel(band, level("seeing", severity, options))
        out[:, b] = _restore_noise(_convolve(x[:, b], kernel), sky[b], float(np.sum(kernel ** 2)), rng)
    return out


# --- sky-subtraction error ------------------------------------------------------------------
def sky_error(electrons: np.ndarray, severity: int, rng: np.random.Generator, domain: str = "Y10",
              bands: Sequence[str] = BANDS, options: CorruptionOptions = DEFAULT_OPTIONS) -> np.ndarray:
    """A sky-subtraction error of +-f B (f from the table); sign random per image and band.

    Returns:
        (N, B, H, W) float32: each band of each image shifted by exactly +f B or -f B.
    """
    x = _as_batch(electrons)
    signs = np.where(rng.random(x.shape[:2]) < 0.5, -1.0, 1.0)
    x += (signs * level("sky_error", severity, options) * band_sky(domain, bands, options)[None, :])[:, :, None, None]
    return x


# --- cosmic rays ----------------------------------------------------------------------------
def cosmic_ray_rate(height: int, width: int, domain: str = "Y10", bands: Sequence[str] = BANDS,
                    options: CorruptionOptions | None = None) -> np.ndarray:
    """Expected cosmic-ray tracks per stamp *before* rejection, per band (B,):
    rate x stamp area (cm^2) x 30 s x N visits."""
    area_cm2 = height * width * (PIXEL_SIZE_UM * 1e-4) ** 2
    visit = options.survey.visit_s if options is not None and options.survey is not None else VISIT_S
    return COSMIC_RAY_RATE_CM2_MIN / 60.0 * area_cm2 * visit * band_visits(domain, bands, options)


def cosmic_rays(electrons: np.ndarray, severity: int, rng: np.random.Generator, domain: str = "Y10",
                bands: Sequence[str] = BANDS, options: CorruptionOptions = DEFAULT_OPTIONS) -> np.ndarray:
    """Muon tracks that survived co-addition, each adding its full charge to the co-add.

    Per image and band, Poisson(:func:`cosmic_ray_rate` x s_max) candidate tracks (s_max the table
    set's largest surviving fraction), each kept when a uniform draw falls below survival / s_max
    (nested across severities). Each track: centre uniform, azimuth uniform, cos(theta) ~ 4 u^3,
    projected length 100 um tan(theta) / 10 um, charge Moyal(75 e-/um, 4.9 e-/um) x 100 um / cos(theta),
    shared along the track in steps of at most 1/4 pixel.

    Returns:
        (N, B, H, W) float32 electrons.
    """
    x = _as_batch(electrons)
    n, _, h, w = x.shape
    survival = level("cosmic_rays", severity, options)
    most = max(get_spec("cosmic_rays").table(options.tables).values())
    lam = cosmic_ray_rate(h, w, domain, bands, options) * most
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
    keep_draw = rng.uniform(0.0, 1.0, total)
    tan_theta = np.sqrt(1.0 - cos_theta ** 2) / cos_theta
    length = np.minimum(SENSOR_THICKNESS_UM * tan_theta / PIXEL_SIZE_UM, 2.0 * max(h, w))
    path_um = SENSOR_THICKNESS_UM / cos_theta
    charge = scipy.stats.moyal.rvs(loc=COSMIC_RAY_MPV_E_PER_UM * path_um, scale=COSMIC_RAY_XI_E_PER_UM * path_um,
                                   size=total, random_state=rng)
    charge = np.clip(charge, 0.0, None)
    kept = keep_draw < survival / most
    image, band, cx, cy, phi, length, charge = (a[kept] for a in (image, band, cx, cy, phi, length, charge))
    if len(image) == 0:
        return x
    steps = np.ceil(4.0 * length).astype(np.int64) + 1
    track = np.repeat(np.arange(len(image)), steps)
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
def visit_hits(uniform: np.ndarray, n_visits: float, rate: float) -> np.ndarray:
    """Visits (of ``n_visits``, rounded) in which a dithered sky pixel lands on a defect of per-visit
    probability ``rate``: the Binomial(N, rate) quantile of ``uniform`` (monotone in ``rate``: nested).

    Args:
        uniform: draws in [0, 1), any shape.
        n_visits: visits N of the band (rounded to an integer >= 1).
        rate: per-visit probability that the pixel is a defect.

    Returns:
        int64 hit counts of ``uniform``'s shape.
    """
    visits = max(1, int(round(n_visits)))
    support = np.arange(visits + 1)
    cdf = scipy.stats.binom.cdf(support, visits, rate)
    upto = int(np.searchsorted(cdf, 1.0 - 1e-15)) + 1
    u = np.asarray(uniform)
    if u.dtype != np.float32:
        return np.searchsorted(cdf[:upto], u, side="right").astype(np.int64).clip(0, visits)
    # the searchsorted count (cdf entries <= u) as float32 comparisons with exact float32 thresholds:
    # for float32 u, cdf[j] <= u  <=>  u >= the smallest float32 not below cdf[j]
    # counted in the smallest integer type that holds ``upto`` (a quarter of int64's memory traffic)
    hits = np.zeros(u.shape, dtype=np.uint8 if upto < 256 else np.int64)
    for c in cdf[:upto]:
        threshold = np.float32(c)
        if float(threshold) < c:
            threshold = np.nextafter(threshold, np.float32(np.inf))
        hits += u >= threshold
    return np.minimum(hits, visits).astype(np.int64)


def _hot_rates(uniform: np.ndarray) -> np.ndarray:
    """Dark currents (e-/s) log-uniform over :data:`HOT_PIXEL_RATE_E_S`, from uniform draws."""
    lo, hi = HOT_PIXEL_RATE_E_S
    return lo * (hi / lo) ** uniform


def interpolate_masked(planes: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Replace masked pixels by the mean of their unmasked 8-neighbours (0 where none is unmasked).

    Args:
        planes: (N, B, H, W) float32 images.
        mask: (N, H, W) bool, True where the pixel is masked (the same in every band).

    Returns:
        (N, B, H, W) float32, unmasked pixels unchanged.
    """
    out = np.array(planes, dtype=np.float32, copy=True)
    good = (~mask).astype(np.float32)
    ring = np.ones((1, 3, 3), np.float32)
    ring[0, 1, 1] = 0.0
    count = scipy.ndimage.convolve(good, ring, mode="constant")
    for b in range(out.shape[1]):
        total = scipy.ndimage.convolve(out[:, b] * good, ring, mode="constant")
        fill = np.where(count > 0, total / np.maximum(count, 1.0), 0.0)
        out[:, b][mask] = fill[mask]
    return out


def hot_pixels(electrons: np.ndarray, severity: int, rng: np.random.Generator, domain: str = "Y10",
               bands: Sequence[str] = BANDS, options: CorruptionOptions = DEFAULT_OPTIONS) -> np.ndarray:
    """Hot pixels missed by the defect mask, at a fraction f (the table) of the pixels.

    - dithered: per band, a sky pixel is hot in k ~ Binomial(N, f) visits (:func:`visit_hits`);
      its charge is k D x 30 s (Poisson, in the Gaussian approximation), D log-uniform in
      :data:`HOT_PIXEL_RATE_E_S`, one D per sky pixel (k is mostly 0 or 1: a simplification);
    - masked: the pixels (u < f, the same in all bands) are interpolated from their neighbours;
    - no-dither: the same pixels in every visit and band, + Poisson(D x T), T the band's exposure.

    Returns:
        (N, B, H, W) float32 electrons.
    """
    x = _as_batch(electrons)
    n, _, h, w = x.shape
    fraction = level("hot_pixels", severity, options)
    if options.defects == "dithered":
        for b, visits in enumerate(band_visits(domain, bands, options)):
            hits = visit_hits(rng.random((n, h, w), dtype=np.float32), visits, fraction)
            rates = _hot_rates(rng.random((n, h, w), dtype=np.float32))
            mean = hits.astype(np.float32) * rates * np.float32(VISIT_S)
            x[:, b] += np.maximum(mean + np.sqrt(mean) * rng.standard_normal((n, h, w), dtype=np.float32), np.float32(0.0))
        return x
    mask = rng.random((n, h, w)) < fraction
    if options.defects == "masked":
        return interpolate_masked(x, mask)
    rates = _hot_rates(rng.random((n, h, w)))[mask]
    img, row, col = np.nonzero(mask)
    for b, t in enumerate(band_exposure(domain, bands, options)):
        x[img, b, row, col] += rng.poisson(rates * t)
    return x


def dead_pixels(electrons: np.ndarray, severity: int, rng: np.random.Generator, domain: str = "Y10",
                bands: Sequence[str] = BANDS, options: CorruptionOptions = DEFAULT_OPTIONS) -> np.ndarray:
    """Dead (zero-response) pixels missed by the defect mask, at a fraction f of the pixels.

    - dithered: a sky pixel is dead in k ~ Binomial(N, f) visits and loses those visits' light:
      x - (k / N)(x + B);
    - masked: interpolated from the neighbours;
    - no-dither: the same pixels in every visit collect nothing: exactly -B in every band.

    Returns:
        (N, B, H, W) float32 electrons.
    """
    x = _as_batch(electrons)
    n, _, h, w = x.shape
    fraction = level("dead_pixels", severity, options)
    sky = band_sky(domain, bands, options)
    if options.defects == "dithered":
        for b, visits in enumerate(band_visits(domain, bands, options)):
            hits = visit_hits(rng.random((n, h, w), dtype=np.float32), visits, fraction)
            lost = hits.astype(np.float32) / np.float32(max(1, int(round(visits))))
            x[:, b] -= lost * (x[:, b] + np.float32(sky[b]))
        return x
    mask = rng.random((n, h, w)) < fraction
    if options.defects == "masked":
        return interpolate_masked(x, mask)
    img, row, col = np.nonzero(mask)
    for b in range(len(bands)):
        x[img, b, row, col] = -sky[b]
    return x


def bad_columns(electrons: np.ndarray, severity: int, rng: np.random.Generator, domain: str = "Y10",
                bands: Sequence[str] = BANDS, options: CorruptionOptions = DEFAULT_OPTIONS) -> np.ndarray:
    """Bad columns missed by the defect mask: c (the table) expected per stamp, so each column is bad
    with probability c / W; half dead (a charge trap), half bright (dark current D per column,
    log-uniform in :data:`HOT_PIXEL_RATE_E_S`, eotest's bright-column rule).

    - dithered: per band and column, dead in k_d ~ Binomial(N, c / 2W) visits (x - (k_d / N)(x + B))
      and bright in k_b ~ Binomial(N, c / 2W) visits (+ k_b D x 30 s per pixel, Poisson);
    - masked: the columns (the same in all bands) are interpolated from their neighbours;
    - no-dither: the same columns in every visit: dead -B, or bright + Poisson(D x T).

    Returns:
        (N, B, H, W) float32 electrons.
    """
    x = _as_batch(electrons)
    n, _, h, w = x.shape
    p_column = min(1.0, level("bad_columns", severity, options) / w)
    sky = band_sky(domain, bands, options)
    if options.defects == "dithered":
        for b, visits in enumerate(band_visits(domain, bands, options)):
            dead = visit_hits(rng.random((n, w)), visits, p_column / 2)
            bright = visit_hits(rng.random((n, w)), visits, p_column / 2)
            rates = _hot_rates(rng.random((n, w)))
            z = rng.standard_normal((n, h, w))
            # only the hit columns change: x[img, b, :, col] is (k, H), one row per column
            img, col = np.nonzero(dead)
            lost = (dead[img, col] / max(1, int(round(visits))))[:, None]
            x[img, b, :, col] -= (lost * (x[img, b, :, col] + sky[b])).astype(np.float32)
            img, col = np.nonzero(bright)
            mean = (bright[img, col] * rates[img, col] * VISIT_S)[:, None]
            x[img, b, :, col] += np.maximum(mean + np.sqrt(mean) * z[img, :, col], 0.0).astype(np.float32)
        return x
    columns = rng.random((n, w)) < p_column
    is_dead = rng.random((n, w)) < 0.5
    rates = _hot_rates(rng.random((n, w)))
    if options.defects == "masked":
        return interpolate_masked(x, np.broadcast_to(columns[:, None, :], (n, h, w)))
    img, col = np.nonzero(columns)
    exposure = band_exposure(domain, bands, options)
    for b in range(len(bands)):
        bright = rng.poisson(np.repeat((rates[img, col] * exposure[b])[:, None], h, axis=1))  # (k, h)
        values = np.where(is_dead[img, col][:, None], -sky[b], x[img, b, :, col] + bright)
        x[img, b, :, col] = values
    return x


# --- stars: neighbour and bleed -------------------------------------------------------------------
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

    Each pixel keeps at most ``full_well``; the excess travels along its column (axis -2), filling
    the first pixels with room; charge carried past the edge of the array is lost.

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


def _add_star(x: np.ndarray, rows: np.ndarray, cols: np.ndarray, r_mag: float, rng: np.random.Generator,
              domain: str, bands: Sequence[str], pad: int, options: CorruptionOptions | None = None) -> np.ndarray:
    """Add a star centred on pixel (rows[i], cols[i]) of image i (rows may lie in a ``pad``-row margin
    above or below the stamp), with Poisson noise, per-visit saturation and bleed; returns the stamp.

    A column none of whose pixels exceeds the full well in one visit keeps the co-add's sum (galaxy +
    star), computed in float32; only the saturated columns go through the per-visit charge
    (co-add + sky) / N, :func:`bleed` in float64, and back."""
    n, _, h, w = x.shape
    hc = h + 2 * pad
    mags = _solar_magnitudes(r_mag, "r")
    sky = band_sky(domain, bands, options)
    visits = band_visits(domain, bands, options)
    exposure = band_exposure(domain, bands, options)
    r0 = hc - (rows + pad)
    c0 = w - cols
    for b, band in enumerate(bands):
        stamp = _psf_stamp(band, hc, w)
        total = np.empty((n, hc, w), dtype=np.float32)  # the star, then star + noise + galaxy
        for i in range(n):  # image i's window of the (2 hc + 1, 2 w + 1) PSF image: a slice, no fancy index
            total[i] = stamp[r0[i]:r0[i] + hc, c0[i]:c0[i] + w]
        total *= np.float32(_flux_rate(mags[band], band, options) * float(exposure[b]))
        noise = rng.standard_normal(total.shape, dtype=np.float32)
        noise *= np.sqrt(total)
        total += noise
        total[:, pad:pad + h] += x[:, b]
        # saturated in one visit: (co-add + sky) / N > full well
        img, col = np.nonzero((total > np.float32(FULL_WELL_E * visits[b] - sky[b])).any(axis=1))
        if len(img):
            per_visit = (total[img, :, col].astype(np.float64) + sky[b]) / visits[b]  # (k, hc)
            total[img, :, col] = bleed(per_visit.T).T * visits[b] - sky[b]
        x[:, b] = total[:, pad:pad + h]
    return x


def star_neighbour(electrons: np.ndarray, severity: int, rng: np.random.Generator, domain: str = "Y10",
                   bands: Sequence[str] = BANDS, options: CorruptionOptions = DEFAULT_OPTIONS) -> np.ndarray:
    """A star (r magnitude of the table, solar colours) on a pixel centre at least
    :data:`~deepadversaries.corruptions.tables.STAR_MIN_SEPARATION_ARCSEC` from the stamp centre
    (uniform over the rest of the stamp); saturation and bleed per visit when it is bright enough
    (the Rubin table's stars are unsaturated: the control for :func:`bleed_trail`).

    Returns:
        (N, B, H, W) float32 electrons.
    """
    x = _as_batch(electrons)
    n, _, h, w = x.shape
    candidates_y = rng.integers(0, h, (n, 16))
    candidates_x = rng.integers(0, w, (n, 16))
    separation = np.hypot(candidates_y - (h - 1) / 2, candidates_x - (w - 1) / 2) * PIXEL_SCALE
    far = separation >= min(STAR_MIN_SEPARATION_ARCSEC, 0.45 * min(h, w) * PIXEL_SCALE)
    pick = np.where(far.any(axis=1), far.argmax(axis=1), separation.argmax(axis=1))
    rows = candidates_y[np.arange(n), pick]
    cols = candidates_x[np.arange(n), pick]
    return _add_star(x, rows, cols, level("star_neighbour", severity, options), rng, domain, bands, pad=0, options=options)


def bleed_trail(electrons: np.ndarray, severity: int, rng: np.random.Generator, domain: str = "Y10",
                bands: Sequence[str] = BANDS, options: CorruptionOptions = DEFAULT_OPTIONS) -> np.ndarray:
    """A saturated star (r magnitude of the table) centred just outside the stamp, a distance uniform
    in :data:`~deepadversaries.corruptions.tables.BLEED_STAR_OFFSET_ARCSEC` beyond its top or bottom
    edge at a uniform column: its bleed trail runs along the column into the stamp (and its wings).

    Returns:
        (N, B, H, W) float32 electrons.
    """
    x = _as_batch(electrons)
    n, _, h, w = x.shape
    lo, hi = (int(round(v / PIXEL_SCALE)) for v in BLEED_STAR_OFFSET_ARCSEC)
    distance = rng.integers(lo, hi + 1, n)
    above = rng.random(n) < 0.5
    cols = rng.integers(0, w, n)
    rows = np.where(above, -distance, h - 1 + distance)
    return _add_star(x, rows, cols, level("bleed", severity, options), rng, domain, bands, pad=hi + 1, options=options)


# --- satellite trail -----------------------------------------------------------------------------------
def satellite_angular_speed() -> float:
    """Angular speed (arcsec/s) of a circular-orbit satellite at 550 km seen at the zenith."""
    speed = math.sqrt(EARTH_GM_KM3_S2 / (EARTH_RADIUS_KM + SATELLITE_ALTITUDE_KM))
    return speed / SATELLITE_ALTITUDE_KM * 180.0 / math.pi * 3600.0


def satellite_line_density(magnitude: float, band: str, options: CorruptionOptions | None = None) -> float:
    """Electrons per arcsec of trail length left in one visit by a satellite of ``magnitude`` in ``band``."""
    return _flux_rate(magnitude, band, options) / satellite_angular_speed()


@functools.cache
def satellite_profile(band: str) -> tuple[np.ndarray, np.ndarray]:
    """Cross-track profile of a trail (1/arcsec, unit integral) on a grid of distances (arcsec): the
    out-of-focus pupil annulus at 550 km swept along the track, blurred by the band's seeing."""
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
              bands: Sequence[str] = BANDS, options: CorruptionOptions = DEFAULT_OPTIONS) -> np.ndarray:
    """A satellite trail that survived masking, in one visit of one band (uniform): line density
    :func:`satellite_line_density` (g magnitude of the table, solar colours), profile
    :func:`satellite_profile`, Poisson noise; through a uniform point at a uniform angle.

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
    mags = _solar_magnitudes(level("satellite", severity, options), "g")
    trail = np.empty((n, h, w))
    for b, band in enumerate(bands):
        sel = np.flatnonzero(band_index == b)
        if len(sel) == 0:
            continue
        dist = ((xx[None] - cx[sel, None, None]) * np.sin(angle[sel])[:, None, None]
                - (yy[None] - cy[sel, None, None]) * np.cos(angle[sel])[:, None, None]) * PIXEL_SCALE
        grid, profile = satellite_profile(band)
        density = satellite_line_density(mags[band], band, options)
        trail[sel] = density * np.interp(dist, grid, profile, left=0.0, right=0.0) * PIXEL_SCALE ** 2
    x[np.arange(n), band_index] += rng.poisson(trail)
    return x


# --- misregistration ---------------------------------------------------------------------------------------
def misregistration(electrons: np.ndarray, severity: int, rng: np.random.Generator, domain: str = "Y10",
                    bands: Sequence[str] = BANDS, options: CorruptionOptions = DEFAULT_OPTIONS) -> np.ndarray:
    """One band (uniform) shifted by the table's amount in a uniform direction, by a Fourier phase
    shift (periodic): flux and noise variance preserved exactly.

    Returns:
        (N, B, H, W) float32 electrons.
    """
    x = _as_batch(electrons)
    n = x.shape[0]
    band_index = rng.integers(0, len(bands), n)
    angle = rng.uniform(0.0, 2.0 * np.pi, n)
    shift = level("misregistration", severity, options) / PIXEL_SCALE
    rows = np.arange(n)
    h, w = x.shape[-2:]
    sy, sx = (shift * np.sin(angle))[:, None, None], (shift * np.cos(angle))[:, None, None]
    # the phase ramp exp(-2 pi i (ky sy + kx sx)) on the real FFT's half plane, and on the Nyquist
    # row, column and corner its Hermitian-symmetric part (cos(pi sy), cos(pi sx), cos(pi (sy + sx))
    # in place of the Nyquist factor), so the result is the real part of the full complex shift
    # (scipy.ndimage.fourier_shift, frequencies by fftfreq) exactly
    phase_y = np.exp(-2j * np.pi * scipy.fft.fftfreq(h)[None, :, None] * sy)
    phase_x = np.exp(-2j * np.pi * scipy.fft.rfftfreq(w)[None, None, :] * sx)
    if h % 2 == 0:
        phase_y[:, h // 2, :] = np.cos(np.pi * sy[:, 0, :])
    if w % 2 == 0:
        phase_x[:, :, w // 2] = np.cos(np.pi * sx[:, :, 0])
    phase = phase_y * phase_x
    if h % 2 == 0 and w % 2 == 0:
        phase[:, h // 2, w // 2] = np.cos(np.pi * (sy + sx))[:, 0, 0]
    spectra = scipy.fft.rfft2(x[rows, band_index].astype(np.float64)) * phase
    x[rows, band_index] = scipy.fft.irfft2(spectra, s=(h, w))
    return x


# --- compression ---------------------------------------------------------------------------------------------
def _quantize_round_trip(cube: np.ndarray, quantize_level: float, seed: int) -> np.ndarray | None:
    """What astropy's RICE_1 write and read of ``cube`` (one tile per plane, SUBTRACTIVE_DITHER_1,
    ZDITHER0 = ``seed``) return, without the lossless RICE coding: the quantisation of each tile by
    astropy's own :class:`Quantize` (tile k dithered from row k + seed, as astropy numbers tiles)
    and its dequantisation from the (scale, zero) the file would store. None (use the file round
    trip) when astropy's quantiser cannot be imported or a plane holds NaN or fails to quantise
    (astropy then stores it losslessly or with ZBLANK). Bit-identical to the round trip: pinned by
    tests/test_corruptions_speed.py.

    Args:
        cube: (K, H, W) float32 planes, C-contiguous.
        quantize_level: q, the quantisation step as a fraction of the noise sigma.
        seed: the dither seed, 1-10000.

    Returns:
        (K, H, W) float32 decompressed planes, or None.
    """
    try:
        from astropy.io.fits.hdu.compressed._quantization import QuantizationFailedException, Quantize
    except ImportError:  # another astropy layout: the file round trip
        return None
    if np.isnan(cube).any():
        return None
    out = np.empty(cube.shape, dtype=np.float32)
    for k, tile in enumerate(cube):
        try:
            quantized, scale, zero = Quantize(row=k + seed, dither_method=1, quantize_level=quantize_level,
                                              bitpix=-32).encode_quantized(tile)
        except QuantizationFailedException:
            return None
        restored = Quantize(row=k + seed, dither_method=1, quantize_level=None, bitpix=-32).decode_quantized(
            np.asarray(quantized), float(np.float64(scale)), float(np.float64(zero)))
        out[k] = np.asarray(restored).reshape(tile.shape)
    return out


def compression(electrons: np.ndarray, severity: int, rng: np.random.Generator, domain: str = "Y10",
                bands: Sequence[str] = BANDS, options: CorruptionOptions = DEFAULT_OPTIONS) -> np.ndarray:
    """fpack-style lossy tile compression by astropy/CFITSIO: RICE_1, quantisation step sigma / q
    (q from the table), SUBTRACTIVE_DITHER_1 with a dither seed drawn from ``rng``; one tile per band.

    Returns:
        (N, B, H, W) float32 electrons (the decompressed image).
    """
    from astropy.io import fits

    x = np.ascontiguousarray(electrons, dtype=np.float32)
    n, c, h, w = x.shape
    seed = int(rng.integers(1, 10_001))
    cube = x.reshape(n * c, h, w)
    fast = _quantize_round_trip(cube, level("compression", severity, options), seed)
    if fast is not None:
        return fast.reshape(n, c, h, w)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hdu = fits.CompImageHDU(cube, compression_type="RICE_1", quantize_level=level("compression", severity, options),
                                quantize_method=1, dither_seed=seed, tile_shape=(1, h, w))
        buffer = io.BytesIO()
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(buffer)
        buffer.seek(0)
        with fits.open(buffer) as hdus:
            out = np.array(hdus[1].data, dtype=np.float32)
    return out.reshape(n, c, h, w)


# --- depth ------------------------------------------------------------------------------------------------------
def depth_years(severity: int, domain: str = "Y10", options: CorruptionOptions = DEFAULT_OPTIONS) -> float:
    """Depth (years) of the output: the table's fraction of the domain's depth."""
    return level("depth", severity, options) * _years(domain)


def depth(electrons: np.ndarray, severity: int, rng: np.random.Generator, domain: str = "Y10",
          bands: Sequence[str] = BANDS, options: CorruptionOptions = DEFAULT_OPTIONS) -> np.ndarray:
    """A shallower co-add on the same flux scale: Gaussian noise of variance (D / y - 1)(B + max(S, 0)).

    Returns:
        (N, B, H, W) float32: the mean unchanged, the variance (D / y) times the input's.
    """
    x = _as_batch(electrons)
    ratio = _years(domain) / depth_years(severity, domain, options)
    sky = band_sky(domain, bands, options).astype(np.float32)[None, :, None, None]
    variance = np.float32(ratio - 1.0) * (sky + np.maximum(x, np.float32(0.0)))
    x += rng.standard_normal(x.shape, dtype=np.float32) * np.sqrt(variance)
    return x


# --- blend ---------------------------------------------------------------------------------------------------------
@functools.cache
def neighbour_bank(size: int) -> np.ndarray:
    """Noiseless one-year (g, r, i) scenes of :data:`BLEND_BANK_SIZE` galaxies drawn by the package's
    simulator (:func:`deepadversaries.simulation.galaxies.draw_galaxy`, families in turn, seed fixed), each
    normalised to unit r-band flux. Returns (K, 3, size, size) float64, read-only."""
    from deepadversaries.simulation import galaxies  # the simulator's priors; imported here: galaxies imports heavy GalSim set-up

    rng = np.random.default_rng([20221, 7])
    scenes = []
    for k in range(BLEND_BANK_SIZE):
        family = galaxies.FAMILIES[k % len(galaxies.FAMILIES)]
        scene = galaxies.draw_galaxy(family, rng, 1.0, size=size).render_all()
        scenes.append(scene / max(float(scene[1].sum()), 1e-12))
    bank = np.asarray(scenes, dtype=np.float64)
    bank.flags.writeable = False
    return bank


def blend_neighbours(electrons: np.ndarray, severity: int, rng: np.random.Generator, domain: str = "Y10",
                     bands: Sequence[str] = BANDS, options: CorruptionOptions = DEFAULT_OPTIONS) -> np.ndarray:
    """The noiseless neighbours :func:`blend` adds: bank galaxy (uniform), shifted by a whole-pixel
    offset at a uniform angle and a distance uniform in BLEND_OFFSET_ARCSEC, scaled so its total
    r flux is the table's ratio times the primary's (the stamp's r sum, floored at 100 times one
    pixel's sky sigma); what leaves the stamp is cut. Returns (N, B, H, W) float64."""
    x = np.asarray(electrons)
    n, _, h, w = x.shape
    bank = neighbour_bank(max(h, w))[:, [BANDS.index(b) for b in bands], :h, :w]
    pick = rng.integers(0, len(bank), n)
    lo, hi = BLEND_OFFSET_ARCSEC
    distance = rng.uniform(lo, hi, n) / PIXEL_SCALE
    angle = rng.uniform(0.0, 2.0 * np.pi, n)
    dy = np.rint(distance * np.sin(angle)).astype(int)
    dx = np.rint(distance * np.cos(angle)).astype(int)
    r = list(bands).index("r") if "r" in bands else 0
    sky = band_sky(domain, bands, options)
    primary = np.maximum(x[:, r].sum(axis=(1, 2), dtype=np.float64), 100.0 * math.sqrt(sky[r]))
    flux = level("blend", severity, options) * primary
    out = np.zeros(x.shape, dtype=np.float64)
    for i in range(n):
        if abs(dy[i]) >= h or abs(dx[i]) >= w:
            continue  # the neighbour lies wholly outside a small stamp: nothing of it is seen
        ys, yd = (slice(0, h - dy[i]), slice(dy[i], h)) if dy[i] >= 0 else (slice(-dy[i], h), slice(0, h + dy[i]))
        xs, xd = (slice(0, w - dx[i]), slice(dx[i], w)) if dx[i] >= 0 else (slice(-dx[i], w), slice(0, w + dx[i]))
        np.multiply(bank[pick[i]][:, ys, xs], flux[i], out=out[i][:, yd, xd])
    return out


def blend(electrons: np.ndarray, severity: int, rng: np.random.Generator, domain: str = "Y10",
          bands: Sequence[str] = BANDS, options: CorruptionOptions = DEFAULT_OPTIONS) -> np.ndarray:
    """A neighbouring galaxy (:func:`blend_neighbours`) with its Poisson noise (Gaussian, variance =
    its electrons) added to the primary, which is not moved: the primary's label stands.

    Returns:
        (N, B, H, W) float32 electrons.
    """
    x = _as_batch(electrons)
    neighbours = blend_neighbours(x, severity, rng, domain, bands, options).astype(np.float32)
    noise = rng.standard_normal(x.shape, dtype=np.float32)
    noise *= np.sqrt(neighbours)
    x += neighbours
    x += noise
    return x


# --- PSF ellipticity and correlated noise: Fourier-space smoothing ------------------------------------------------
def _frequencies(h: int, w: int, pad: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    shape = (scipy.fft.next_fast_len(h + 2 * pad, real=True), scipy.fft.next_fast_len(w + 2 * pad, real=True))
    ky = scipy.fft.fftfreq(shape[0])[:, None]
    kx = scipy.fft.rfftfreq(shape[1])[None, :]
    return ky, kx, shape


def _smooth(planes: np.ndarray, transfer: np.ndarray, shape: tuple[int, int], pad: int) -> np.ndarray:
    """Multiply the mirror-padded (N, H, W) planes' spectra by ``transfer`` ((N or 1, ky, kx)); crop back."""
    _, h, w = planes.shape
    out = scipy.fft.irfft2(_padded_spectrum(planes, pad, shape) * transfer, s=shape)
    return out[:, pad:pad + h, pad:pad + w].astype(np.float32)


def _kept_variance(transfer: np.ndarray, width: int) -> np.ndarray:
    """sum K^2 of each kernel from its rfft-half transfer function on a grid ``width`` wide, by Parseval:
    the mean of |H|^2 over the full frequency grid."""
    weights = np.full(transfer.shape[-1], 2.0)
    weights[0] = 1.0
    if width % 2 == 0:
        weights[-1] = 1.0
    power = np.abs(transfer.astype(np.float64)) ** 2 * weights
    return np.sum(power, axis=(-2, -1)) / (transfer.shape[-2] * width)


@functools.cache
def psf_sigma_pixels(band: str) -> float:
    """The survey PSF's adaptive-moment size sigma (pixels) in ``band`` (GalSim HSM)."""
    image = psf(band).drawImage(nx=64, ny=64, scale=PIXEL_SCALE)
    return float(image.FindAdaptiveMom().moments_sigma)


def psf_shear_variance(band: str, ellipticity: float) -> float:
    """Variance (pixels^2) of the line Gaussian that turns a round PSF of moments sigma^2 into one of
    ellipticity e = (a^2 - b^2) / (a^2 + b^2): 2 e sigma^2 / (1 - e)."""
    s2 = psf_sigma_pixels(band) ** 2
    return 2.0 * ellipticity * s2 / (1.0 - ellipticity)


def psf_ellipticity(electrons: np.ndarray, severity: int, rng: np.random.Generator, domain: str = "Y10",
                    bands: Sequence[str] = BANDS, options: CorruptionOptions = DEFAULT_OPTIONS) -> np.ndarray:
    """An elliptical (sheared) and band-dependent co-add PSF: each band convolved with a line Gaussian
    of variance :func:`psf_shear_variance` (e = table value x PSF_BAND_FACTORS[band]) along a
    position angle uniform per image plus a per-band offset N(0, PSF_ANGLE_SPREAD_DEG); noise restored.

    Returns:
        (N, B, H, W) float32 electrons, flux conserved.
    """
    x = _as_batch(electrons)
    n, _, h, w = x.shape
    common = rng.uniform(0.0, np.pi, n)
    offsets = rng.standard_normal((n, len(bands))) * math.radians(PSF_ANGLE_SPREAD_DEG)
    sky = band_sky(domain, bands, options)
    pad = 8
    ky, kx, shape = _frequencies(h, w, pad)
    out = np.empty_like(x)
    for b, band in enumerate(bands):
        e = min(0.9, level("psf_ellipticity", severity, options) * PSF_BAND_FACTORS.get(band, 1.0))
        variance = psf_shear_variance(band, e)
        theta = (common + offsets[:, b])[:, None, None]
        along = kx[None] * np.cos(theta) + ky[None] * np.sin(theta)
        transfer = np.exp(-2.0 * math.pi ** 2 * variance * along ** 2).astype(np.float32)
        out[:, b] = _restore_noise(_smooth(x[:, b], transfer, shape, pad), sky[b], _kept_variance(transfer, shape[1]), rng)
    return out


def correlated_noise(electrons: np.ndarray, severity: int, rng: np.random.Generator, domain: str = "Y10",
                     bands: Sequence[str] = BANDS, options: CorruptionOptions = DEFAULT_OPTIONS) -> np.ndarray:
    """Co-add warping: convolve with a round Gaussian K of the table's RMS (pixels), the stand-in for the
    effective resampling kernel, then restore the per-pixel variance (B + S) with noise smoothed by the
    same K: the whole noise field is correlated at the kernel's scale (the neighbour correlation rises
    with the RMS) at the survey's per-pixel variance.

    Returns:
        (N, B, H, W) float32 electrons, flux conserved.
    """
    x = _as_batch(electrons)
    _, _, h, w = x.shape
    sigma = level("correlated_noise", severity, options)
    sky = band_sky(domain, bands, options)
    pad = 8
    ky, kx, shape = _frequencies(h, w, pad)
    transfer = np.exp(-2.0 * math.pi ** 2 * sigma ** 2 * (kx ** 2 + ky ** 2))[None].astype(np.float32)
    kept = float(_kept_variance(transfer, shape[1])[0])
    out = np.empty_like(x)
    for b in range(len(bands)):
        smooth = _smooth(x[:, b], transfer, shape, pad)
        white = rng.standard_normal(smooth.shape, dtype=np.float32)
        missing = (np.float32(sky[b]) + np.maximum(smooth, np.float32(0.0))) * np.float32((1.0 - kept) / kept)
        out[:, b] = smooth + _smooth(white, transfer, shape, pad) * np.sqrt(missing)
    return out


# --- background gradient --------------------------------------------------------------------------------------------
def background_gradient(electrons: np.ndarray, severity: int, rng: np.random.Generator, domain: str = "Y10",
                        bands: Sequence[str] = BANDS, options: CorruptionOptions = DEFAULT_OPTIONS) -> np.ndarray:
    """A background-model error: a plane of amplitude g B edge to edge (g the table's value, the
    direction uniform per image, the same in all bands, zero mean) plus the local over-subtraction of
    a background mesh of BACKGROUND_BIN_PIXELS: a fraction phi = min(1, 50 g) (ASSUMPTION) of the
    galaxy's positive flux in the stamp is spread over one mesh cell and subtracted as a Gaussian of
    sigma = half a cell centred on the stamp.

    Returns:
        (N, B, H, W) float32 electrons.
    """
    x = _as_batch(electrons)
    n, _, h, w = x.shape
    g = level("background_gradient", severity, options)
    angle = rng.uniform(0.0, 2.0 * np.pi, n)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    yy, xx = (yy - (h - 1) / 2) / max(h - 1, 1), (xx - (w - 1) / 2) / max(w - 1, 1)
    ramp = xx[None] * np.cos(angle)[:, None, None] + yy[None] * np.sin(angle)[:, None, None]
    ramp = ramp / np.maximum(np.ptp(ramp, axis=(1, 2), keepdims=True), 1e-12)
    cell = float(BACKGROUND_BIN_PIXELS)
    r2 = ((np.mgrid[0:h, 0:w][0] - (h - 1) / 2) ** 2 + (np.mgrid[0:h, 0:w][1] - (w - 1) / 2) ** 2)
    bump = np.exp(-r2 / (2.0 * (cell / 2) ** 2))
    phi = min(1.0, 50.0 * g)
    for b, sky in enumerate(band_sky(domain, bands, options)):
        flux = np.maximum(x[:, b], np.float32(0.0)).sum(axis=(1, 2), dtype=np.float64)
        over = phi * flux / cell ** 2
        x[:, b] += (g * sky * ramp - over[:, None, None] * bump[None]).astype(np.float32)
    return x


# --- labels and checks ---------------------------------------------------------------------------------------------
def parameter_label(name: str, severity: int, options: CorruptionOptions = DEFAULT_OPTIONS) -> str:
    """A short label of one table entry, e.g. ``'0.84"'`` or ``"q = 2"`` (the spec's label); ``"clean"`` for
    severity 0."""
    spec = get_spec(name)
    severity = check_severity(severity)
    if severity == 0:
        return "clean"
    return spec.format(level(name, severity, options))


def check_severity(severity: int) -> int:
    """Return ``severity`` as an int if it is 0-5; else raise :class:`OptionError`."""
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or not 0 <= int(severity) <= MAX_SEVERITY:
        raise OptionError(f"severity {severity!r} is outside 0-{MAX_SEVERITY} (0 = no corruption)")
    return int(severity)


def check_bands(bands: Sequence[str]) -> tuple[str, ...]:
    """Return ``bands`` if the corruption table can model them (distinct LSST bands g, r, i in any
    order and subset); else an :class:`OptionError`."""
    names = tuple(str(b) for b in bands)
    unknown = [b for b in names if b not in BAND_SPECS]
    if not names or unknown or len(set(names)) != len(names):
        raise OptionError(f"the corruption table models LSST co-adds in the bands {', '.join(BAND_SPECS)} (their "
                          f"sky, exposure and PSF); bands {', '.join(names) or 'none'} are not among them (name "
                          "the bands at import, --bands g,r, when they are LSST bands)")
    return names


def corrupt(images: np.ndarray, name: str, severity: int, rng: np.random.Generator | int | None,
            domain: str = "Y10", bands: Sequence[str] = BANDS,
            options: CorruptionOptions = DEFAULT_OPTIONS) -> np.ndarray:
    """Apply one corruption at one severity to raw images.

    Args:
        images: (N, B, H, W) or one (B, H, W) image, background-subtracted electrons in the bands
            ``bands``, unstretched.
        name: a registered corruption (:data:`deepadversaries.corruptions.registry.CORRUPTIONS`).
        severity: 0-5; 0 returns an unchanged float32 copy.
        rng: a ``numpy.random.Generator`` (or a seed for ``numpy.random.default_rng``).
        domain: the depth of ``images``, "Y10" or "Y1" [default: "Y10"].
        bands: the images' LSST bands in channel order [default: ("g", "r", "i")].
        options: table set and defect placement [default: Rubin tables, dithered defects].

    Returns:
        float32 electrons of the input's shape; the input is not modified.

    Raises:
        OptionError: unknown corruption, domain or band, severity outside 0-5, images not (N, B, H, W).
    """
    spec = get_spec(name)
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
        out = spec.apply(batch, severity, generator, domain, bands, options)
    return out[0] if single else out
