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

from deepadversaries.io import atomic_path  # noqa: E402

#: class colours of the paper's figures: spiral, elliptical, merger
CLASS_COLORS: tuple[str, ...] = ("#ffa600", "#bc5090", "#003f5c")
#: colours of a fourth, fifth, ... class (a dataset with more classes than the paper's)
EXTRA_CLASS_COLORS: tuple[str, ...] = ("#2ca02c", "#17becf", "#d62728", "#8c564b", "#7f7f7f", "#bcbd22", "#1f77b4")
DPI = 150


def class_colors(n: int) -> tuple[str, ...]:
    """Colours of ``n`` classes in label order: the paper's three first, then distinct others (cycled)."""
    palette = CLASS_COLORS + EXTRA_CLASS_COLORS
    return tuple(palette[i % len(palette)] for i in range(max(int(n), len(CLASS_COLORS))))


def save_figure(fig: "plt.Figure", path: str | Path, dpi: int = DPI) -> Path:
    """Save a figure atomically as PNG (format from the final name) and close it."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path
