"""The user's own survey numbers for the corruptions: ``deepadv robustness --survey FILE.json``.

By default the corruptions take the sky, exposure, visits and zero point of each band from the
LSST survey model (:mod:`deepadversaries.simulation.survey`) at the depth of the corrupted domain.
Images of another survey (or of another depth) have another sky and exposure: the border-noise
check (:func:`deepadversaries.corruptions.benchmark.check_survey_noise`) refuses them, and
``--survey`` gives the numbers of the co-add that is really corrupted instead.

Contract: a :class:`SurveyNumbers` describes ONE co-add depth (the domain being corrupted); with it
every corruption reads, per band, the sky B (electrons per pixel, the level that was subtracted),
the total exposure T (s), the visits N = T / visit length and the zero point (e-/s at AB mag 24)
from it instead of the LSST model; the noise check expects a blank pixel's sigma to be
sqrt(B + N x read_noise^2). The PSF, pixel scale and detector physics stay LSST's: the pixel scale
must be LSST's 0.2"/pixel (within 1 %), and the read noise enters only the noise check (ASSUMPTION:
small against a co-add's sky; the corruptions' restored noise uses B). The file (JSON)::

    {"name": "my survey",                   # optional, recorded
     "pixel_scale_arcsec": 0.2,              # optional; must be 0.2 (+- 1 %)
     "visit_s": 30.0,                        # optional [default: 30]: one visit's exposure, s
     "read_noise_e": 9.0,                    # optional [default: 0]: per visit and pixel, electrons
     "bands": {"g": {"sky_e_per_pixel": 12000.0,     # co-add sky B, e-/pixel (> 0)
                     "exposure_s": 2400.0,           # co-add exposure T, s (>= visit_s)
                     "zero_point_e_per_s": 50.7},    # optional [default: LSST's]: e-/s at mag 24
               "r": {...}, "i": {...}}}

Every band of the dataset must be given; bands other than the corruptions' g, r, i are refused.
Every error is one line (:class:`~deepadversaries.errors.FileError` naming the file).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepadversaries.errors import file_error
from deepadversaries.simulation.survey import BAND_SPECS, PIXEL_SCALE, VISIT_S

__all__ = ["BandNumbers", "SurveyNumbers", "read_survey", "survey_from_mapping"]

#: how far the file's pixel scale may lie from LSST's (the PSF kernels and defect sizes are LSST's)
PIXEL_SCALE_TOLERANCE = 0.01
TOP_KEYS = {"name", "pixel_scale_arcsec", "visit_s", "read_noise_e", "bands"}
BAND_KEYS = {"sky_e_per_pixel", "exposure_s", "zero_point_e_per_s"}


@dataclass(frozen=True)
class BandNumbers:
    """One band of the user's co-add.

    Attributes:
        sky: sky B of the co-add, electrons per pixel.
        exposure: total exposure T of the co-add, s.
        zero_point: electrons per second from a source of AB magnitude 24.
    """

    sky: float
    exposure: float
    zero_point: float


@dataclass(frozen=True)
class SurveyNumbers:
    """The user's survey: per band (a tuple of (band, :class:`BandNumbers`) pairs, hashable), the visit
    length (s), the read noise per visit (electrons), a name and the file it came from."""

    bands: tuple[tuple[str, BandNumbers], ...]
    visit_s: float = VISIT_S
    read_noise: float = 0.0
    name: str = ""
    source: str = ""

    def band(self, band: str) -> BandNumbers:
        """The numbers of one band (KeyError if the file has none)."""
        return dict(self.bands)[band]

    def sky(self, bands: Sequence[str]) -> np.ndarray:
        """Sky B per band, electrons per pixel, (B,)."""
        return np.array([self.band(b).sky for b in bands])

    def exposure(self, bands: Sequence[str]) -> np.ndarray:
        """Co-add exposure T per band, s, (B,)."""
        return np.array([self.band(b).exposure for b in bands])

    def noise_variance(self, bands: Sequence[str]) -> np.ndarray:
        """Expected variance of a blank co-add pixel per band: B + N read_noise^2, electrons^2, (B,)."""
        return self.sky(bands) + self.exposure(bands) / self.visit_s * self.read_noise ** 2

    def as_dict(self) -> dict[str, Any]:
        """The numbers as the file gives them (for summary.json)."""
        return {"name": self.name, "source": self.source, "pixel_scale_arcsec": PIXEL_SCALE, "visit_s": self.visit_s,
                "read_noise_e": self.read_noise,
                "bands": {b: {"sky_e_per_pixel": v.sky, "exposure_s": v.exposure, "zero_point_e_per_s": v.zero_point}
                          for b, v in self.bands}}


def _number(value: Any, what: str, path: Path, *, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise file_error(path, f"{what} must be a finite number, got {value!r}")
    if (value <= 0) if positive else (value < 0):
        raise file_error(path, f"{what} must be {'positive' if positive else 'non-negative'}, got {value!r}")
    return float(value)


def survey_from_mapping(data: Any, path: str | Path, bands: Sequence[str] | None = None) -> SurveyNumbers:
    """Validate a parsed survey file (the module docstring's layout).

    Args:
        data: the parsed JSON.
        path: the file, for the messages.
        bands: the dataset's bands, all of which the file must give [default: None, not checked].

    Returns:
        The :class:`SurveyNumbers`.

    Raises:
        FileError: one line naming the file and the first problem.
    """
    path = Path(path)
    if not isinstance(data, Mapping):
        raise file_error(path, "a survey file is a JSON object with a 'bands' object (see docs/robustness.md)")
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        raise file_error(path, f"unknown key {unknown[0]!r}; a survey file has {', '.join(sorted(TOP_KEYS))}")
    scale = _number(data.get("pixel_scale_arcsec", PIXEL_SCALE), "pixel_scale_arcsec", path)
    if abs(scale / PIXEL_SCALE - 1.0) > PIXEL_SCALE_TOLERANCE:
        raise file_error(path, f"pixel_scale_arcsec {scale} is not LSST's {PIXEL_SCALE}: the corruptions' PSF kernels, "
                               "defects and trails are drawn on LSST pixels; resample the images to 0.2\"/pixel")
    visit = _number(data.get("visit_s", VISIT_S), "visit_s", path)
    read_noise = _number(data.get("read_noise_e", 0.0), "read_noise_e", path, positive=False)
    given = data.get("bands")
    if not isinstance(given, Mapping) or not given:
        raise file_error(path, "'bands' must be an object of bands, e.g. {\"r\": {\"sky_e_per_pixel\": ..., "
                               "\"exposure_s\": ...}}")
    numbers = []
    for band, values in given.items():
        if band not in BAND_SPECS:
            raise file_error(path, f"band {band!r} is not one the corruptions model ({', '.join(BAND_SPECS)})")
        if not isinstance(values, Mapping):
            raise file_error(path, f"band {band!r} must be an object with sky_e_per_pixel and exposure_s")
        extra = sorted(set(values) - BAND_KEYS)
        if extra:
            raise file_error(path, f"band {band!r}: unknown key {extra[0]!r}; a band has {', '.join(sorted(BAND_KEYS))}")
        for key in ("sky_e_per_pixel", "exposure_s"):
            if key not in values:
                raise file_error(path, f"band {band!r} has no {key}")
        sky = _number(values["sky_e_per_pixel"], f"band {band!r} sky_e_per_pixel", path)
        exposure = _number(values["exposure_s"], f"band {band!r} exposure_s", path)
        if exposure < visit:
            raise file_error(path, f"band {band!r} exposure_s {exposure} is shorter than one visit ({visit} s)")
        zero_point = _number(values.get("zero_point_e_per_s", BAND_SPECS[band].zero_point),
                             f"band {band!r} zero_point_e_per_s", path)
        numbers.append((band, BandNumbers(sky, exposure, zero_point)))
    if bands is not None:
        missing = [b for b in bands if b not in dict(numbers)]
        if missing:
            raise file_error(path, f"gives no numbers for the dataset's band {missing[0]!r} (bands {', '.join(bands)})")
    name = data.get("name", "")
    if not isinstance(name, str):
        raise file_error(path, f"'name' must be a string, got {name!r}")
    return SurveyNumbers(tuple(numbers), visit, read_noise, name, str(path))


def read_survey(path: str | Path, bands: Sequence[str] | None = None) -> SurveyNumbers:
    """Read and validate a survey file (:func:`survey_from_mapping`).

    Raises:
        FileError: the file is missing, not JSON, or its numbers are invalid (one line).
    """
    path = Path(path)
    if not path.is_file():
        raise file_error(path, "survey file not found")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise file_error(path, f"is not valid JSON ({str(exc).splitlines()[0]})") from None
    return survey_from_mapping(data, path, bands)
