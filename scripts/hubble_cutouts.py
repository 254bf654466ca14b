"""A label-free robustness card of real galaxies: cutouts of the Hubble Deep Field.

Real pixels that no simulator here produced: scikit-image ships the Hubble Deep Field
(``skimage.data.hubble_deep_field()``, HST WFPC2, an 8-bit colour composite of F450W, F606W
and F814W, 872 x 1000 pixels). This script

1. subtracts each band's sky (sigma-clipped median) and measures its noise (clipped standard
   deviation);
2. finds the sources with photutils image segmentation of the band sum (at least
   ``min_area`` connected pixels above 3 sigma) and keeps those whose ``size`` x ``size``
   stamp about the centroid lies inside the image (and inside ``--region`` when given);
3. cuts them out as (N, 3, size, size) float32, bands blue to red (F450W, F606W, F814W: the
   order of g, r, i), in the composite's display counts minus the sky;
4. makes a shallower second domain of the same galaxies by adding seeded Gaussian noise of
   sigma_b * sqrt(9) per band, so the sky noise is sqrt(10) times the original — the noise
   ratio of LSST's 1-year to its 10-year depth (the galaxies' own Poisson noise is not
   scaled);
5. imports them with ``deepadv import`` (HDF5; domains ``hdf`` and ``hdf_shallow``); and, given
   ``--run``, prints the label-free card of that model (``deepadv card --unlabelled``).

The cutouts have no morphology labels, but the dataset format keeps one class per galaxy with
every class in every split. Galaxy i is given class i mod K in rotation (and split train,
valid, test, test, test by (i // K) mod 5, so that 60 % are test galaxies): a format filler
that says nothing about the galaxy. ``--unlabelled`` never reads it — tests/test_card.py checks
that the label-free card is the same with the classes permuted. Do not use these labels for
anything else.

The corruption benchmark models LSST co-adds in electrons, which these display counts are
not: the card says so and leaves the corruptions out. The pixel normalisation is fitted on
these images by ``deepadv import`` (the paper stretch by default), so the model sees inputs
in its usual range; it was trained on simulated LSST galaxies, so expect it to be unsure here —
which is what the stability numbers measure.

    python scripts/hubble_cutouts.py --out work/hubble --run runs/quick/convnet_regular
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import h5py
import numpy as np

from deepadversaries import CLASSES
from deepadversaries.cli import main as deepadv

BANDS = ("F450W", "F606W", "F814W")
DOMAIN_NAMES = "hdf,hdf_shallow"
#: the noise of the shallow domain is this times the original's (LSST Y1 against Y10)
DEPTH_NOISE_RATIO = np.sqrt(10.0)


def find_sources(image: np.ndarray, *, min_area: int = 60, size: int = 100,
                 region: tuple[int, int, int, int] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sky-subtracted bands, their noise and the stamp centres of the sources.

    Args:
        image: (H, W, 3) RGB composite (R = F814W, G = F606W, B = F450W).
        min_area: fewest connected pixels above 3 sigma that make a source [default: 60].
        size: stamp side, pixels [default: 100].
        region: (x0, y0, x1, y1) the part of the image searched [default: all of it].

    Returns:
        ``(bands (3, H, W) float64 blue to red, sky sigma (3,), centres (N, 2) int (x, y))``,
        the centres in order of the segmentation labels.
    """
    from astropy.stats import sigma_clipped_stats
    from photutils.segmentation import SourceCatalog, detect_sources

    raw = np.moveaxis(np.asarray(image, dtype=np.float64)[:, :, ::-1], 2, 0)  # (3, H, W), blue to red
    stats = [sigma_clipped_stats(b, sigma=3.0) for b in raw]
    bands = np.stack([b - s[1] for b, s in zip(raw, stats)])
    sigma = np.array([s[2] for s in stats])
    total = bands.sum(axis=0)
    _, _, total_sigma = sigma_clipped_stats(total, sigma=3.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # photutils' deprecation notes on argument names
        segments = detect_sources(total, 3.0 * total_sigma, n_pixels=min_area)
        catalog = SourceCatalog(total, segments)
        xs, ys = np.asarray(catalog.x_centroid), np.asarray(catalog.y_centroid)
    h, w = total.shape
    x0, y0, x1, y1 = region if region is not None else (0, 0, w, h)
    half = size // 2
    centres = [(int(round(x)), int(round(y))) for x, y in zip(xs, ys) if np.isfinite(x) and np.isfinite(y)]
    keep = [(x, y) for x, y in centres
            if max(half, x0 + half) <= x <= min(w - size + half, x1 - size + half)
            and max(half, y0 + half) <= y <= min(h - size + half, y1 - size + half)]
    return bands, sigma, np.array(keep, dtype=np.int64).reshape(-1, 2)


def build_hubble_dataset(out: str | Path, *, min_area: int = 60, size: int = 100, seed: int = 0,
                         region: tuple[int, int, int, int] | None = None, max_sources: int | None = None) -> Path:
    """Cut the Hubble Deep Field's sources out and import them as a dataset folder ``OUT/data``.

    Args:
        out: a work folder (``cutouts.h5`` and ``data/`` are written in it).
        min_area, size, region: see :func:`find_sources`.
        seed: seed of the shallow domain's noise [default: 0].
        max_sources: keep at most this many sources, the first in label order [default: all].

    Returns:
        The dataset folder.
    """
    from skimage import data as skimage_data

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    bands, sigma, centres = find_sources(skimage_data.hubble_deep_field(), min_area=min_area, size=size,
                                         region=region)
    if max_sources is not None:
        centres = centres[:max_sources]
    k = len(CLASSES)
    if len(centres) < 5 * k:
        raise SystemExit(f"only {len(centres)} sources found; need at least {5 * k} (widen --region or lower "
                         "--min-area)")
    half = size // 2
    stamps = np.stack([bands[:, y - half:y - half + size, x - half:x - half + size] for x, y in centres])
    rng = np.random.default_rng(seed)
    extra = sigma * np.sqrt(DEPTH_NOISE_RATIO ** 2 - 1.0)
    shallow = stamps + rng.normal(size=stamps.shape) * extra[None, :, None, None]
    index = np.arange(len(centres))
    labels = np.array([CLASSES[i % k] for i in index], dtype="S")  # format filler, never read (see above)
    split = np.array(["train", "valid", "test", "test", "test"], dtype="S")[(index // k) % 5]
    h5 = out / "cutouts.h5"
    with h5py.File(h5, "w") as f:
        f["images"] = stamps.astype(np.float32)
        f["shallow"] = shallow.astype(np.float32)
        f["labels"] = labels
        f["split"] = split
        f["ids"] = index
        f["x"], f["y"] = centres[:, 0], centres[:, 1]
    data = out / "data"
    code = deepadv(["import", "--out", str(data), "--input", str(h5), "--images-key", "images",
                    "--target-images-key", "shallow", "--labels-key", "labels", "--split-key", "split",
                    "--ids-key", "ids", "--classes", ",".join(CLASSES), "--bands", ",".join(BANDS),
                    "--domain-names", DOMAIN_NAMES, "--overwrite"])
    if code != 0:
        raise SystemExit(f"deepadv import failed (exit {code})")
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="work folder (cutouts.h5, data/, card/)")
    parser.add_argument("--run", type=Path, help="run folder of the model to card (e.g. a quick ConvNet)")
    parser.add_argument("--min-area", type=int, default=60, help="fewest pixels of a source [60]")
    parser.add_argument("--region", help="x0,y0,x1,y1: search only this part of the image")
    parser.add_argument("--max-sources", type=int, help="keep at most this many sources")
    parser.add_argument("--level", default="quick", help="card level [quick]")
    args = parser.parse_args(argv)
    region = tuple(int(v) for v in args.region.split(",")) if args.region else None
    data = build_hubble_dataset(args.out, min_area=args.min_area, region=region, max_sources=args.max_sources)
    print(data)
    if args.run is None:
        return 0
    card = args.out / "card"
    code = deepadv(["card", "--run", str(args.run), "--data", str(data), "--unlabelled", "--level", args.level,
                    "--out", str(card), "--overwrite"])
    if code == 0:
        text = (card / "card.md").read_text()
        print(text.split("## Model, data and protocol")[0])
    return code


if __name__ == "__main__":
    sys.exit(main())
