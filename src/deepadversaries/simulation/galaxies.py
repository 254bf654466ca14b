"""Parametric galaxies of three families (SPEC 3.2), rendered with GalSim.

- ``elliptical``: a Sérsic spheroid (n ~ 2-6) with an optional faint disk, red colours;
- ``spiral``: exponential disk with logarithmic spiral-arm modulation, a small Sérsic
  bulge and star-forming knots (``galsim.RandomKnots`` convolved with a small Gaussian),
  blue colours;
- ``merger``: two (sometimes three) galaxies 1-6" apart with flux ratio 1:1-1:4, tidal
  tails, sometimes a bridge, a lopsided diffuse envelope and tidally sheared members.

Every prior is broad and overlaps the others, so the family does not decide the label:
the label is the Gini-M20 class measured on the rendered image (``morphology``).

A galaxy has two kinds of light:

- analytic components (Sérsic, exponential): unit-flux GalSim profiles, drawn with
  GalSim's FFT convolution with the band's PSF and pixel;
- structured layers (spiral arms, knots, tidal tails and bridges) that GalSim has no
  profile for: unit-sum images on a 2x finer grid of the stamp, combined per band by
  their colours, convolved with the band's PSF sampled on that grid and summed over
  2x2 blocks (pixel integration).

Brightness: the total r magnitude is normal around ``MAG_R_MEDIAN`` (truncated at
+-2.5 sigma) minus 2.5 log10(brightness); ``brightness`` = 1 is the default regime whose
median Y10 r-band peak S/N per pixel is near 20 (measured in docs/simulator.md).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable

import galsim
import numpy as np
from scipy import fft as sfft
from scipy import ndimage as ndi

from deepadversaries.simulation import survey
from deepadversaries.errors import check_choice

FAMILIES: tuple[str, ...] = ("spiral", "elliptical", "merger")

#: median total r magnitude at brightness 1, calibrated so that the median Y10 r-band
#: peak S/N per pixel of a dataset is about 20 (measurement in docs/simulator.md)
MAG_R_MEDIAN = 22.82
MAG_R_SIGMA = 1.1
MAG_R_TRUNCATE = 2.5  # in sigma
#: size-luminosity slope: r_e scales as 10^(-SIZE_LUM_SLOPE (m - m_median))
SIZE_LUM_SLOPE = 0.12
#: median half-light radius (arcsec) of ellipticals and of spiral disks at the median magnitude
ELLIPTICAL_RE_MEDIAN = 1.0
SPIRAL_RE_MEDIAN = 0.8
#: Sérsic indices are rounded to this step so that GalSim reuses its Hankel tables
SERSIC_STEP = 0.25
#: Sérsic profiles are truncated at this many half-light radii (keeps FFTs small)
SERSIC_TRUNC = 8.0
#: structured layers live on a grid this many times finer than the pixels
FINE = 2
FINE_SCALE = survey.PIXEL_SCALE / FINE
#: half-width (fine pixels) of the PSF kernel used for the structured layers
KERNEL_HALF = 30

_GSPARAMS = galsim.GSParams()


# -- geometry -----------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """Where a (member) galaxy sits: centre (arcsec) and tidal shear (g1, g2)."""

    center: tuple[float, float] = (0.0, 0.0)
    tidal: tuple[float, float] = (0.0, 0.0)

    def matrix(self, q: float = 1.0, beta: float = 0.0) -> np.ndarray:
        """Jacobian from face-on to sky coordinates: tidal shear after the projection shear."""
        proj = galsim.Shear(q=q, beta=beta * galsim.radians).getMatrix()
        tidal = galsim.Shear(g1=self.tidal[0], g2=self.tidal[1]).getMatrix()
        return tidal @ proj

    def apply(self, profile: galsim.GSObject, q: float = 1.0, beta: float = 0.0) -> galsim.GSObject:
        """Project, tidally shear and place a GalSim profile (same convention as :meth:`matrix`)."""
        out = profile.shear(q=q, beta=beta * galsim.radians)
        if self.tidal != (0.0, 0.0):
            out = out.shear(g1=self.tidal[0], g2=self.tidal[1])
        return out.shift(*self.center)


def fine_coordinates(size: int = survey.IMAGE_SIZE) -> np.ndarray:
    """Sky coordinates (arcsec) of the fine-grid pixel centres along one axis of a stamp."""
    n = FINE * size
    return (np.arange(n) - (n - 1) / 2) * FINE_SCALE


def _window(center: np.ndarray, radius: float, size: int) -> tuple[slice, np.ndarray, np.ndarray]:
    """Fine-grid slice around ``center`` (arcsec) with half-width ``radius`` and its coordinates."""
    n = FINE * size
    c = fine_coordinates(size)
    lo = np.clip(np.searchsorted(c, center - radius), 0, n)
    hi = np.clip(np.searchsorted(c, center + radius), 0, n)
    sl = (slice(int(lo[1]), int(hi[1])), slice(int(lo[0]), int(hi[0])))
    x, y = np.meshgrid(c[sl[1]], c[sl[0]])
    return sl, x, y


def deposit(points: np.ndarray, weights: np.ndarray, size: int = survey.IMAGE_SIZE) -> np.ndarray:
    """Spread weighted points (arcsec) onto the fine grid with bilinear weights."""
    n = FINE * size
    out = np.zeros((n, n))
    col = points[:, 0] / FINE_SCALE + (n - 1) / 2
    row = points[:, 1] / FINE_SCALE + (n - 1) / 2
    ok = (col >= 0) & (col < n - 1) & (row >= 0) & (row < n - 1)
    c0, r0 = np.floor(col[ok]).astype(int), np.floor(row[ok]).astype(int)
    fc, fr = col[ok] - c0, row[ok] - r0
    w = weights[ok]
    for dr, dc, wt in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc), (1, 0, fr * (1 - fc)), (1, 1, fr * fc)):
        np.add.at(out, (r0 + dr, c0 + dc), w * wt)
    return out


@functools.lru_cache(maxsize=None)
def _fine_kernel(band: str) -> np.ndarray:
    """The band's PSF sampled on the fine grid (no pixel), normalised to unit sum."""
    k = survey.psf(band).drawImage(nx=2 * KERNEL_HALF + 1, ny=2 * KERNEL_HALF + 1, scale=FINE_SCALE,
                                   method="no_pixel").array
    return k / k.sum()


