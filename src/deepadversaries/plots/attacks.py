"""Figures of the attack suite: success against queries, and where the dangerous pixels are."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.patches import Circle

from deepadversaries import METHOD_LABELS
from deepadversaries.analysis.latent import DANGER_RADII
from deepadversaries.attacks.searches import search_names, search_spec
from deepadversaries.plots import CLASS_COLORS, DPI, plt, save_figure

#: the line of a search the registry does not know (curves of an unregistered folder)
UNKNOWN_SEARCH_STYLE = ("-", "0.3")


def search_label(search: str) -> str:
    """The figure label of ``search``: the registry's (:mod:`deepadversaries.attacks.searches`), else its name."""
    return search_spec(search).label if search in search_names() else search


def search_style(search: str) -> tuple[str, str]:
    """(line style, colour) of ``search``: the registry's, else :data:`UNKNOWN_SEARCH_STYLE`."""
    return search_spec(search).style if search in search_names() else UNKNOWN_SEARCH_STYLE


def save_success_curves(path: str | Path, curves: Mapping[str, Mapping[str, dict[str, Any]]],
                        dpi: int = DPI) -> Path:
    """Fraction of attacked images flipped against queries per image, one panel per run.

    Args:
        path: the PNG to write.
        curves: method → search → ``{"t": queries (k,), "fraction": (k,), "budget": queries
            spent on an image never flipped}``: a right-continuous step function from 0.
    """
    methods = list(curves)
    fig, axes = plt.subplots(1, len(methods), figsize=(5.4 * len(methods), 4.2), squeeze=False, sharey=True)
    for ax, method in zip(axes[0], methods):
        for search, c in curves[method].items():
            style, color = search_style(search)
            t = np.concatenate([[1.0], np.asarray(c["t"], float), [max(float(c["budget"]), 1.0)]])
            f = np.concatenate([[0.0], np.asarray(c["fraction"], float),
                                [c["fraction"][-1] if len(c["fraction"]) else 0.0]])
            ax.step(t, f, where="post", ls=style, color=color, lw=2, label=search_label(search))
        ax.set_xscale("log")
        ax.set_xlabel("queries per image (model evaluations)")
        ax.set_title(METHOD_LABELS.get(method, method), fontsize=11)
        ax.grid(color="0.92")
    axes[0][0].set_ylabel("fraction of attacked images flipped")
    axes[0][0].legend(loc="upper left", fontsize=9, frameon=False)
    fig.tight_layout()
    return save_figure(fig, path, dpi=dpi)


def save_dangerous_pixels(path: str | Path, stacks: Mapping[str, tuple[np.ndarray, np.ndarray]], extent: float,
                          shares: Mapping[str, dict[str, Any]], dpi: int = DPI) -> Path:
    """The probability that a pixel flips an image, stacked in galaxy-centred coordinates
    (units of each galaxy's Petrosian radius), one panel per run, and the radial shares.

    Args:
        path: the PNG to write.
        stacks: method → (flipping counts, position counts) from
            :func:`deepadversaries.analysis.latent.stacked_flip_map`.
        extent: the stacks' half-width, Petrosian radii.
        shares: method → :func:`deepadversaries.analysis.latent.dangerous_pixel_shares`.
    """
    methods = list(stacks)
    fig, axes = plt.subplots(1, len(methods) + 1, figsize=(4.6 * (len(methods) + 1), 4.3), squeeze=False)
    vmax = max((np.max(f / np.maximum(p, 1)) for f, p in stacks.values()), default=1.0) or 1.0
    for ax, method in zip(axes[0], methods):
        flipping, positions = stacks[method]
        prob = np.where(positions > 0, flipping / np.maximum(positions, 1), np.nan)
        im = ax.imshow(prob, origin="lower", extent=(-extent, extent, -extent, extent), cmap="magma", vmin=0,
                       vmax=vmax)
        for r in DANGER_RADII:
            ax.add_patch(Circle((0, 0), r, fill=False, color="#00e5ff", lw=1, ls="--"))
        ax.set_title(f"{METHOD_LABELS.get(method, method)}\n{shares[method]['n_positions']} flipping positions",
                     fontsize=10)
        ax.set_xlabel("Δx / Petrosian radius")
        ax.set_ylabel("Δy / Petrosian radius")
    fig.colorbar(im, ax=axes[0][:len(methods)].tolist(), shrink=0.8, label="probability that the pixel flips the image")
    ax = axes[0][-1]
    names = list(next(iter(shares.values()))["shares"])
    width = 0.8 / (len(methods) + 1)
    x = np.arange(len(names))
    for k, method in enumerate(methods):
        ax.bar(x + k * width, [shares[method]["shares"][n] for n in names], width,
               label=METHOD_LABELS.get(method, method), color=CLASS_COLORS[(k + 2) % 3])
    ax.bar(x + len(methods) * width, [next(iter(shares.values()))["area_shares"][n] for n in names], width,
           label="share of the stamp's area", color="0.8")
    ax.set_xticks(x + width * len(methods) / 2)
    ax.set_xticklabels(names, fontsize=8, rotation=20)
    ax.set_ylabel("share of the flipping positions")
    ax.legend(fontsize=8, frameon=False)
    return save_figure(fig, path, dpi=dpi)
