"""Robustness-benchmark figures: one galaxy under every corruption, and accuracy versus severity.

- :func:`plot_corruption_grid`: rows = corruptions, columns = severities 0-5, each panel the
  stretched g, r, i bands as an RGB image (i red, r green, g blue) on the model's input scale,
  the clean image's stretch range mapped to [0, 1] (drawn as one mosaic: fast); other band
  counts: one band in grey, two as (second, mean, first), more as (last, middle, first);
  another normalisation than the paper's (``to_input``) maps the clean panel's 0.5-99.5
  percentiles to [0, 1]; each panel's text is the corruption spec's label of its table entry;
- :func:`plot_accuracy_curves`: one panel per corruption plus the mean over corruptions,
  accuracy against severity (0 = clean), one line per run/method, the panels in the registry's
  order (:data:`deepadversaries.corruptions.registry.CORRUPTIONS`).

Each ``*_figure`` function returns the matplotlib figure (for inspection); each ``plot_*``
function saves it atomically as PNG and returns the path.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deepadversaries import BANDS
from deepadversaries.corruptions.registry import CORRUPTIONS
from deepadversaries.corruptions.suite import (
    DEFAULT_OPTIONS, MAX_SEVERITY, CorruptionOptions, corrupt, parameter_label,
)
from deepadversaries.data.dataset import apply_stretch
from deepadversaries.errors import OptionError
from deepadversaries.plots import plt, save_figure


def _display(stretched: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """(B, H, W) model input -> (H, W, 3) RGB in [0, 1]: g, r, i as (i red, r green, g blue);
    one band grey; two as (second, mean, first); more as (last, middle, first)."""
    b = stretched.shape[0]
    if b == 1:
        planes = [stretched[0]] * 3
    elif b == 2:
        planes = [stretched[1], 0.5 * (stretched[0] + stretched[1]), stretched[0]]
    else:
        planes = [stretched[-1], stretched[b // 2], stretched[0]]
    rgb = np.stack(planes, axis=-1)
    return np.clip((rgb - vmin) / (vmax - vmin), 0.0, 1.0)


#: white gap between the panels of the grid, pixels
GRID_GAP = 6


def corruption_grid_mosaic(image: np.ndarray, lo: float | None, hi: float | None, corruptions: Sequence[str],
                           severities: Sequence[int], seed: int = 0, domain: str = "Y10",
                           bands: Sequence[str] = BANDS, to_input: Any = None,
                           panels: Mapping[tuple[str, int], np.ndarray] | None = None,
                           options: CorruptionOptions = DEFAULT_OPTIONS) -> np.ndarray:
    """The grid's pixels: panel (r, c) is corruption r at severity c, as RGB in [0, 1].

    Panel (r, c) starts at row ``r * (H + GRID_GAP)`` and column ``c * (W + GRID_GAP)``; it shows
    ``panels[(corruption, severity)]`` (raw electrons) when given -- the benchmark passes the very
    images it scored -- else ``image`` corrupted alone with ``numpy.random.default_rng([seed,
    crc32(corruption)])`` for every severity (nested draws); flipped vertically, so that the
    image's y axis points up in a figure drawn top-down.

    Args:
        image: (B, H, W) raw electrons.
        lo, hi: the paper stretch's constants (None with ``to_input``).
        corruptions, severities: rows and columns.
        seed: seed of the corruptions without ``panels`` [default: 0].
        domain: depth of ``image`` [default: "Y10"].
        bands: the image's LSST bands [default: g, r, i].
        to_input: another normalisation, raw (B, H, W) -> model input [default: None = the paper stretch].
        panels: {(corruption, severity): (B, H, W) raw electrons} to show [default: None: draw them].
        options: table set and defect placement of drawn panels [default: Rubin, dithered].

    Returns:
        (R (H + gap) - gap, C (W + gap) - gap, 3) float64, gaps white.
    """
    _, h, w = image.shape
    if to_input is None:
        vmin = float(apply_stretch(np.array([lo], np.float32), lo, hi)[0])
        vmax = float(apply_stretch(np.array([hi], np.float32), lo, hi)[0])

        def to_input(electrons: np.ndarray) -> np.ndarray:
            return apply_stretch(electrons, lo, hi)
    else:
        vmin, vmax = (float(v) for v in np.percentile(np.asarray(to_input(image), np.float64), (0.5, 99.5)))
        vmax = vmax if vmax > vmin else vmin + 1.0
    mosaic = np.ones((len(corruptions) * (h + GRID_GAP) - GRID_GAP, len(severities) * (w + GRID_GAP) - GRID_GAP, 3))
    for r, name in enumerate(corruptions):
        for c, severity in enumerate(severities):
            if panels is not None and (name, severity) in panels:
                electrons = np.asarray(panels[(name, severity)], dtype=np.float32)
            else:
                rng = np.random.default_rng([int(seed), zlib.crc32(name.encode())])
                electrons = corrupt(image, name, severity, rng, domain, bands, options)
            panel = _display(to_input(electrons), vmin, vmax)[::-1]
            y0, x0 = r * (h + GRID_GAP), c * (w + GRID_GAP)
            mosaic[y0:y0 + h, x0:x0 + w] = panel
    return mosaic


def corruption_grid_figure(image: np.ndarray, lo: float | None, hi: float | None, *,
                           corruptions: Sequence[str] | None = None,
                           severities: Sequence[int] = tuple(range(MAX_SEVERITY + 1)), seed: int = 0,
                           domain: str = "Y10", title: str | None = None, bands: Sequence[str] = BANDS,
                           to_input: Any = None, panels: Mapping[tuple[str, int], np.ndarray] | None = None,
                           options: CorruptionOptions = DEFAULT_OPTIONS) -> plt.Figure:
    """One galaxy under every corruption and severity, normalised as the model sees it.

    Args:
        image: (B, H, W) raw electrons (g, r, i, or ``bands``) of one galaxy at the depth of ``domain``.
        lo: low stretch constant (electrons) of the domain (None with ``to_input``).
        hi: high stretch constant (electrons) of the domain (None with ``to_input``).
        corruptions: rows, names of :data:`~deepadversaries.corruptions.registry.CORRUPTIONS` [default: all].
        severities: columns [default: 0-5; 0 is the clean image].
        seed: seed of the corruptions (see :func:`corruption_grid_mosaic`) [default: 0].
        domain: depth of ``image``, "Y10" or "Y1" [default: "Y10"].
        title: figure title [default: none].
        bands: the image's LSST bands [default: g, r, i].
        to_input: the dataset's normalisation when it is not the paper stretch [default: None].
        panels: the images to show per (corruption, severity) [default: None: drawn here].
        options: table set and defect placement (labels and drawn panels) [default: Rubin, dithered].

    Returns:
        The figure: one axes showing :func:`corruption_grid_mosaic`, its y tick labels the
        corruptions, its x tick labels the severities, one text per panel with the table's
        parameter (e.g. ``0.84"``; ``clean`` at severity 0).
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[0] != len(bands):
        raise OptionError(f"the grid needs one ({len(bands)}, H, W) image, got shape {image.shape}")
    names = list(corruptions) if corruptions is not None else list(CORRUPTIONS)
    severities = list(severities)
    _, h, w = image.shape
    mosaic = corruption_grid_mosaic(image, lo, hi, names, severities, seed, domain, bands, to_input, panels, options)
    fig, ax = plt.subplots(figsize=(1.25 * len(severities) + 1.4, 1.25 * len(names) + 0.5))
    ax.imshow(mosaic, origin="upper", interpolation="nearest")
    ax.set_xticks([c * (w + GRID_GAP) + w / 2 for c in range(len(severities))],
                  [f"severity {s}" for s in severities], fontsize=8)
    ax.set_yticks([r * (h + GRID_GAP) + h / 2 for r in range(len(names))],
                  [n.replace("_", " ") for n in names], fontsize=8)
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    for r, name in enumerate(names):
        for c, severity in enumerate(severities):
            ax.text(c * (w + GRID_GAP) + 2, r * (h + GRID_GAP) + h - 3, parameter_label(name, severity, options),
                    color="white", fontsize=6, va="bottom", ha="left",
                    bbox={"facecolor": "black", "alpha": 0.5, "pad": 1, "linewidth": 0})
    if title:
        ax.set_title(title, fontsize=9, pad=18)
    fig.tight_layout(pad=0.3)
    return fig


def plot_corruption_grid(image: np.ndarray, lo: float | None, hi: float | None, out: str | Path,
                         **kwargs: Any) -> Path:
    """Save :func:`corruption_grid_figure` (same arguments) as ``out``; return its path."""
    return save_figure(corruption_grid_figure(image, lo, hi, **kwargs), out)


def accuracy_table(summary: Mapping[str, Any]) -> dict[str, tuple[list[int], list[float]]]:
    """Per corruption: (severities with 0 first, accuracies with the clean one first) of a summary."""
    clean = float(summary["clean"]["accuracy"])
    table: dict[str, tuple[list[int], list[float]]] = {}
    for name in CORRUPTIONS:
        rows = sorted((int(r["severity"]), float(r["accuracy"])) for r in summary["results"] if r["corruption"] == name)
        if rows:
            table[name] = ([0] + [s for s, _ in rows], [clean] + [a for _, a in rows])
    return table


def _mean_curve(table: Mapping[str, tuple[list[int], list[float]]]) -> tuple[list[int], list[float]]:
    by_severity: dict[int, list[float]] = {}
    for severities, accuracies in table.values():
        for s, a in zip(severities, accuracies):
            by_severity.setdefault(s, []).append(a)
    xs = sorted(by_severity)
    return xs, [float(np.mean(by_severity[s])) for s in xs]


def accuracy_curves_figure(summaries: Mapping[str, Mapping[str, Any]], *, title: str | None = None) -> plt.Figure:
    """Accuracy versus severity, one panel per corruption plus their mean, one line per label.

    Args:
        summaries: {label: robustness summary} (``summary.json`` of ``deepadv robustness``, or any
            mapping with ``clean.accuracy`` and ``results`` rows of corruption, severity, accuracy).
        title: figure title [default: none].

    Returns:
        The figure: one axes per corruption present in any summary, then "mean over
        corruptions"; x "severity" (0 = clean), y "accuracy"; line k of every axes is label k.
    """
    if not summaries:
        raise OptionError("no summaries to plot")
    tables = {label: accuracy_table(s) for label, s in summaries.items()}
    names = [n for n in CORRUPTIONS if any(n in t for t in tables.values())]
    panels = names + ["mean over corruptions"]
    ncols = min(4, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.0 * ncols, 2.4 * nrows), squeeze=False, sharey=True)
    flat = list(axes.ravel())
    for ax in flat[len(panels):]:
        fig.delaxes(ax)
    for ax, panel in zip(flat, panels):
        for label, table in tables.items():
            xs, ys = _mean_curve(table) if panel == panels[-1] else table.get(panel, ([], []))
            ax.plot(xs, ys, marker="o", ms=3, lw=1.2, label=label)
        ax.set_title(panel.replace("_", " "), fontsize=9)
        ax.set_xlabel("severity")
        ax.set_ylabel("accuracy")
        ax.set_xticks(range(MAX_SEVERITY + 1))
        ax.set_ylim(0.0, 1.02)
        ax.grid(alpha=0.3)
    flat[0].legend(fontsize=7, loc="lower left")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_accuracy_curves(summaries: Mapping[str, Mapping[str, Any]], out: str | Path, **kwargs: Any) -> Path:
    """Save :func:`accuracy_curves_figure` (same arguments) as ``out``; return its path."""
    return save_figure(accuracy_curves_figure(summaries, **kwargs), out)
