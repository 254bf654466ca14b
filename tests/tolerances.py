"""Float tolerances derived from the dtype and the operation, so that a comparison holds on any CPU.

Two evaluations of the same float expression on two CPUs (or with two batch sizes, or SIMD
widths) may add the same terms in another order, use FMA or not, and so round differently. A
tolerance must cover the worst case of that, not what one machine happens to produce. The
bounds here are Higham's (Accuracy and Stability of Numerical Algorithms, 2nd ed., 2002,
§3.1 and §3.5): with u the unit roundoff (half the machine epsilon of the dtype),

- a sum or dot product of n terms, in any order, with or without FMA:
  |fl(s) − s| ≤ γ_n Σ|terms|, γ_n = n u / (1 − n u);
- one correctly rounded operation (+, −, ×, /, sqrt): relative error ≤ u.

Terms that are exactly zero add nothing, so n may count the nonzero terms only.
"""

from __future__ import annotations

import numpy as np


def unit_roundoff(dtype=np.float32) -> float:
    """u = eps / 2 of ``dtype`` (float32: 5.96e-8, float64: 1.11e-16)."""
    return float(np.finfo(dtype).eps) / 2


def gamma(n: int, dtype=np.float32) -> float:
    """γ_n = n u / (1 − n u): the relative bound of an n-term sum or dot product in ``dtype``."""
    nu = n * unit_roundoff(dtype)
    if nu >= 1:
        raise ValueError(f"no bound: {n} terms in {np.dtype(dtype).name} (n u >= 1)")
    return nu / (1 - nu)


def linear_error(weight: np.ndarray, bias: np.ndarray | None, x: np.ndarray, dtype=np.float32) -> np.ndarray:
    """Bound on |fl(W x + b) − (W x + b)| of a linear layer evaluated in ``dtype``, per output.

    Args:
        weight: (out, in) weights.
        bias: (out,) bias or None.
        x: (..., in) inputs (exact: their own error is the caller's to add).
        dtype: the precision of the evaluation [default: float32].

    Returns:
        (..., out) γ_{k+1} (|W| |x| + |b|) with k the largest number of nonzero weights of an output.
    """
    w = np.abs(np.asarray(weight, dtype=np.float64))
    k = int((w != 0).sum(axis=1).max()) + (1 if bias is not None else 0)
    magnitude = np.abs(np.asarray(x, dtype=np.float64)) @ w.T
    if bias is not None:
        magnitude = magnitude + np.abs(np.asarray(bias, dtype=np.float64))
    return gamma(max(k, 1), dtype) * magnitude
