"""Write a small FITS catalogue of galaxy cutouts, the input of docs/own-data.md.

What a survey team might hand over: one FITS cube per galaxy and depth (2 bands, g and r,
64 x 64 pixels, background-subtracted electrons), a deep and a wide (shallower) cutout of
each galaxy, and a catalogue (a FITS binary table) with the galaxy id, its morphology and
the two cutouts' paths. Four classes of simple shapes:

- ``disk``: an inclined exponential disk;
- ``spheroid``: a compact, round, steep (de Vaucouleurs-like) profile, redder;
- ``merger``: two blobs of different brightness, 4-9 pixels apart;
- ``ring``: a thin ring around a faint core.

Scenes are drawn with random size, orientation, brightness and centre offset, observed at a
deep depth (10 years' worth of exposure) and a wide one (1 year): electrons = depth x scene,
plus Gaussian noise of variance sky + signal (the sky per pixel of LSST-like g and r bands),
sky subtracted. Deterministic for one --seed.

Usage::

    python docs/examples/make_fits_catalog.py --out owncat --galaxies 300 --seed 0

writes ``owncat/catalog.fits`` and ``owncat/cutouts/{deep,wide}/gal_NNNN.fits``.
Needs numpy and astropy only.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

CLASSES = ("disk", "spheroid", "merger", "ring")
BANDS = ("g", "r")
SIZE = 64
#: sky electrons per pixel per year of exposure (LSST-like g and r)
SKY_PER_YEAR = {"g": 2330.0, "r": 12720.0}
#: years of exposure of the two depths
DEPTHS = {"deep": 10.0, "wide": 1.0}
#: per-band flux of each class relative to r (colours: spheroids redder)
COLOURS = {"disk": (0.8, 1.0), "spheroid": (0.45, 1.0), "merger": (0.7, 1.0), "ring": (0.9, 1.0)}


def _grid(dx: float, dy: float, angle: float, axis_ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """Elliptical radius coordinates about (dx, dy), rotated by ``angle``."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] - (SIZE - 1) / 2.0
    x, y = xx - dx, yy - dy
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * x + s * y, -s * x + c * y
    return u, v / axis_ratio


def scene(kind: str, rng: np.random.Generator) -> np.ndarray:
    """The noiseless one-year scene (2, SIZE, SIZE), electrons per pixel."""
    dx, dy = rng.normal(0.0, 1.5, 2)
    angle = rng.uniform(0.0, np.pi)
    flux = 10 ** rng.uniform(4.6, 5.3)  # total r-band electrons per year
    if kind == "disk":
        u, v = _grid(dx, dy, angle, rng.uniform(0.3, 0.8))
        profile = np.exp(-np.hypot(u, v) / rng.uniform(3.0, 6.0))
    elif kind == "spheroid":
        u, v = _grid(dx, dy, angle, rng.uniform(0.8, 1.0))
        profile = np.exp(-7.67 * (np.hypot(u, v) / rng.uniform(2.0, 4.0)) ** 0.25)
    elif kind == "merger":
        sep, ratio = rng.uniform(4.0, 9.0), rng.uniform(0.3, 1.0)
        ox, oy = 0.5 * sep * np.cos(angle), 0.5 * sep * np.sin(angle)
        a = np.hypot(*_grid(dx + ox, dy + oy, angle, 0.8))
        b = np.hypot(*_grid(dx - ox, dy - oy, angle, 0.8))
        profile = np.exp(-a / rng.uniform(1.5, 3.0)) + ratio * np.exp(-b / rng.uniform(1.5, 3.0))
    else:  # ring
        u, v = _grid(dx, dy, angle, rng.uniform(0.6, 1.0))
        radius = np.hypot(u, v)
        r0 = rng.uniform(8.0, 14.0)
        profile = np.exp(-0.5 * ((radius - r0) / 1.5) ** 2) + 0.5 * np.exp(-radius / 1.5)
    profile = profile / profile.sum() * flux
    return np.stack([c * profile for c in COLOURS[kind]]).astype(np.float64)


def observe(one_year: np.ndarray, years: float, rng: np.random.Generator) -> np.ndarray:
    """Background-subtracted electrons of a co-add of ``years`` (Gaussian noise, variance sky + signal)."""
    signal = years * one_year
    sky = np.array([SKY_PER_YEAR[b] * years for b in BANDS])[:, None, None]
    return (signal + rng.standard_normal(signal.shape) * np.sqrt(sky + signal)).astype(np.float32)


def write(out: Path, galaxies: int, seed: int) -> Path:
    """Write the catalogue and the cutouts; return the catalogue's path."""
    rng = np.random.default_rng(seed)
    labels = np.arange(galaxies) % len(CLASSES)
    rng.shuffle(labels)
    rows = {"galaxy_id": [], "morph": [], "deep": [], "wide": [], "r_flux": []}
    for depth in DEPTHS:
        (out / "cutouts" / depth).mkdir(parents=True, exist_ok=True)
    for i, label in enumerate(labels):
        kind = CLASSES[label]
        one_year = scene(kind, rng)
        galaxy_id = 1000 + i
        for depth, years in DEPTHS.items():
            hdu = fits.PrimaryHDU(observe(one_year, years, rng))
            hdu.header["BUNIT"] = ("electron", "background-subtracted co-add")
            hdu.header["BANDS"] = (",".join(BANDS), "bands along the first numpy axis")
            hdu.header["DEPTH"] = (depth, f"{years:g} years of exposure")
            hdu.writeto(out / "cutouts" / depth / f"gal_{galaxy_id}.fits", overwrite=True)
            rows[depth].append(f"cutouts/{depth}/gal_{galaxy_id}.fits")
        rows["galaxy_id"].append(galaxy_id)
        rows["morph"].append(kind)
        rows["r_flux"].append(float(one_year[1].sum()))
    path = out / "catalog.fits"
    Table(rows).write(path, overwrite=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("owncat"), help="folder to write [default: owncat]")
    parser.add_argument("--galaxies", type=int, default=300, help="galaxies, each at both depths [default: 300]")
    parser.add_argument("--seed", type=int, default=0, help="random seed [default: 0]")
    args = parser.parse_args()
    path = write(args.out, args.galaxies, args.seed)
    print(f"{path}: {args.galaxies} galaxies, {len(CLASSES)} classes ({', '.join(CLASSES)}), "
          f"bands {', '.join(BANDS)}, {SIZE}x{SIZE}, depths {', '.join(DEPTHS)}")


if __name__ == "__main__":
    main()
