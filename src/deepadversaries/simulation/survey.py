"""The LSST survey model (SPEC 3.1): zero points, sky, exposure, PSF and noise.

Values are those of LSSTDESC WeakLensingDeblending ``descwl/survey.py`` as used by
Sanchez et al. (2021). A *scene* is a noiseless image in electrons for **one year** of
survey exposure in each band; the survey at depth ``years`` sees ``years`` times that
scene on ``years`` times the one-year sky, then Poisson noise, then the sky is
subtracted. So Y1 and Y10 are the same scene with independent noise, and Y10 has
exactly 10x the electrons of Y1 (sky included).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import galsim
import numpy as np

from deepadversaries import BANDS  # bands in storage (channel) order, ("g", "r", "i")

#: survey depths in years, keyed by domain name
DEPTHS: dict[str, int] = {"Y10": 10, "Y1": 1}
PIXEL_SCALE = 0.2  # arcsec / pixel
IMAGE_SIZE = 100  # pixels on a side
AIRMASS = 1.2
MIRROR_DIAMETER = 8.36  # m
OBSCURATION = 0.640
VISIT_S = 30.0
#: LSST full-well capacity, electrons per pixel: the LSST system requirement is > 90,000 e-
#: (LSST Document-10512), and LSSTCam's sensors measured 103,000 e- (e2v) and 129,000 e- (ITL) at
#: the PTC turnoff under the final operating settings (Rubin technote SITCOMTN-148, "LSST Camera
#: Electro-Optical Test Results", https://sitcomtn-148.lsst.io); 100,000 e- is the round figure
#: between them (the ``physical`` value range of the attacks ends there)
FULL_WELL_ELECTRONS = 100_000.0


@dataclass(frozen=True)
class BandSpec:
    """Survey constants of one band."""

    name: str
    zero_point: float  # electrons / s for a source of magnitude 24
    sky_brightness: float  # mag / arcsec^2
    exposure_per_year: float  # s
    zenith_psf_fwhm: float  # arcsec, atmospheric
    lam_over_diam: float  # arcsec, optics (Airy)

    @property
    def atmospheric_fwhm(self) -> float:
        """Kolmogorov FWHM at the survey airmass: zenith FWHM x airmass^0.6."""
        return self.zenith_psf_fwhm * AIRMASS**0.6


BAND_SPECS: dict[str, BandSpec] = {
    "g": BandSpec("g", 50.70, 22.3, 240.0, 0.73, 0.0118),
    "r": BandSpec("r", 43.70, 21.2, 552.0, 0.70, 0.0153),
    "i": BandSpec("i", 32.36, 20.5, 552.0, 0.67, 0.0186),
}


def exposure_time(band: str, years: float = 1) -> float:
    """Total exposure (s) in ``band`` after ``years`` of survey."""
    return BAND_SPECS[band].exposure_per_year * years


def electrons(magnitude: float | np.ndarray, band: str, years: float = 1) -> float | np.ndarray:
    """Electrons collected from a source of AB ``magnitude``: t x zp x 10^(-0.4 (m - 24))."""
    spec = BAND_SPECS[band]
    return exposure_time(band, years) * spec.zero_point * 10.0 ** (-0.4 * (np.asarray(magnitude) - 24.0))


def magnitude(n_electrons: float | np.ndarray, band: str, years: float = 1) -> float | np.ndarray:
    """Inverse of :func:`electrons`."""
    spec = BAND_SPECS[band]
    return 24.0 - 2.5 * np.log10(np.asarray(n_electrons) / (exposure_time(band, years) * spec.zero_point))


def sky_level(band: str, years: float = 1) -> float:
    """Sky electrons per pixel: the sky brightness through :func:`electrons`, times the pixel area."""
    return float(electrons(BAND_SPECS[band].sky_brightness, band, years)) * PIXEL_SCALE**2


@functools.lru_cache(maxsize=None)
def psf(band: str) -> galsim.GSObject:
    """Kolmogorov(FWHM = zenith FWHM x 1.2^0.6) convolved with Airy(lambda/D, obscuration 0.64)."""
    spec = BAND_SPECS[band]
    atmosphere = galsim.Kolmogorov(fwhm=spec.atmospheric_fwhm)
    optics = galsim.Airy(lam_over_diam=spec.lam_over_diam, obscuration=OBSCURATION)
    return galsim.Convolve(atmosphere, optics)


def add_noise(scene: np.ndarray, band: str, years: float, seed: int) -> np.ndarray:
    """Observe a one-year ``scene`` (2-D, electrons) at depth ``years``.

    Scales the scene by ``years``, adds the sky of that depth, draws Poisson noise
    and subtracts the sky again (GalSim ``PoissonNoise(sky_level=...)``). Returns
    float64 background-subtracted electrons.
    """
    image = galsim.Image(np.asarray(scene, dtype=np.float64) * years, scale=PIXEL_SCALE, copy=True)
    noise = galsim.PoissonNoise(galsim.BaseDeviate(int(seed)), sky_level=sky_level(band, years))
    image.addNoise(noise)
    return image.array


def observe(scene: np.ndarray, years: float, seeds: tuple[int, int, int]) -> np.ndarray:
    """Noisy image (3, H, W) float32 of a one-year (3, H, W) ``scene`` at depth ``years``."""
    return np.stack(
        [add_noise(scene[b], band, years, seeds[b]) for b, band in enumerate(BANDS)]
    ).astype(np.float32)


def peak_snr(scene: np.ndarray, years: float) -> np.ndarray:
    """Per-band peak signal-to-noise per pixel of a one-year (3, H, W) ``scene`` at depth ``years``.

    S/N = S / sqrt(S + B) for the brightest noiseless pixel S = years x max(scene)
    and the sky B of that depth (Poisson variance of signal plus sky).
    """
    peaks = years * np.asarray(scene, dtype=np.float64).reshape(len(BANDS), -1).max(axis=1)
    peaks = np.maximum(peaks, 0.0)
    sky = np.array([sky_level(b, years) for b in BANDS])
    return peaks / np.sqrt(peaks + sky)
