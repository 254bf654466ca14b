"""The severity tables and detector/site constants of the survey corruptions, with their sources.

Two table sets (:data:`deepadversaries.corruptions.registry.TABLE_SET_NAMES`):

- ``"rubin"`` (the default): severities for a co-add at the dataset's depth, derived from
  Rubin/LSST numbers (SRD LPM-17, SMTN-016, obs_base ``policy/writeRecipes.yaml``, Tyson et al.
  2020, DES/HSC pipeline experience); an entry without a source that fixes it is marked
  ASSUMPTION here and in docs/robustness.md;
- ``"stress"``: the strongest levels of the benchmark's first version (single bad visits,
  unmasked bright satellites, lossy compression beyond Rubin's recipe), kept as an explicit
  stress test (``deepadv robustness --stress``).

A table maps severity 1-5 to the corruption's parameter; each corruption's
:class:`~deepadversaries.corruptions.registry.CorruptionSpec` names its tables here, with the
parameter's name and unit. This module holds numbers only (no I/O, no randomness);
:mod:`deepadversaries.corruptions.suite` applies them. docs/robustness.md prints every
table; ``tests/test_corruptions.py`` pins them to the docs' values.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping

from deepadversaries.simulation.survey import FULL_WELL_ELECTRONS

# --- detector and site constants ----------------------------------------------------------------
#: LSST CCD pixel pitch, um (10 um = 0.2"; LSST camera focal-plane requirements)
PIXEL_SIZE_UM = 10.0
#: thickness of the fully depleted LSST sensors, um (camera requirement "> 100 um")
SENSOR_THICKNESS_UM = 100.0
#: full well per pixel, e-: the survey model's (sources cited there)
FULL_WELL_E = FULL_WELL_ELECTRONS
#: cosmic-ray events per cm^2 per minute. ASSUMPTION: the sea-level muon flux ~1 cm^-2 min^-1 (PDG
#: "Cosmic rays") doubled for the 2.7 km altitude of Cerro Pachon and non-muon events (Groom 2004);
#: the DES verification measured ~5 cm^-2 min^-1 at CTIO with the dome open, ~2 closed
COSMIC_RAY_RATE_CM2_MIN = 2.0
#: most probable charge of a minimum-ionising particle in silicon, e- per um (PDG)
COSMIC_RAY_MPV_E_PER_UM = 75.0
#: Landau width per um of Si, e- (PDG); the Moyal distribution stands in for the Landau
COSMIC_RAY_XI_E_PER_UM = 4.9
#: hot-pixel dark current, e-/s: the eotest bright-pixel threshold (5 e-/pixel/s) to ten times it
#: (the upper end is an ASSUMPTION)
HOT_PIXEL_RATE_E_S = (5.0, 50.0)
#: LEO satellite altitude, km (the Starlink shell of Tyson et al. 2020)
SATELLITE_ALTITUDE_KM = 550.0
EARTH_GM_KM3_S2 = 398_600.4418
EARTH_RADIUS_KM = 6_371.0
#: solar colours (g - r, r - i) of sunlight and of stars. ASSUMPTION: the Sun's AB colours (Willmer 2018)
SOLAR_COLOURS = (0.45, 0.12)
#: minimum separation of a neighbouring star from the stamp centre (the galaxy), arcsec. ASSUMPTION:
#: 4" = 20 pixels, about twice the median galaxy's Petrosian radius, so the star's core never
#: sits on the galaxy (a deblender separates such pairs)
STAR_MIN_SEPARATION_ARCSEC = 4.0
#: distance of a bleeding star's centre beyond the stamp's top or bottom edge, arcsec (uniform in
#: this range). ASSUMPTION: just outside a cutout, as a star beside a catalogued galaxy
BLEED_STAR_OFFSET_ARCSEC = (1.0, 4.0)
#: blend: the neighbour's centre at a uniform angle and a distance uniform in this range, arcsec.
#: ASSUMPTION: 1.5-5" is where HSC/LSST deblenders mostly see overlapping footprints (Bosch et al.
#: 2018; Melchior et al. 2021)
BLEND_OFFSET_ARCSEC = (1.5, 5.0)
#: blend: number of noiseless neighbour galaxies rendered once by the package's simulator
BLEND_BANK_SIZE = 24
#: PSF ellipticity: factor on the r-band ellipticity per band (g, r, i) and the spread of each band's
#: position angle about the common one, degrees. ASSUMPTION: a chromatic PSF-model error
PSF_BAND_FACTORS = {"g": 1.2, "r": 1.0, "i": 0.9}
PSF_ANGLE_SPREAD_DEG = 15.0
#: background gradient: the pipeline's background-mesh size, pixels (LSST/HSC ``binSize`` 128)
BACKGROUND_BIN_PIXELS = 128

# --- the Rubin-grounded tables (severity -> parameter) ------------------------------------------
#: seeing of the whole co-add: r-band zenith FWHM, arcsec. The co-add PSF averages the site
#: distribution over ~180 r visits; across the footprint it varies by ~10-30 %. ASSUMPTION: 5-30 %
#: worse than the survey model's median 0.70" (SRD median 0.7")
SEEING_FWHM_R = {1: 0.735, 2: 0.77, 3: 0.805, 4: 0.84, 5: 0.91}
#: sky-subtraction error, fraction of the co-add's sky B. The Y10 3-sigma limit on 10" boxes is
#: r ~ 30.3 mag/arcsec^2 (SMTN-016) = 0.023 % of the r sky; ASSUMPTION: 0.01-0.2 % (HSC PDR2 residuals
#: ~0.1 % near bright objects, Aihara et al. 2019)
SKY_ERROR_FRACTION = {1: 0.0001, 2: 0.0002, 3: 0.0005, 4: 0.001, 5: 0.002}
#: cosmic rays: fraction of per-visit tracks surviving ISR repair and the co-add's outlier rejection.
#: ASSUMPTION: 0.5-10 % (a working CompareWarp stack rejects nearly all)
COSMIC_RAY_SURVIVAL = {1: 0.005, 2: 0.01, 3: 0.02, 4: 0.05, 5: 0.1}
#: hot pixels: fraction of sensor pixels hot and missed by the defect mask, per visit (dithered).
#: Up to the OSS PixFrac ceiling of 1 % unusable pixels per sensor
HOT_PIXEL_FRACTION = {1: 0.0005, 2: 0.001, 3: 0.002, 4: 0.005, 5: 0.01}
#: dead pixels: as hot pixels
DEAD_PIXEL_FRACTION = {1: 0.0005, 2: 0.001, 3: 0.002, 4: 0.005, 5: 0.01}
#: bad columns: expected unmasked bad columns across the 100-column stamp per visit. ASSUMPTION
BAD_COLUMNS = {1: 0.05, 2: 0.1, 3: 0.2, 4: 0.5, 5: 1.0}
#: star neighbour: r magnitude of an unsaturated star >= STAR_MIN_SEPARATION_ARCSEC from the galaxy
#: (the unsaturated control; a 30-s visit saturates at r = 15.96). HSC masks stars to Gaia G < 18
#: (Coupon et al. 2018): severities 4-5 would be masked by such a catalogue
STAR_NEIGHBOUR_R_MAG = {1: 21.0, 2: 20.0, 3: 19.0, 4: 18.0, 5: 17.0}
#: bleed: r magnitude of a saturated star just outside the stamp whose bleed trail runs into it
BLEED_STAR_R_MAG = {1: 15.0, 2: 14.5, 3: 14.0, 4: 13.5, 5: 13.0}
#: satellite: g magnitude of a trail that survived masking. Tyson et al. 2020: Rubin's streak masking
#: removes bright trails, missed ones are g >~ 9-10 (ASSUMPTION for the exact levels)
SATELLITE_G_MAG = {1: 10.0, 2: 9.5, 3: 9.0, 4: 8.5, 5: 8.0}
#: misregistration: shift of one band, arcsec (SITCOMTN-159 3-7 mas floor; SRD AM1 10 mas; up to
#: residual differential chromatic refraction of 50 mas, an ASSUMPTION)
MISREGISTRATION_ARCSEC = {1: 0.005, 2: 0.01, 3: 0.02, 4: 0.03, 5: 0.05}
#: compression: quantisation level q (step = noise / q); Rubin's lossy recipe is RICE with
#: quantizeLevel 10 (obs_base policy/writeRecipes.yaml); q < 4 is a stress test
COMPRESSION_Q = {1: 10.0, 2: 4.0, 3: 2.0, 4: 1.0, 5: 0.5}
#: depth: fraction of the domain's depth (depth variation over the footprint; ASSUMPTION: down to
#: half the exposure, 0.38 mag shallower)
DEPTH_FRACTION = {1: 0.9, 2: 0.8, 3: 0.7, 4: 0.6, 5: 0.5}
#: blend: flux ratio neighbour / primary (r band). ASSUMPTION: ~58 % of HSC-Wide objects are blended
#: (Bosch et al. 2018); the ratio spans faint to equal neighbours
BLEND_FLUX_RATIO = {1: 0.1, 2: 0.2, 3: 0.35, 4: 0.5, 5: 1.0}
#: PSF ellipticity (model error) in r, |e| = (a^2 - b^2) / (a^2 + b^2) of the PSF's second moments.
#: SRD SE1: median e <= 0.04; SE2: <= 0.07 for 95 % of images; above is stress
PSF_ELLIPTICITY = {1: 0.01, 2: 0.02, 3: 0.04, 4: 0.07, 5: 0.1}
#: background gradient: plane amplitude across the stamp (edge to edge), fraction of the sky B, and
#: the same number scales the local over-subtraction (see corruptions.background_gradient). ASSUMPTION
BACKGROUND_GRADIENT = {1: 0.0001, 2: 0.0002, 3: 0.0005, 4: 0.001, 5: 0.002}
#: correlated noise: RMS of the effective co-add warping kernel, pixels (a Gaussian stand-in for
#: Lanczos-3 resampling at random sub-pixel offsets, ~0.3-0.5 px; ASSUMPTION)
CORRELATED_NOISE_SIGMA_PX = {1: 0.3, 2: 0.4, 3: 0.5, 4: 0.6, 5: 0.8}

# --- the stress set: the first version's levels (single bad visits, unmasked trails) -------------
#: the built-in corruptions' stress tables by name (a new corruption gives its own on its spec)
STRESS_TABLES: dict[str, dict[int, float]] = {
    "seeing": {1: 0.84, 2: 0.98, 3: 1.12, 4: 1.26, 5: 1.40},
    "sky_error": {1: 0.0005, 2: 0.001, 3: 0.002, 4: 0.005, 5: 0.01},
    "cosmic_rays": {1: 0.05, 2: 0.1, 3: 0.25, 4: 0.5, 5: 1.0},
    "hot_pixels": {1: 0.0005, 2: 0.001, 3: 0.002, 4: 0.005, 5: 0.01},
    "dead_pixels": {1: 0.0005, 2: 0.001, 3: 0.002, 4: 0.005, 5: 0.01},
    "bad_columns": {1: 1.0, 2: 2.0, 3: 3.0, 4: 4.0, 5: 5.0},
    "star_neighbour": {1: 15.5, 2: 14.5, 3: 13.5, 4: 12.5, 5: 11.5},
    "bleed": {1: 13.0, 2: 12.0, 3: 11.0, 4: 10.0, 5: 9.0},
    "satellite": {1: 8.0, 2: 7.0, 3: 6.1, 4: 5.5, 5: 4.5},
    "misregistration": {1: 0.01, 2: 0.02, 3: 0.05, 4: 0.1, 5: 0.2},
    "compression": {1: 4.0, 2: 2.0, 3: 1.0, 4: 0.5, 5: 0.25},
    "depth": {1: 0.7, 2: 0.5, 3: 0.3, 4: 0.2, 5: 0.1},
    "blend": {1: 0.5, 2: 1.0, 3: 2.0, 4: 3.0, 5: 5.0},
    "psf_ellipticity": {1: 0.1, 2: 0.15, 3: 0.2, 4: 0.25, 5: 0.3},
    "background_gradient": {1: 0.002, 2: 0.005, 3: 0.01, 4: 0.02, 5: 0.05},
    "correlated_noise": {1: 0.8, 2: 1.0, 3: 1.2, 4: 1.5, 5: 2.0},
}

def sky_error_surface_brightness(fraction: float, sky_mag_arcsec2: float) -> float:
    """The surface brightness (mag/arcsec^2) of a sky error of ``fraction`` of a sky of
    ``sky_mag_arcsec2``: sky - 2.5 log10(fraction)."""
    return float(sky_mag_arcsec2 - 2.5 * math.log10(fraction))


def fingerprint(tables: Mapping[str, Mapping[int, float]]) -> str:
    """A short hash of one table set (corruption name -> severity table, as
    :func:`deepadversaries.corruptions.registry.table_set` gives it) and of every constant here: equal
    fingerprints, the same corruptions."""
    content = {
        "tables": {name: {str(s): v for s, v in table.items()} for name, table in tables.items()},
        "constants": [PIXEL_SIZE_UM, SENSOR_THICKNESS_UM, FULL_WELL_E, COSMIC_RAY_RATE_CM2_MIN,
                      COSMIC_RAY_MPV_E_PER_UM, COSMIC_RAY_XI_E_PER_UM, list(HOT_PIXEL_RATE_E_S),
                      SATELLITE_ALTITUDE_KM, list(SOLAR_COLOURS), STAR_MIN_SEPARATION_ARCSEC,
                      list(BLEED_STAR_OFFSET_ARCSEC), list(BLEND_OFFSET_ARCSEC), BLEND_BANK_SIZE,
                      PSF_BAND_FACTORS, PSF_ANGLE_SPREAD_DEG, BACKGROUND_BIN_PIXELS, "v3"],
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]
