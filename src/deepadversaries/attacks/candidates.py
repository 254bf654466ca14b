"""Candidate geometry: how a search's unit candidates become pixels and values, and back.

A candidate is an array (L, 2 + B) for images of B bands (the paper's g, r, i: (L, 5)):
for each of its L pixels (x, y, u_1, ..., u_B), all in [0, 1] — x and y are the pixel
column and row scaled to [0, 1), u the new values of the B bands as fractions of the value
range (:class:`~deepadversaries.attacks.values.ValueRange`): value = low + u (high - low),
so with the default ``input`` range [0, 1] (the paper's) u is the new stretched model-input
value. Pixel ``(row, col) = (min(floor(y H), H - 1), min(floor(x W), W - 1))``, so every
pixel is equally likely. When two pixels of a candidate coincide, the later one wins.
"""

from __future__ import annotations

import numpy as np
import torch

from deepadversaries.attacks.values import ValueRange

#: candidate fields per pixel of a 3-band image: x (column), y (row), and the unit values of
#: g, r, i (B bands: 2 + B, :func:`candidate_fields`)
CANDIDATE_FIELDS = 5


def candidate_fields(bands: int) -> int:
    """Fields per pixel of a candidate for images of ``bands`` bands: x, y and one unit value per band."""
    return 2 + int(bands)


def candidate_pixels(candidates: np.ndarray, height: int, width: int,
                     value_range: ValueRange | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels and values of candidates.

    Args:
        candidates: (N, L, 2 + B) unit candidates (see the module docstring).
        height, width: the image size, pixels.
        value_range: the range the unit values map into [default: None = ``input``, [0, 1]].

    Returns:
        rows (N, L) int64, columns (N, L) int64 and values (N, L, B) float64 (model input).
    """
    cand = np.asarray(candidates, dtype=np.float64)
    cols = np.minimum((cand[..., 0] * width).astype(np.int64), width - 1)
    rows = np.minimum((cand[..., 1] * height).astype(np.int64), height - 1)
    values = cand[..., 2:] if value_range is None else value_range.to_values(cand[..., 2:])
    return rows, cols, values


def pixel_candidates(rows: np.ndarray, cols: np.ndarray, unit_values: np.ndarray, height: int,
                     width: int) -> np.ndarray:
    """Unit candidates (N, L, 2 + B) that select exactly pixels (rows, cols) (N, L) with unit
    values (N, L, B): the inverse of :func:`candidate_pixels` (pixel centres)."""
    x = (np.asarray(cols, dtype=np.float64) + 0.5) / width
    y = (np.asarray(rows, dtype=np.float64) + 0.5) / height
    return np.concatenate([x[..., None], y[..., None], np.asarray(unit_values, dtype=np.float64)], axis=-1)


def perturb(image: np.ndarray | torch.Tensor, candidate: np.ndarray, dtype: np.dtype = np.float32,
            value_range: ValueRange | None = None) -> np.ndarray:
    """A copy of ``image`` (B, H, W) with the candidate's (L, 2 + B) pixels set; later pixels win."""
    img = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    rows, cols, values = candidate_pixels(np.asarray(candidate)[None], img.shape[1], img.shape[2], value_range)
    return set_pixels(img, np.stack([cols[0], rows[0]], axis=1), values[0], dtype)


def set_pixels(image: np.ndarray, pixels: np.ndarray, values: np.ndarray, dtype: np.dtype = np.float32) -> np.ndarray:
    """A copy of ``image`` (B, H, W) with pixels (L, 2) = (x, y) set to values (L, B); later pixels win."""
    out = np.array(image, dtype=dtype, copy=True)
    for (x, y), v in zip(np.asarray(pixels, dtype=np.int64), np.asarray(values, dtype=np.float64)):
        out[:, y, x] = v
    return out