@functools.lru_cache(maxsize=256)
def _fine_kernel_fft(band: str, shape: tuple[int, int]) -> np.ndarray:
    return sfft.rfft2(_fine_kernel(band), shape)


def convolve_fine(layer: np.ndarray, band: str) -> tuple[tuple[slice, slice], np.ndarray]:
    """PSF-convolve a fine-grid flux image and integrate it over the stamp's pixels.

    Only the bounding box of the non-zero light (plus the kernel's reach) is convolved;
    returns the stamp slice it covers and the pixel-integrated image there.
    """
    n = layer.shape[0]
    rows = np.flatnonzero(layer.any(axis=1))
    cols = np.flatnonzero(layer.any(axis=0))
    if len(rows) == 0:
        return (slice(0, 0), slice(0, 0)), np.zeros((0, 0))

    def span(idx: np.ndarray) -> tuple[int, int]:
        lo = max(0, int(idx[0]) - KERNEL_HALF) // FINE * FINE
        hi = min(n, -(-(int(idx[-1]) + 1 + KERNEL_HALF) // FINE) * FINE)
        return lo, hi

    (r0, r1), (c0, c1) = span(rows), span(cols)
    sub = layer[r0:r1, c0:c1]
    h, w = sub.shape
    shape = (sfft.next_fast_len(h + 2 * KERNEL_HALF, real=True), sfft.next_fast_len(w + 2 * KERNEL_HALF, real=True))
    full = sfft.irfft2(sfft.rfft2(sub, shape) * _fine_kernel_fft(band, shape), shape)
    conv = full[KERNEL_HALF:KERNEL_HALF + h, KERNEL_HALF:KERNEL_HALF + w]
    pixels = conv.reshape(h // FINE, FINE, w // FINE, FINE).sum(axis=(1, 3))
    return (slice(r0 // FINE, r1 // FINE), slice(c0 // FINE, c1 // FINE)), pixels


# -- galaxy container -------------------------------------------------------------


@dataclass
class Component:
    """Analytic light: a unit-flux GalSim profile and its electrons per year in g, r, i."""

    profile: galsim.GSObject
    fluxes: np.ndarray  # shape (3,), BANDS order


@dataclass
class Layer:
    """Structured light: a unit-sum fine-grid image and its electrons per year in g, r, i."""

    image: np.ndarray
    fluxes: np.ndarray


@dataclass
class Galaxy:
    """A galaxy ready to render: analytic components, structured layers, catalogue parameters."""

    family: str
    components: list[Component]
    layers: list[Layer] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    size: int = survey.IMAGE_SIZE

    def render(self, band: str) -> np.ndarray:
        """Noiseless, PSF-convolved, pixel-integrated one-year image of ``band`` (electrons)."""
        b = survey.BANDS.index(band)
        image = np.zeros((self.size, self.size))
        if self.components:
            parts = [c.profile.withFlux(float(c.fluxes[b])) for c in self.components]
            obj = galsim.Convolve(parts[0] if len(parts) == 1 else galsim.Sum(parts), survey.psf(band))
            image += obj.drawImage(nx=self.size, ny=self.size, scale=survey.PIXEL_SCALE).array
        if self.layers:
            fine = np.zeros_like(self.layers[0].image)
            for layer in self.layers:
                fine += layer.fluxes[b] * layer.image
            where, pixels = convolve_fine(fine, band)
            image[where] += pixels
        return image

    def render_all(self) -> np.ndarray:
        """The (3, H, W) one-year scene in g, r, i."""
        return np.stack([self.render(b) for b in survey.BANDS])

    def total_fluxes(self) -> np.ndarray:
        """Electrons per year in g, r, i over all components and layers."""
        return np.sum([c.fluxes for c in self.components] + [l.fluxes for l in self.layers], axis=0)


# -- priors ----------------------------------------------------------------------


def draw_magnitude(rng: np.random.Generator, brightness: float = 1.0) -> float:
    """Total r magnitude: truncated normal around the median, shifted by -2.5 log10(brightness)."""
    z = rng.normal()
    while abs(z) > MAG_R_TRUNCATE:
        z = rng.normal()
    return float(MAG_R_MEDIAN + MAG_R_SIGMA * z - 2.5 * np.log10(brightness))


def size_factor(mag_r: float, brightness: float) -> float:
    """Size-luminosity scaling of the half-light radius (1 at the median magnitude)."""
    median = MAG_R_MEDIAN - 2.5 * np.log10(brightness)
    return float(10.0 ** (-SIZE_LUM_SLOPE * (mag_r - median)))


def round_sersic(n: float) -> float:
    """Round a Sérsic index to the table step (GalSim caches one table per index)."""
    return float(np.round(n / SERSIC_STEP) * SERSIC_STEP)


def _lognormal(rng: np.random.Generator, median: float, sigma: float, lo: float, hi: float) -> float:
    return float(np.clip(median * np.exp(sigma * rng.normal()), lo, hi))


def _disk_axis_ratio(rng: np.random.Generator, q0: float = 0.2) -> float:
    """Projected axis ratio of a thin disk of intrinsic thickness q0 at random inclination."""
    cos_i = rng.uniform(0.0, 1.0)
    return float(np.sqrt(cos_i**2 * (1 - q0**2) + q0**2))


def band_fluxes(mag_r: float, g_r: float, r_i: float) -> np.ndarray:
    """Electrons per year in g, r, i of a source of r magnitude and colours g-r, r-i."""
    mags = {"g": mag_r + g_r, "r": mag_r, "i": mag_r - r_i}
    return np.array([float(survey.electrons(mags[b], b, 1)) for b in survey.BANDS])


def _part(mag_r: float, fraction: float) -> float:
    """Magnitude of a ``fraction`` of the light of a source of magnitude ``mag_r``."""
    return float(mag_r - 2.5 * np.log10(max(fraction, 1e-6)))


@functools.lru_cache(maxsize=None)
def _unit_sersic(n: float) -> galsim.GSObject:
    """Sérsic of index n, half-light radius 1", truncated at SERSIC_TRUNC (built once per index)."""
    return galsim.Sersic(n=n, half_light_radius=1.0, trunc=SERSIC_TRUNC, gsparams=_GSPARAMS)


def _sersic(n: float, r_e: float) -> galsim.GSObject:
    # dilating one cached profile per index avoids GalSim's per-object set-up of truncated Sérsics
    return _unit_sersic(n).dilate(r_e)


# -- structured layers ------------------------------------------------------------


def spiral_arms(r_e: float, q: float, beta: float, place: Placement, n_arms: int, pitch_deg: float,
                sharpness: float, phase: float, size: int = survey.IMAGE_SIZE) -> np.ndarray:
    """Unit-sum fine-grid image of an exponential disk modulated by a logarithmic spiral.

    Face-on surface brightness exp(-r/h) x [(1 + cos(m (theta - ln(r/h)/tan(pitch)) - phase)) / 2]^w,
    tapered towards the centre (arms start outside the bulge), then projected and placed
    exactly like the analytic components (:class:`Placement`).
    """
    h = r_e / 1.678
    m = place.matrix(q, beta)
    stretch = float(np.linalg.norm(m, 2))
    center = np.asarray(place.center)
    sl, x, y = _window(center, 6.0 * r_e * stretch, size)
    out = np.zeros((FINE * size,) * 2)
    if x.size == 0:
        return out
    inv = np.linalg.inv(m)
    dx, dy = x - center[0], y - center[1]
    xf = inv[0, 0] * dx + inv[0, 1] * dy
    yf = inv[1, 0] * dx + inv[1, 1] * dy
    r = np.hypot(xf, yf) + 1e-9
    theta = np.arctan2(yf, xf)
    arg = n_arms * (theta - np.log(r / h) / np.tan(np.radians(pitch_deg))) - phase
    arms = ((1.0 + np.cos(arg)) / 2.0) ** sharpness
    taper = 1.0 - np.exp(-((r / (0.6 * h)) ** 2))
    out[sl] = np.exp(-r / h) * arms * taper
    total = out.sum()
    return out / total if total > 0 else out


def knots_layer(n_knots: int, r_e: float, q: float, beta: float, place: Placement, sigma: float, seed: int,
                size: int = survey.IMAGE_SIZE) -> np.ndarray:
    """Unit-sum fine-grid image of ``galsim.RandomKnots`` convolved with a Gaussian of ``sigma`` arcsec."""
    knots = galsim.RandomKnots(n_knots, half_light_radius=r_e, flux=1.0, rng=galsim.BaseDeviate(seed))
    pts = knots.points @ place.matrix(q, beta).T + np.asarray(place.center)
    layer = ndi.gaussian_filter(deposit(pts, np.full(len(pts), 1.0 / len(pts)), size), sigma / FINE_SCALE,
                                mode="constant")
    total = layer.sum()
    return layer / total if total > 0 else layer


def tidal_curve(rng: np.random.Generator, start: np.ndarray, direction: float, length: float,
                n_points: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Points of a curved tidal tail from ``start`` and their weights (fading along the tail)."""
    s = np.linspace(0.0, length, n_points)
    curvature = rng.uniform(0.3, 1.2) * rng.choice([-1, 1]) / max(length, 0.5)
    angle = direction + curvature * s
    step = length / (n_points - 1)
    pts = start + np.cumsum(np.stack([np.cos(angle), np.sin(angle)], axis=1) * step, axis=0)
    weights = np.exp(-s / (0.6 * length)) * (1 - np.exp(-s / (0.15 * length)))
    return pts, weights / weights.sum()


# -- families ---------------------------------------------------------------------


def _elliptical(rng: np.random.Generator, mag_r: float, size: float, place: Placement,
                galaxy: Galaxy) -> dict[str, Any]:
    n = round_sersic(rng.uniform(2.0, 6.0))
    r_e = _lognormal(rng, ELLIPTICAL_RE_MEDIAN * size, 0.4, 0.15, 4.0)
    q = float(rng.uniform(0.5, 1.0))
    beta = float(rng.uniform(0, np.pi))
    bulge_frac = float(min(1.0, rng.uniform(0.75, 1.05)))
    g_r = float(rng.normal(0.75, 0.06))
    r_i = float(rng.normal(0.40, 0.04))
    galaxy.components.append(Component(place.apply(_sersic(n, r_e), q, beta),
                                       band_fluxes(_part(mag_r, bulge_frac), g_r, r_i)))
    if bulge_frac < 1.0:
        disk = galsim.Exponential(half_light_radius=r_e * rng.uniform(1.5, 2.5), gsparams=_GSPARAMS)
        galaxy.components.append(Component(place.apply(disk, _disk_axis_ratio(rng), beta),
                                           band_fluxes(_part(mag_r, 1 - bulge_frac), g_r - 0.15, r_i - 0.08)))
    return dict(r_eff_arcsec=r_e, sersic_n=n, axis_ratio=q, bulge_fraction=bulge_frac, g_r=g_r, r_i=r_i)


def _spiral(rng: np.random.Generator, mag_r: float, size: float, place: Placement,
            galaxy: Galaxy) -> dict[str, Any]:
    r_e = _lognormal(rng, SPIRAL_RE_MEDIAN * size, 0.35, 0.25, 3.0)
    q = _disk_axis_ratio(rng)
    beta = float(rng.uniform(0, np.pi))
    bulge_frac = float(max(0.0, rng.uniform(-0.05, 0.4)))
    bulge_n = round_sersic(rng.uniform(1.0, 4.0))
    bulge_re = max(0.08, r_e * rng.uniform(0.15, 0.4))
    arm_frac = float(rng.uniform(0.3, 0.7))  # of the disk light
    knot_frac = float(rng.uniform(0.05, 0.25))  # of the disk light
    n_arms = int(rng.choice([2, 2, 2, 3, 4]))
    pitch = float(rng.uniform(10.0, 30.0))
    sharpness = float(rng.uniform(1.5, 4.0))
    phase = float(rng.uniform(0, 2 * np.pi))
    n_knots = int(rng.integers(10, 41))
    knot_sigma = float(rng.uniform(0.04, 0.1))
    knot_seed = int(rng.integers(1, 2**31 - 1))
    g_r = float(rng.normal(0.45, 0.07))
    r_i = float(rng.normal(0.25, 0.05))

    disk_mag = _part(mag_r, 1 - bulge_frac)
    smooth = galsim.Exponential(half_light_radius=r_e, gsparams=_GSPARAMS)
    galaxy.components.append(Component(place.apply(smooth, q, beta),
                                       band_fluxes(_part(disk_mag, 1 - arm_frac - knot_frac), g_r, r_i)))
    if bulge_frac > 0:
        galaxy.components.append(Component(place.apply(_sersic(bulge_n, bulge_re), float(rng.uniform(0.7, 1.0)), beta),
                                           band_fluxes(_part(mag_r, bulge_frac), g_r + 0.25, r_i + 0.12)))
    arms = spiral_arms(r_e, q, beta, place, n_arms, pitch, sharpness, phase, galaxy.size)
    galaxy.layers.append(Layer(arms, band_fluxes(_part(disk_mag, arm_frac), g_r - 0.05, r_i - 0.03)))
    knots = knots_layer(n_knots, r_e, q, beta, place, knot_sigma, knot_seed, galaxy.size)
    galaxy.layers.append(Layer(knots, band_fluxes(_part(disk_mag, knot_frac), g_r - 0.25, r_i - 0.12)))
    return dict(r_eff_arcsec=r_e, sersic_n=bulge_n, axis_ratio=q, bulge_fraction=bulge_frac, g_r=g_r, r_i=r_i,
                n_arms=n_arms, pitch_deg=pitch, n_knots=n_knots)


def _merger(rng: np.random.Generator, mag_r: float, size: float, place: Placement,
            galaxy: Galaxy) -> dict[str, Any]:
    n_members = 3 if rng.uniform() < 0.2 else 2
    ratios = [1.0] + [float(rng.uniform(0.25, 1.0)) for _ in range(n_members - 1)]
    feature_frac = float(rng.uniform(0.12, 0.3))  # tails + bridge + envelope, of the total light
    separation = float(np.exp(rng.uniform(np.log(1.0), np.log(6.0))))
    angle = float(rng.uniform(0, 2 * np.pi))
    offsets = [np.zeros(2), separation * np.array([np.cos(angle), np.sin(angle)])]
    if n_members == 3:
        sep3 = float(np.exp(rng.uniform(np.log(1.0), np.log(6.0))))
        ang3 = angle + rng.uniform(np.pi / 3, 5 * np.pi / 3)
        offsets.append(sep3 * np.array([np.cos(ang3), np.sin(ang3)]))
    weights = np.array(ratios) / sum(ratios)
    centroid = np.sum([w * o for w, o in zip(weights, offsets)], axis=0)
    center = np.asarray(place.center)
    positions = [o - centroid + center for o in offsets]

    kinds = []
    for w, pos in zip(weights, positions):
        kind = "spiral" if rng.uniform() < 0.55 else "elliptical"
        kinds.append(kind)
        g = rng.uniform(0.05, 0.3)
        phi = rng.uniform(0, np.pi)
        member = Placement((float(pos[0]), float(pos[1])), (float(g * np.cos(2 * phi)), float(g * np.sin(2 * phi))))
        builder = _spiral if kind == "spiral" else _elliptical
        builder(rng, _part(mag_r, (1 - feature_frac) * w), size * (w / weights[0]) ** 0.3, member, galaxy)

    # tidal tails from the first two members, pointing away from each other; maybe a bridge
    pts, wts, widths = [], [], []
    for k in (0, 1):
        if k == 1 and rng.uniform() < 0.3:
            continue
        away = np.arctan2(*(positions[k] - positions[1 - k])[::-1]) + rng.uniform(-1.2, 1.2)
        p, w = tidal_curve(rng, positions[k], away, float(rng.uniform(1.5, 5.0)) * size**0.5)
        pts.append(p)
        wts.append(w * rng.uniform(0.5, 1.0))
        widths.append(float(rng.uniform(0.15, 0.45)))
    has_bridge = bool(rng.uniform() < 0.5)
    if has_bridge:
        t = np.linspace(0.0, 1.0, 300)[:, None]
        bow = rng.uniform(-0.3, 0.3) * separation
        normal = np.array([-np.sin(angle), np.cos(angle)])
        pts.append(positions[0] + t * (positions[1] - positions[0]) + bow * 4 * t * (1 - t) * normal)
        wts.append(np.full(len(t), rng.uniform(0.2, 0.5) / len(t)))
        widths.append(float(rng.uniform(0.15, 0.35)))
    tidal = np.zeros((FINE * galaxy.size,) * 2)
    for p, w, width in zip(pts, wts, widths):
        tidal += ndi.gaussian_filter(deposit(p, w, galaxy.size), width / FINE_SCALE, mode="constant")
    envelope_share = float(rng.uniform(0.3, 0.6))
    g_r_t, r_i_t = float(rng.normal(0.5, 0.08)), float(rng.normal(0.28, 0.05))
    if tidal.sum() > 0:
        galaxy.layers.append(Layer(tidal / tidal.sum(),
                                   band_fluxes(_part(mag_r, feature_frac * (1 - envelope_share)), g_r_t, r_i_t)))

    # lopsided diffuse envelope: offset from the light centre, stretched along the pair
    shift = rng.uniform(0.2, 0.6) * separation
    env_angle = angle + rng.uniform(-1.0, 1.0)
    env_center = center + shift * np.array([np.cos(env_angle), np.sin(env_angle)])
    env = galsim.Exponential(half_light_radius=max(0.5, 0.5 * separation + 0.8 * size * rng.uniform(0.8, 1.5)),
                             gsparams=_GSPARAMS)
    env = env.shear(g=rng.uniform(0.1, 0.5), beta=float(angle + rng.uniform(-0.5, 0.5)) * galsim.radians)
    env = env.shift(float(env_center[0]), float(env_center[1]))
    galaxy.components.append(Component(env, band_fluxes(_part(mag_r, feature_frac * envelope_share),
                                                        g_r_t + 0.1, r_i_t + 0.05)))
    return dict(n_members=n_members, separation_arcsec=separation, flux_ratio=min(ratios) / max(ratios),
                members="+".join(kinds), has_bridge=has_bridge, feature_fraction=feature_frac)


_BUILDERS: dict[str, Callable[..., dict[str, Any]]] = {
    "spiral": _spiral,
    "elliptical": _elliptical,
    "merger": _merger,
}

#: catalogue parameters every galaxy has (NaN where a family does not define them)
PARAM_NAMES: tuple[str, ...] = ("r_eff_arcsec", "sersic_n", "axis_ratio", "bulge_fraction", "g_r", "r_i",
                                "separation_arcsec", "flux_ratio", "n_members")


def draw_galaxy(family: str, rng: np.random.Generator, brightness: float = 1.0,
                size: int = survey.IMAGE_SIZE) -> Galaxy:
    """Draw one galaxy of ``family`` from its priors, using only ``rng`` for randomness."""
    if family not in _BUILDERS:
        check_choice(family, FAMILIES, "galaxy family")
    mag_r = draw_magnitude(rng, brightness)
    size_scale = size_factor(mag_r, brightness)
    jitter = rng.uniform(-0.5, 0.5, 2) * survey.PIXEL_SCALE
    galaxy = Galaxy(family, [], [], {}, size)
    params = _BUILDERS[family](rng, mag_r, size_scale, Placement((float(jitter[0]), float(jitter[1]))), galaxy)
    out: dict[str, Any] = {name: float("nan") for name in PARAM_NAMES}
    out["n_members"] = 1
    out.update(params)
    totals = galaxy.total_fluxes()
    for b, band in enumerate(survey.BANDS):
        out[f"mag_{band}"] = float(survey.magnitude(totals[b], band, 1))
    galaxy.params = out
    return galaxy
