"""Figures of the latent-space analysis (SPEC 8): Figures 3-6 and the rotating isomap GIFs.

- Figure 3: church window (left) and 2-D isomap (right) of one example, regular on top,
  domain adaptation below (``save_church_isomap_figure``)
- Figure 4: 3-D isomaps, Y10 and Y1 as translucent surfaces, four views (``save_isomap3d_figure``)
- Figure 5: K church windows for both runs (``save_church_windows_figure``)
- Figure 6: d_E histograms, regular vs DA, mean/median lines, JS distance (``save_distances_figure``)
- rotating 3-D isomap GIF (``save_isomap_gif``), one church window (``save_single_church_window``)

The drawing functions take the objects of :mod:`deepadversaries.analysis.latent` (``ChurchWindow``,
``IsomapEmbedding``, ``PairedDistances``) so they can be used on any latents. Two runs are
drawn in the order of the mappings they come in (reference first), labelled by method.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import animation
from matplotlib.colors import to_rgb
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from scipy import ndimage

from deepadversaries import CLASSES, METHOD_LABELS, METHOD_SHORT
from deepadversaries.analysis.latent import (
    FIGURE_SCALES, PERTURBATIONS, ChurchWindow, IsomapEmbedding, PairedDistances, js_distance,
)
from deepadversaries.io import TMP_MARK
from deepadversaries.plots import CLASS_COLORS, DPI, class_colors, save_figure
#: marker of each member of a triplet: Y10 image, Y1 image, one-pixel-attacked image
#: (drawn in this order: the 1P triangle first, so the Y10 cross it often sits on stays visible)
TRIPLET_MARKERS = {"triplet-1P": ("^", 260), "triplet-Y1": ("*", 420), "triplet-Y10": ("X", 200)}
HIGHLIGHT = "#00e5ff"  # edge of triplet markers drawn on the dark merger colour (as the paper's cyan star)
REGULAR_HIST, DA_HIST = CLASS_COLORS[2], CLASS_COLORS[0]
MEAN_COLOR, MEDIAN_COLOR = CLASS_COLORS[1], "#1f77b4"
VIEWS = ((20, -60), (20, 30), (20, 120), (60, 210))


def _arrow(true: int | None, target: int | None, classes: Sequence[str] = CLASSES) -> str:
    t = classes[true] if true is not None else "?"
    g = classes[target] if target is not None else "no target"
    return f"{t} → {g}"


def _class_rgb(n: int = len(CLASSES)) -> np.ndarray:
    return np.array([to_rgb(c) for c in class_colors(n)])


def _edge_for(cls: int) -> str:
    return HIGHLIGHT if cls == 2 else "black"


def _hide_ticks(ax: Any) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def _message(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=10, wrap=True, transform=ax.transAxes,
            color="0.3")
    _hide_ticks(ax)


# ----------------------------------------------------------------------------------------
# church window
# ----------------------------------------------------------------------------------------
def _label_positions(window: ChurchWindow, n_classes: int = len(CLASSES)) -> list[tuple[int, float, float, float]]:
    """For each class region: (class, alpha, beta, clearance in grid cells) of its most interior point.

    Cells near the three markers are excluded, so labels do not cover them.
    """
    classes = window.classes
    n = classes.shape[0]
    step = float(window.alphas[1] - window.alphas[0]) if len(window.alphas) > 1 else 1.0
    yy, xx = np.mgrid[0:n, 0:classes.shape[1]]
    blocked = np.zeros_like(classes, dtype=bool)
    for a, b in ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0)):
        i = np.argmin(np.abs(window.alphas - a))
        j = np.argmin(np.abs(window.betas - b))
        blocked |= (xx - i) ** 2 + (yy - j) ** 2 < (0.16 / step) ** 2
    out = []
    for c in range(n_classes):
        mask = (classes == c) & ~blocked
        if not mask.any():
            continue
        dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
        j, i = np.unravel_index(int(np.argmax(dist)), dist.shape)
        out.append((c, float(window.alphas[i]), float(window.betas[j]), float(dist[j, i])))
    return out


def draw_church_window(ax: Any, window: ChurchWindow, true: int | None, target: int | None, *,
                       success: bool = True, label_regions: bool = True, title: str | None = None,
                       fontsize: float = 11, classes: Sequence[str] = CLASSES) -> None:
    """One church window: class regions, axes through the origin, ×/▲/★ markers, 'true → target' title
    (``classes``: the class names in label order [default: the paper's])."""
    rgb = _class_rgb(len(classes))[window.classes.astype(int)]
    half = 0.5 * float(window.alphas[1] - window.alphas[0]) if len(window.alphas) > 1 else 0.005
    extent = (window.alphas[0] - half, window.alphas[-1] + half, window.betas[0] - half, window.betas[-1] + half)
    ax.imshow(rgb, origin="lower", extent=extent, interpolation="nearest", aspect="equal")
    ax.axhline(0, color="black", lw=0.9, zorder=2)
    ax.axvline(0, color="black", lw=0.9, zorder=2)
    for (a, b), marker, size in (((0, 0), "X", 190), ((1, 0), "^", 190), ((0, 1), "*", 340)):
        ax.scatter([a], [b], marker=marker, s=size, c="black", edgecolors="white", linewidths=1.0, zorder=4)
    ticks = [-1.0, -0.5, 0.0, 0.5, 1.0]
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.tick_params(labelsize=fontsize - 2)
    ax.set_xlabel("adversarial (1P) direction", fontsize=fontsize - 1)
    ax.set_ylabel("noisy (Y1) direction", fontsize=fontsize - 1)
    text = title if title is not None else _arrow(true, target, classes)
    if not success:
        text += " (attack failed)"
    ax.set_title(text, fontsize=fontsize + 1, fontweight="bold")
    if not label_regions:
        return
    # a label needs a clear disc of about half its width; the window spans ~220 cells
    width_in = ax.get_position().width * ax.figure.get_figwidth()
    cells_per_pt = window.classes.shape[1] / max(width_in * 72.0, 1.0)
    for c, a, b, clearance in _label_positions(window, len(classes)):
        word = "correct" if c == true else "incorrect"
        for fs in (fontsize, fontsize - 2, fontsize - 3.5):
            need = 0.5 * 0.55 * fs * max(len(classes[c]), len(word) + 2) * cells_per_pt
            if clearance >= need:
                ax.text(a, b, f"{classes[c]}\n({word})", ha="center", va="center", fontsize=fs,
                        color="white" if c == 2 else "black", zorder=3, linespacing=1.1)
                break


# ----------------------------------------------------------------------------------------
# isomaps
# ----------------------------------------------------------------------------------------
def _colors(predicted: np.ndarray) -> np.ndarray:
    idx = np.asarray(predicted, int)
    return np.array(class_colors(int(idx.max()) + 1 if idx.size else 0))[idx]


def draw_isomap2d(ax: Any, emb: IsomapEmbedding | None, example_number: int = 0, *, title: str | None = None) -> None:
    """2-D isomap: Y10 sample filled, Y1 sample empty circles coloured by predicted class; the triplet on top."""
    if title:
        ax.set_title(title, loc="right", fontsize=15)
    if emb is None:
        _message(ax, "too few latents for an isomap")
        return
    xy = emb.coords[:, :2]
    m10, m1 = emb.select("Y10"), emb.select("Y1")
    ax.scatter(xy[m10, 0], xy[m10, 1], s=22, c=_colors(emb.predicted[m10]), edgecolors="none", zorder=2)
    ax.scatter(xy[m1, 0], xy[m1, 1], s=22, facecolors="none", edgecolors=_colors(emb.predicted[m1]),
               linewidths=0.9, zorder=2)
    for kind, (marker, size) in TRIPLET_MARKERS.items():
        m = emb.select(kind, example_number)
        for x, y, c in zip(xy[m, 0], xy[m, 1], emb.predicted[m]):
            ax.scatter([x], [y], marker=marker, s=size, c=_colors(np.array([c]))[0], edgecolors=_edge_for(int(c)),
                       linewidths=1.8, zorder=5)
    _hide_ticks(ax)
    ax.set_xlabel("isomap dimension 1", fontsize=10)
    ax.set_ylabel("isomap dimension 2", fontsize=10)


def _blank() -> Any:
    return Line2D([], [], ls="", marker="", label=" ")


def _legend_handles(points: bool = True, triplet: bool = True, surfaces: bool = False,
                    classes: Sequence[str] = CLASSES) -> list[list[Any]]:
    """Legend entries in groups: classes, point styles (and surfaces), triplet markers."""
    groups: list[list[Any]] = [[Patch(facecolor=c, edgecolor="none", label=name)
                                for name, c in zip(classes, class_colors(len(classes)))]]
    styles: list[Any] = []
    if surfaces:
        styles += [Patch(facecolor=plt.get_cmap("Oranges")(0.6), alpha=0.6, label="Y10 surface"),
                   Patch(facecolor=plt.get_cmap("Blues")(0.6), alpha=0.6, label="Y1 surface")]
    if points:
        styles += [Line2D([], [], ls="", marker="o", color="0.35", markersize=6, label="Y10 test galaxy (filled)"),
                   Line2D([], [], ls="", marker="o", markerfacecolor="none", markeredgecolor="0.35", markersize=6,
                          label="Y1 test galaxy (empty)")]
    if styles:
        groups.append(styles)
    if triplet:
        groups.append([Line2D([], [], ls="", marker=m, color="black", markersize=s, label=label)
                       for m, s, label in (("X", 9, "Y10 image (×)"), ("*", 13, "Y1 image (★)"),
                                           ("^", 9, "one-pixel image (▲)"))])
    return groups


def _add_legend(fig: Any, groups: list[list[Any]], *, rows: int | None = None, **kwargs: Any) -> None:
    """A figure legend below the panels. ``rows=None``: one column per group; else row-major in ``rows`` rows."""
    if rows is None:
        height = max(len(g) for g in groups)
        columns = [g + [_blank()] * (height - len(g)) for g in groups]
        handles = [h for col in columns for h in col]
        ncol = len(groups)
    else:
        flat = [h for g in groups for h in g]
        ncol = -(-len(flat) // rows)
        flat += [_blank()] * (rows * ncol - len(flat))
        handles = [flat[r * ncol + c] for c in range(ncol) for r in range(rows)]  # matplotlib fills by column
    fig.legend(handles=handles, loc="lower center", ncol=ncol, frameon=False, **kwargs)


def _triangulate_surface(ax: Any, xyz: np.ndarray, cmap: str) -> bool:
    if len(xyz) < 3:
        return False
    try:
        ax.plot_trisurf(xyz[:, 0], xyz[:, 1], xyz[:, 2], cmap=cmap, alpha=0.45, linewidth=0, antialiased=False)
        return True
    except (RuntimeError, ValueError):  # degenerate (collinear or duplicate) points: no surface
        return False


def draw_isomap3d(ax: Any, emb: IsomapEmbedding | None, example_number: int = 0, *, elev: float = 20,
                  azim: float = -60, point_size: float = 8) -> None:
    """3-D isomap: translucent Y10 (Oranges) and Y1 (Blues) surfaces, class-coloured points, the triplet."""
    if emb is None:
        ax.text2D(0.5, 0.5, "too few latents for an isomap", ha="center", transform=ax.transAxes)
        return
    xyz = emb.coords[:, :3] if emb.coords.shape[1] >= 3 else np.c_[emb.coords, np.zeros(len(emb.coords))]
    ax.computed_zorder = False  # draw in call order: surfaces, then points, then the triplet on top
    for kind, cmap in (("Y10", "Oranges"), ("Y1", "Blues")):
        _triangulate_surface(ax, xyz[emb.select(kind)], cmap)
    m10, m1 = emb.select("Y10"), emb.select("Y1")
    ax.scatter(*xyz[m10].T, s=point_size, c=_colors(emb.predicted[m10]), depthshade=False)
    ax.scatter(*xyz[m1].T, s=point_size, facecolors="none", edgecolors=_colors(emb.predicted[m1]),
               linewidths=0.6, depthshade=False)
    for kind, (marker, size) in TRIPLET_MARKERS.items():
        m = emb.select(kind, example_number)
        for p, c in zip(xyz[m], emb.predicted[m]):
            ax.scatter([p[0]], [p[1]], [p[2]], marker=marker, s=size * 0.6, c=_colors(np.array([c]))[0],
                       edgecolors=_edge_for(int(c)), linewidths=1.2, depthshade=False, zorder=10)
    ax.set_xticklabels([])
    ax.set_yticklabels([])
    ax.set_zticklabels([])
    ax.view_init(elev=elev, azim=azim)


# ----------------------------------------------------------------------------------------
# whole figures
# ----------------------------------------------------------------------------------------
def save_church_isomap_figure(path: str | Path, panel: dict[str, Any] | None,
                              isomaps: dict[str, IsomapEmbedding | None], *, example_number: int = 0,
                              note: str | None = None, dpi: int = DPI, classes: Sequence[str] = CLASSES,
                              no_window: str | None = None) -> Path:
    """Figure 3: church window + 2-D isomap of one example; the reference run on top, the adapted one below.

    Args:
        path: the PNG to write.
        panel: ``{"example": Example, "runs": {method: triplet with "window"}}``, or None.
        isomaps: method → embedding (or None), reference first.
        example_number: the triplet of the isomaps to mark [default: 0].
        note: a red line under the title [default: none].
        dpi: resolution [default: 150].
        classes: the class names in label order [default: the paper's].
        no_window: why there is no church window, shown in its place (a model without
            ``head(z)``) [default: None].
    """
    fig = plt.figure(figsize=(13.5, 10))
    gs = fig.add_gridspec(2, 2, width_ratios=[1.0, 1.9], hspace=0.32, wspace=0.14, left=0.06, right=0.98,
                          top=0.9, bottom=0.13)
    for r, tr in enumerate(list(isomaps)[:2]):
        ax_cw = fig.add_subplot(gs[r, 0])
        ax_iso = fig.add_subplot(gs[r, 1])
        trip = panel["runs"].get(tr) if panel else None
        if no_window is not None:
            _message(ax_cw, no_window)
        elif trip is None:
            _message(ax_cw, "no attack result for this image in this run")
        else:
            draw_church_window(ax_cw, trip["window"], trip["true"], trip["target"], success=trip["success"],
                               classes=classes)
        draw_isomap2d(ax_iso, isomaps.get(tr), example_number if trip is not None else -1,
                      title=METHOD_LABELS.get(tr, tr))
    if panel:
        ex = panel["example"]
        fig.suptitle(f"Church windows and isomaps of test image {ex.test_index}", fontsize=13, x=0.06,
                     ha="left", y=0.97)
    _add_legend(fig, _legend_handles(classes=classes), fontsize=10, bbox_to_anchor=(0.52, 0.0), columnspacing=3.0)
    if note:
        fig.text(0.06, 0.935, note, fontsize=10, color="#b00020", ha="left")
    return save_figure(fig, path, dpi=dpi)


def save_church_windows_figure(path: str | Path, panels: Sequence[dict[str, Any]], dpi: int = DPI,
                               classes: Sequence[str] = CLASSES) -> Path:
    """Figure 5: K church windows, the reference run (top row) and the adapted run (bottom row)."""
    k = max(1, len(panels))
    methods = list(panels[0]["runs"]) if panels else ["", ""]
    fig, axes = plt.subplots(2, k, figsize=(3.7 * k + 0.8, 8.4), squeeze=False)
    fig.subplots_adjust(left=0.1 if k > 1 else 0.22, right=0.98, top=0.9, bottom=0.16, hspace=0.4, wspace=0.35)
    for r, tr in enumerate(methods):
        for c in range(k):
            ax = axes[r, c]
            if not panels:
                _message(ax, "no attacked image available")
                continue
            trip = panels[c]["runs"].get(tr)
            if trip is None:
                _message(ax, "no attack result\nfor this image in this run")
            else:
                draw_church_window(ax, trip["window"], trip["true"], trip["target"], success=trip["success"],
                                   fontsize=10, classes=classes)
                if c > 0:
                    ax.set_ylabel("")
        pos = axes[r, 0].get_position()
        fig.text(0.015, pos.y0 + pos.height / 2, METHOD_LABELS.get(tr, tr), rotation=90, va="center", ha="left",
                 fontsize=13, fontweight="bold")
    if panels:
        status = [p["example"].status for p in panels]
        sub = ", ".join(f"{p['example'].test_index}" for p in panels)
        fig.suptitle(f"Church windows of test images {sub}", fontsize=12)
        if any(s != "flipped under both" for s in status):
            fig.text(0.5, 0.935, "not all examples were flipped under both runs: "
                     + "; ".join(f"{p['example'].test_index}: {p['example'].status}" for p in panels
                                 if p["example"].status != "flipped under both"),
                     ha="center", fontsize=8.5, color="#b00020", wrap=True)
    _add_legend(fig, _legend_handles(points=False, classes=classes), rows=1 if k >= 3 else 2, fontsize=9)
    return save_figure(fig, path, dpi=dpi)


def save_isomap3d_figure(path: str | Path, isomaps: dict[str, IsomapEmbedding | None], *, example_number: int = 0,
                         views: Sequence[tuple[float, float]] = VIEWS, dpi: int = DPI,
                         classes: Sequence[str] = CLASSES) -> Path:
    """Figure 4: 3-D isomaps from four view angles, the reference run (top) and the adapted run (bottom)."""
    n = len(views)
    fig = plt.figure(figsize=(3.6 * n + 0.6, 8.2))
    fig.subplots_adjust(left=0.05, right=0.99, top=0.9, bottom=0.12, wspace=0.02, hspace=0.12)
    for r, tr in enumerate(list(isomaps)[:2]):
        for c, (elev, azim) in enumerate(views):
            ax = fig.add_subplot(2, n, r * n + c + 1, projection="3d")
            draw_isomap3d(ax, isomaps.get(tr), example_number, elev=elev, azim=azim)
            ax.set_title(f"elevation {elev:g}°, azimuth {azim:g}°", fontsize=9, pad=0)
        fig.text(0.012, 0.72 - 0.39 * r, METHOD_LABELS.get(tr, tr), rotation=90, va="center", fontsize=13,
                 fontweight="bold")
    fig.suptitle("3-D isomaps of the latent space: Y10 (orange surface) and Y1 (blue surface)", fontsize=13)
    _add_legend(fig, _legend_handles(surfaces=True, classes=classes), rows=2, fontsize=9.5)
    return save_figure(fig, path, dpi=dpi)


def _gif_temp(path: Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TMP_MARK}", suffix=".gif", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def save_isomap_gif(path: str | Path, emb: IsomapEmbedding | None, *, title: str, frames: int = 24, dpi: int = 60,
                    fps: int = 8, example_number: int = 0, elev: float = 20) -> Path:
    """A rotating 3-D isomap (azimuth 0-360°), matplotlib animation saved with the Pillow writer, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = plt.figure(figsize=(6, 5.4))
    ax = fig.add_subplot(111, projection="3d")
    fig.subplots_adjust(left=0.0, right=1.0, top=0.92, bottom=0.0)
    draw_isomap3d(ax, emb, example_number, elev=elev, azim=-60)
    ax.set_title(f"{title}: Y10 (orange) and Y1 (blue)", fontsize=11)

    def turn(i: int) -> list:
        ax.view_init(elev=elev, azim=-60 + 360.0 * i / frames)
        return []

    anim = animation.FuncAnimation(fig, turn, frames=frames, interval=1000 / fps, blit=False)
    tmp = _gif_temp(path)
    try:
        anim.save(tmp, writer=animation.PillowWriter(fps=fps), dpi=dpi)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        plt.close(fig)
    return path


def save_distances_figure(path: str | Path, paired: PairedDistances, tables: dict[str, Any], dpi: int = DPI) -> Path:
    """Figure 6: d_E histograms per perturbation, reference vs adapted run, mean/median lines, JS distance.

    Top row: distances in each latent space; bottom row: divided by each model's latent spread.
    """
    ref, ada = paired.methods
    ref_label, ada_label = METHOD_SHORT.get(ref, ref), METHOD_SHORT.get(ada, ada)
    fig, axes = plt.subplots(2, 2, figsize=(12, 9), squeeze=False)
    fig.subplots_adjust(left=0.08, right=0.98, top=0.9, bottom=0.14, hspace=0.42, wspace=0.22)
    xlabels = {("latent", "Y10-Y1"): "d_E = ‖z(Y10) − z(Y1)‖₂",
               ("latent", "Y10-1P"): "d_E = ‖z(Y10) − z(1P)‖₂",
               ("spread", "Y10-Y1"): "‖z(Y10) − z(Y1)‖₂ / median ‖z(Y10) − z̄‖",
               ("spread", "Y10-1P"): "‖z(Y10) − z(1P)‖₂ / median ‖z(Y10) − z̄‖"}
    titles = {"Y10-Y1": "Y10–Y1 (survey noise)", "Y10-1P": "Y10–1P (one-pixel attack)"}
    n = len(paired.test_index)
    for r, scale in enumerate(FIGURE_SCALES):
        for c, pert in enumerate(PERTURBATIONS):
            ax = axes[r, c]
            ax.set_title(f"{titles[pert]}{' — divided by the latent spread' if scale == 'spread' else ''}", fontsize=12)
            ax.set_xlabel(xlabels[(scale, pert)], fontsize=10)
            ax.set_ylabel("fraction of images", fontsize=10)
            if n == 0:
                ax.text(0.5, 0.5, "no image flipped under both runs (n = 0)", ha="center", va="center",
                        transform=ax.transAxes, fontsize=11, color="#b00020")
                _hide_ticks(ax)
                continue
            reg = paired.values(ref, pert, scale)
            da = paired.values(ada, pert, scale)
            js = js_distance(reg, da)
            ax.hist(reg, bins=js.edges, weights=np.full(len(reg), 1 / len(reg)), color=REGULAR_HIST, alpha=0.6,
                    label=METHOD_LABELS.get(ref, ref))
            ax.hist(da, bins=js.edges, weights=np.full(len(da), 1 / len(da)), color=DA_HIST, alpha=0.6,
                    label=METHOD_LABELS.get(ada, ada))
            for values, style in ((reg, "--"), (da, "-")):  # the thinner mean on top: visible when equal
                ax.axvline(np.median(values), color=MEDIAN_COLOR, ls=style, lw=3)
                ax.axvline(np.mean(values), color=MEAN_COLOR, ls=style, lw=1.5)
            ymax = max(js.p.max(), js.q.max())
            ax.set_ylim(0, ymax * 1.55)
            row = tables[scale][pert]
            text = (f"JS distance = {row['js_distance']:.3f} (base 2)\n"
                    f"{ref_label}: median {row[ref]['median']:.3g}, mean {row[ref]['mean']:.3g}\n"
                    f"{ada_label}: median {row[ada]['median']:.3g}, mean {row[ada]['mean']:.3g}\nn = {n}")
            ax.text(0.98, 0.97, text, ha="right", va="top", transform=ax.transAxes, fontsize=9, zorder=5,
                    bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "0.7", "alpha": 0.95})
    fig.suptitle(f"Latent distances d_E of the {n} images flipped under both runs" if n else
                 "No image was flipped under both runs: no distances to compare", fontsize=13)
    handles = [Patch(facecolor=REGULAR_HIST, alpha=0.6, label=METHOD_LABELS.get(ref, ref)),
               Patch(facecolor=DA_HIST, alpha=0.6, label=METHOD_LABELS.get(ada, ada)),
               Line2D([], [], color=MEAN_COLOR, ls="--", lw=1.5, label=f"mean, {ref_label}"),
               Line2D([], [], color=MEDIAN_COLOR, ls="--", lw=3, label=f"median, {ref_label}"),
               Line2D([], [], color=MEAN_COLOR, ls="-", lw=1.5, label=f"mean, {ada_label}"),
               Line2D([], [], color=MEDIAN_COLOR, ls="-", lw=3, label=f"median, {ada_label}")]
    fig.legend(handles=handles, loc="lower center", ncol=6, fontsize=9.5, frameon=False)
    return save_figure(fig, path, dpi=dpi)


def save_single_church_window(path: str | Path, trip: dict[str, Any], *, subtitle: str = "", dpi: int = DPI,
                              classes: Sequence[str] = CLASSES) -> Path:
    """One church window with its legend (``deepadv plot church-window``)."""
    fig, ax = plt.subplots(figsize=(5.6, 6.4))
    fig.subplots_adjust(left=0.16, right=0.97, top=0.87, bottom=0.2)
    draw_church_window(ax, trip["window"], trip["true"], trip["target"], success=trip["success"], classes=classes)
    if subtitle:
        fig.text(0.5, 0.955, subtitle, ha="center", fontsize=10)
    _add_legend(fig, _legend_handles(points=False, classes=classes), fontsize=8.5)
    return save_figure(fig, path, dpi=dpi)
