"""Figures of a trained run: confusion matrices (Tables 2 and 4 in picture form)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from deepadversaries import CLASSES
from deepadversaries.errors import OptionError
from deepadversaries.plots import DPI, plt, save_figure


def plot_confusion_matrix(confusion: Sequence[Sequence[int]] | np.ndarray, path: str | Path, *,
                          title: str = "Confusion matrix", classes: Sequence[str] = CLASSES,
                          dpi: int = DPI) -> Path:
    """Save a confusion matrix (rows: true class, columns: predicted class) as a PNG.

    Each cell shows the count and the fraction of its true class (the row); the colour is
    that fraction, so a class-imbalanced test set still reads at a glance.
    """
    cm = np.asarray(confusion, dtype=np.int64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(classes):
        raise OptionError(f"expected a {len(classes)}x{len(classes)} confusion matrix, got shape {cm.shape}")
    row_sums = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, row_sums, out=np.zeros(cm.shape, dtype=float), where=row_sums > 0)
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    image = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    cbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    cbar.set_label("fraction of the true class")
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks, labels=list(classes))
    ax.set_yticks(ticks, labels=list(classes))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    accuracy = np.trace(cm) / cm.sum() if cm.sum() else float("nan")
    ax.set_title(f"{title}\naccuracy {accuracy:.3f} (n = {int(cm.sum())})", fontsize=10)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            colour = "white" if frac[i, j] > 0.55 else "black"
            ax.text(j, i, f"{cm[i, j]}\n{frac[i, j]:.0%}", ha="center", va="center", color=colour, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=dpi)
