"""Figures. Shared style here; one submodule per group of figures.

- ``plots.dataset``: Figure 1 (G–M20 plane), Figure 2 (example images)
- ``plots.training``: confusion matrices
- ``plots.latent``: Figures 3–6 (church windows, isomaps, distance histograms)
- ``plots.calibration``: reliability diagrams
- ``plots.robustness``: the corruption grid and accuracy-versus-severity curves
- ``plots.study``: a study's forest plots
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from ..io import atomic_path  # noqa: E402

#: class colours of the paper's figures: spiral, elliptical, merger
CLASS_COLORS: tuple[str, ...] = ("#ffa600", "#bc5090", "#003f5c")
DPI = 150


def save_figure(fig: "plt.Figure", path: str | Path, dpi: int = DPI) -> Path:
    """Save a figure atomically as PNG (format from the final name) and close it."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path
