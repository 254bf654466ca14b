"""Normalisations: how raw images become model input (SPEC 3.5 and ``deepadv import --stretch``).

Pure functions, no file I/O. A normalisation has a *kind* and, per domain, *params*
fitted on that domain's training split:

``paper``
    The authors' ``update_sinh`` (SPEC 3.5): clip to [low, high], y = arcsinh(0.85 x / high),
    then (y + 1) / 2. ``low`` and ``high`` are the 0.1 and 99.9 percentiles over all pixels
    of all bands. One implementation (:func:`apply_paper`, :func:`invert_paper`,
    :func:`paper_constants`) serves every path: ``data.dataset`` re-exports it under its old names.
    Params: ``{"low": float, "high": float}``.
``asinh:Q``
    Lupton et al. (2004) style, per band b: y = asinh(Q x / s_b) / Q, where s_b is the 99.9
    percentile of band b's training pixels (astropy's ``make_lupton_rgb`` calls s the
    "stretch"). Q > 0 is the softening: Q -> 0 gives the linear x / s_b, a large Q compresses
    bright cores logarithmically. No clipping; negative (noise) pixels map antisymmetrically.
    Params: ``{"Q": float, "scale": [s_0, …, s_{B-1}]}``.
``zscore``
    Per band b: y = (x - mean_b) / std_b, mean and (population, ddof 0) standard deviation
    of band b over every pixel of the training split. Params: ``{"mean": [...], "std": [...]}``.
``none``
    The images already are model input: returned as float32, unchanged. Params: ``{}``.

Memory bound. :func:`fit` never holds the training split: ``zscore`` streams it in chunks
of ``chunk`` images (exact, float64 accumulators); the percentile kinds (``paper``,
``asinh``) use a seeded subsample of at most ``sample`` images [default 2000, as
``data.STRETCH_SAMPLE``] and at most :data:`FIT_MAX_PIXELS` pixels, read in chunks into one
float32 buffer whose percentiles are taken in place (numpy's "linear" method, the same
numbers as ``np.percentile`` on that subsample). Peak memory of a fit is therefore at most
``4 * FIT_MAX_PIXELS`` bytes (256 MiB; ``asinh`` adds one band of it) plus one chunk. A
training split no larger than the subsample is used whole, so the constants are then
exactly those of ``np.percentile``.

Determinism: the subsample depends only on (len(train_images), sample, seed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from deepadversaries.errors import OptionError, check_choice

KINDS: tuple[str, ...] = ("paper", "asinh", "zscore", "none")
#: the paper stretch (SPEC 3.5): arcsinh(PAPER_SCALE * x / high)
PAPER_SCALE = 0.85
PAPER_PERCENTILES: tuple[float, float] = (0.1, 99.9)
#: percentile giving each band's scale s_b of ``asinh:Q``
ASINH_PERCENTILE = 99.9
#: images in the seeded subsample of the percentile kinds (every fit of the paper stretch: the
#: simulator's, a folder without ``dataset.json``, ``deepadv import``)
FIT_SAMPLE = 2000
#: the subsample never holds more pixels than this (float32: 256 MiB)
FIT_MAX_PIXELS = 2**26
DEFAULT_CHUNK = 256


def paper_constants(images: np.ndarray) -> tuple[float, float]:
    """The paper stretch's constants: the :data:`PAPER_PERCENTILES` (0.1, 99.9) over all pixels of all
    bands of ``images`` (any shape), computed in float64 with numpy's linear method.

    Returns:
        ``(low, high)`` as Python floats.
    """
    low, high = np.percentile(np.asarray(images, dtype=np.float64), PAPER_PERCENTILES)
    return float(low), float(high)


def apply_paper(images: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """The paper stretch (the authors' ``update_sinh``, SPEC 3.5): clip to [low, high],
    y = arcsinh(0.85 x / high), then (y + 1) / 2 — in float32.

    Args:
        images: raw pixels, electrons, any shape.
        lo, hi: the constants (low, high) of :func:`paper_constants` (electrons).

    Returns:
        float32 array of the same shape (a new array).
    """
    # a new array (0-d for a scalar, which np.clip would return as a numpy scalar): the steps below work in it
    x = np.asarray(np.clip(np.asarray(images, dtype=np.float32), lo, hi))
    # ((arcsinh(PAPER_SCALE * x / hi) + 1) / 2) step by step in place: the same operations in the same dtype
    np.multiply(x, PAPER_SCALE, out=x)
    np.divide(x, np.float32(hi), out=x)
    np.arcsinh(x, out=x)
    np.add(x, 1.0, out=x)
    np.divide(x, 2.0, out=x)
    return x.astype(np.float32, copy=False)


def invert_paper(stretched: np.ndarray, hi: float) -> np.ndarray:
    """Map paper-stretched values back to electrons (exact inside the clip range of :func:`apply_paper`).

    Args:
        stretched: stretched values, any shape.
        hi: the upper constant (electrons).

    Returns:
        float32 electrons of the same shape.
    """
    y = 2.0 * np.asarray(stretched, dtype=np.float64) - 1.0
    return (np.sinh(y) * float(hi) / PAPER_SCALE).astype(np.float32)


@dataclass(frozen=True)
class Stretch:
    """A parsed ``--stretch`` value.

    Attributes:
        kind: one of :data:`KINDS`.
        q: the softening Q of ``asinh`` (``None`` for the other kinds).
    """

    kind: str
    q: float | None = None

    def __str__(self) -> str:
        return f"asinh:{self.q:g}" if self.kind == "asinh" else self.kind


def parse(text: str | Stretch) -> Stretch:
    """Parse a ``--stretch`` value: ``paper``, ``asinh:Q`` (Q > 0, e.g. ``asinh:8``), ``zscore`` or ``none``.

    Args:
        text: the option's value (a :class:`Stretch` is returned unchanged).

    Returns:
        The :class:`Stretch`.

    Raises:
        OptionError: an unknown kind, a missing or non-positive Q, or a Q given to another kind.
    """
    if isinstance(text, Stretch):
        return text
    kind, sep, arg = str(text).strip().partition(":")
    kind = kind.strip().lower()
    check_choice(kind, KINDS, "--stretch")
    if kind != "asinh":
        if sep:
            raise OptionError(f"--stretch {text!r}: only asinh takes a parameter (e.g. asinh:8); use {kind!r}")
        return Stretch(kind)
    try:
        q = float(arg)
    except ValueError:
        raise OptionError(f"--stretch {text!r}: asinh needs a softening Q > 0, e.g. asinh:8") from None
    if not (math.isfinite(q) and q > 0):
        raise OptionError(f"--stretch {text!r}: Q must be a finite number > 0, e.g. asinh:8")
    return Stretch("asinh", q)


def sample_indices(n: int, pixels_per_image: int, *, sample: int = FIT_SAMPLE, seed: int = 0) -> np.ndarray:
    """Sorted indices of the images used by the percentile kinds.

    Args:
        n: images in the training split.
        pixels_per_image: bands x height x width.
        sample: at most this many images [default: :data:`FIT_SAMPLE`].
        seed: seeds the subsample [default: 0].

    Returns:
        int64 array (m,), m = min(n, sample, FIT_MAX_PIXELS // pixels_per_image, at least 1);
        ``arange(n)`` when the split is small enough to be used whole.
    """
    if sample < 1:
        raise OptionError(f"the normalisation sample must be at least 1 image, got {sample}")
    m = min(n, int(sample), max(1, FIT_MAX_PIXELS // max(1, int(pixels_per_image))))
    if m >= n:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng([int(seed), 3]).choice(n, m, replace=False)).astype(np.int64)


def _read_rows(images: np.ndarray, idx: np.ndarray, chunk: int) -> np.ndarray:
    """``images[idx]`` as a new float32 array, read ``chunk`` images at a time."""
    out = np.empty((len(idx), *images.shape[1:]), dtype=np.float32)
    for a in range(0, len(idx), chunk):
        out[a:a + chunk] = images[idx[a:a + chunk]]
    return out


def percentiles_inplace(values: np.ndarray, percentiles: tuple[float, ...]) -> list[float]:
    """Percentiles of a flat float array by partial sorting *in place* (the array is reordered).

    The same numbers as ``np.percentile(values.astype(np.float64), percentiles)`` (numpy's
    "linear" method) without the float64 copy.

    Args:
        values: 1-D float array, no NaN; reordered.
        percentiles: in [0, 100].

    Returns:
        One float per percentile.
    """
    n = values.size
    q = np.true_divide(np.asarray(percentiles, dtype=np.float64), 100)
    virtual = (n - 1) * q
    lo = np.floor(virtual).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    gamma = virtual - lo
    values.partition(np.unique(np.concatenate([lo, hi])))
    out = []
    for i, j, t in zip(lo, hi, gamma):
        a, b = np.float64(values[i]), np.float64(values[j])
        diff = b - a
        out.append(float(b - diff * (1 - t) if t >= 0.5 else a + diff * t))
    return out


def _band_moments(images: np.ndarray, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and population std over all images, streamed (Chan et al. pairwise update)."""
    bands = images.shape[1]
    count = 0
    mean = np.zeros(bands)
    m2 = np.zeros(bands)
    for a in range(0, len(images), chunk):
        x = np.asarray(images[a:a + chunk], dtype=np.float64)
        x = np.moveaxis(x, 1, 0).reshape(bands, -1)
        n_b = x.shape[1]
        mean_b = x.mean(axis=1)
        m2_b = ((x - mean_b[:, None]) ** 2).sum(axis=1)
        delta = mean_b - mean
        total = count + n_b
        mean = mean + delta * n_b / total
        m2 = m2 + m2_b + delta**2 * count * n_b / total
        count = total
    return mean, np.sqrt(m2 / max(count, 1))


def fit(kind: str | Stretch, train_images: np.ndarray, *, chunk: int = DEFAULT_CHUNK,
        sample: int = FIT_SAMPLE, seed: int = 0) -> dict[str, Any]:
    """Fit a normalisation's params on one domain's training split, in bounded memory.

    Args:
        kind: a :class:`Stretch` or a ``--stretch`` text (``paper``, ``asinh:8``, ``zscore``, ``none``).
        train_images: raw images (N, B, H, W), any float dtype; a memory map is read in chunks.
        chunk: images read at a time [default: 256].
        sample: most images in the subsample of the percentile kinds [default: :data:`FIT_SAMPLE`].
        seed: seeds that subsample [default: 0].

    Returns:
        The params (JSON-ready plain floats), see the module docstring. The percentile
        kinds' subsample is ``train_images[sample_indices(N, B*H*W, sample=sample, seed=seed)]``.

    Raises:
        OptionError: ``train_images`` not (N, B, H, W) with N >= 1, or constants that cannot
            normalise (a blank band: high <= 0, zero std, zero scale), naming the kind.
    """
    spec = parse(kind)
    if train_images.ndim != 4 or len(train_images) == 0:
        raise OptionError(f"fitting {spec}: expected training images (N, bands, H, W) with N >= 1, "
                          f"got shape {train_images.shape}")
    chunk = max(1, int(chunk))
    if spec.kind == "none":
        return {}
    if spec.kind == "zscore":
        mean, std = _band_moments(train_images, chunk)
        if not (np.all(std > 0) and np.all(np.isfinite(std))):
            bad = int(np.flatnonzero(~(std > 0))[0]) if np.any(~(std > 0)) else 0
            raise OptionError(f"--stretch zscore: band {bad} is constant in the training split (std 0); "
                              "choose another --stretch or drop the band")
        return {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}
    idx = sample_indices(len(train_images), int(np.prod(train_images.shape[1:])), sample=sample, seed=seed)
    sub = _read_rows(train_images, idx, chunk)
    if spec.kind == "paper":
        low, high = percentiles_inplace(sub.reshape(-1), PAPER_PERCENTILES)
        if not (math.isfinite(low) and math.isfinite(high) and high > 0 and low < high):
            raise OptionError(f"--stretch paper: unusable constants (low {low}, high {high}) from the training "
                              "split; need 0 < high and low < high (blank images?); try --stretch zscore")
        return {"low": low, "high": high}
    # asinh
    scale = []
    for b in range(sub.shape[1]):
        (s,) = percentiles_inplace(np.ascontiguousarray(sub[:, b]).reshape(-1), (ASINH_PERCENTILE,))
        if not (math.isfinite(s) and s > 0):
            raise OptionError(f"--stretch {spec}: band {b} has scale {s} (its {ASINH_PERCENTILE} percentile) "
                              "in the training split; need > 0 (a blank band?); try --stretch zscore")
        scale.append(s)
    return {"Q": float(spec.q), "scale": scale}


def apply(kind: str | Stretch, params: dict[str, Any], images: np.ndarray) -> np.ndarray:
    """Normalise raw images into float32 model input.

    Args:
        kind: the normalisation's kind (``paper``, ``asinh``, ``zscore``, ``none``; an
            ``asinh:Q`` text or :class:`Stretch` is accepted, Q then comes from ``params``).
        params: as returned by :func:`fit` for this domain.
        images: (..., B, H, W) raw pixels (any float dtype; a memory map is read whole).

    Returns:
        float32 array of the same shape (a new array).

    Raises:
        OptionError: unknown kind, or params missing a key / of the wrong band count.
    """
    k = kind.kind if isinstance(kind, Stretch) else str(kind).partition(":")[0].strip().lower()
    check_choice(k, KINDS, "normalisation kind")
    x = np.asarray(images, dtype=np.float32)
    try:
        if k == "none":
            return np.array(x, dtype=np.float32, copy=True)
        if k == "paper":
            return apply_paper(x, float(params["low"]), float(params["high"]))
        bands = x.shape[-3] if x.ndim >= 3 else 0
        if k == "zscore":
            mean, std = _per_band(params["mean"], bands), _per_band(params["std"], bands)
            return ((x - mean) / std).astype(np.float32)
        q = np.float32(params["Q"])
        scale = _per_band(params["scale"], bands)
        return (np.arcsinh(q * x / scale) / q).astype(np.float32)
    except (KeyError, TypeError) as exc:
        raise OptionError(f"normalisation {k}: params {params!r} lack or mistype {exc}") from None


def invert(kind: str | Stretch, params: dict[str, Any], model_input: np.ndarray) -> np.ndarray:
    """Map model input back to raw pixels (inverse of :func:`apply` inside the paper kind's clip range).

    Args:
        kind: as for :func:`apply`.
        params: as for :func:`apply`.
        model_input: (..., B, H, W) normalised values.

    Returns:
        float32 raw pixels of the same shape; for ``paper`` the same numbers as
        :func:`deepadversaries.data.dataset.invert_stretch` (values clipped by :func:`apply` stay clipped).
    """
    k = kind.kind if isinstance(kind, Stretch) else str(kind).partition(":")[0].strip().lower()
    check_choice(k, KINDS, "normalisation kind")
    y = np.asarray(model_input, dtype=np.float64)
    try:
        if k == "none":
            return y.astype(np.float32)
        if k == "paper":
            return invert_paper(y, float(params["high"]))
        bands = y.shape[-3] if y.ndim >= 3 else 0
        if k == "zscore":
            mean = _per_band(params["mean"], bands).astype(np.float64)
            return (y * _per_band(params["std"], bands).astype(np.float64) + mean).astype(np.float32)
        q = float(params["Q"])
        return (np.sinh(q * y) * _per_band(params["scale"], bands).astype(np.float64) / q).astype(np.float32)
    except (KeyError, TypeError) as exc:
        raise OptionError(f"normalisation {k}: params {params!r} lack or mistype {exc}") from None


def _per_band(values: Any, bands: int) -> np.ndarray:
    v = np.asarray(values, dtype=np.float32)
    if v.ndim != 1 or len(v) != bands:
        raise OptionError(f"normalisation params have {v.size} per-band values for images of {bands} bands")
    return v[:, None, None]


def describe(kind: str | Stretch, params: dict[str, Any]) -> str:
    """One line for a summary, e.g. ``"paper (low -12.3, high 845)"``."""
    k = kind.kind if isinstance(kind, Stretch) else str(kind).partition(":")[0].strip().lower()
    if k == "paper":
        return f"paper (low {params['low']:.4g}, high {params['high']:.4g})"
    if k == "asinh":
        return f"asinh Q {params['Q']:g} (scale " + ", ".join(f"{s:.4g}" for s in params["scale"]) + ")"
    if k == "zscore":
        return "zscore (mean " + ", ".join(f"{m:.4g}" for m in params["mean"]) + "; std " + \
            ", ".join(f"{s:.4g}" for s in params["std"]) + ")"
    return "none (images already normalised)"
