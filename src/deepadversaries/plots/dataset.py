"""Dataset figures: Figure 1 (the G-M20 plane) and Figure 2 (Y10/Y1 examples per class).

Class names and bands are the dataset's (an imported dataset's own classes, one column per class).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deepadversaries import SPLITS
from deepadversaries.data.dataset import STRETCH_SCALE, GalaxyDataset, load_dataset
from deepadversaries.errors import file_error
from deepadversaries.simulation.morphology import (
    BULGE_INTERCEPT, BULGE_SCALE, BULGE_SLOPE, MERGER_INTERCEPT, MERGER_SLOPE,
)
from deepadversaries.plots import class_colors, plt, save_figure

#: the boundaries' intersection (G0, M20_0) of the paper
M20_0 = (BULGE_INTERCEPT / BULGE_SCALE - MERGER_INTERCEPT) / (MERGER_SLOPE - BULGE_SLOPE / BULGE_SCALE)
G_0 = MERGER_SLOPE * M20_0 + MERGER_INTERCEPT


def _dataset(data: GalaxyDataset | str | Path) -> GalaxyDataset:
    return data if isinstance(data, GalaxyDataset) else load_dataset(data)


def galaxy_table(data) -> dict[str, np.ndarray]:
    """One entry per galaxy (augmented copies dropped) from the catalogues: G, M20, label, S/N."""
    ds = _dataset(data)
    rows = [r for split in SPLITS for r in ds.catalog(split) if r.get("augmentation", "none") == "none"]
    if not rows or "gini" not in rows[0]:
        raise file_error(ds.path, "no catalogue with Gini and M20 (only folders made by 'deepadv simulate' "
                                  "have one)")
    seen: dict[int, dict[str, str]] = {}
    for r in rows:
        seen.setdefault(int(r["galaxy_id"]), r)
    rows = [seen[k] for k in sorted(seen)]
    return {
        "galaxy_id": np.array([int(r["galaxy_id"]) for r in rows]),
        "gini": np.array([float(r["gini"]) for r in rows]),
        "m20": np.array([float(r["m20"]) for r in rows]),
        "label": np.array([ds.classes.index(r["label"]) for r in rows]),
        "family": np.array([r.get("family", "") for r in rows]),
    }


def plot_gm20(data, out: str | Path | None = None) -> Path:
    """Figure 1: every galaxy in the Gini-M20 plane, coloured by class, with both boundaries."""
    ds = _dataset(data)
    table = galaxy_table(ds)
    out = Path(out) if out is not None else ds.path / "figures" / "fig1_gm20.png"
    fig, ax = plt.subplots(figsize=(5.6, 4.6))
    colors = class_colors(ds.n_classes)
    for c, name in enumerate(ds.classes):
        sel = table["label"] == c
        ax.scatter(table["m20"][sel], table["gini"][sel], s=6, alpha=0.6, color=colors[c], linewidths=0,
                   label=f"{name} ({int(sel.sum())})", rasterized=True)
    lo = min(-3.0, float(np.nanmin(table["m20"])) - 0.05)
    hi = max(-0.5, float(np.nanmax(table["m20"])) + 0.05)
    m = np.linspace(lo, hi, 200)
    ax.plot(m, MERGER_SLOPE * m + MERGER_INTERCEPT, color="k", lw=1.2, label="G = -0.14 M20 + 0.33")
    m_left = m[m <= M20_0]
    ax.plot(m_left, (BULGE_SLOPE * m_left + BULGE_INTERCEPT) / BULGE_SCALE, color="k", lw=1.2, ls="--",
            label="G = (0.693 M20 + 3.96) / 4.95")
    ax.plot([M20_0], [G_0], "k.", ms=5)
    ax.set_xlim(hi, lo)  # M20 decreases to the right, as in Lotz et al. (2004)
    gmin, gmax = float(np.nanmin(table["gini"])), float(np.nanmax(table["gini"]))
    ax.set_ylim(min(0.35, gmin - 0.02), max(0.75, gmax + 0.02))
    ax.set_xlabel(r"$M_{20}$")
    ax.set_ylabel("Gini")
    ax.set_title(f"G-$M_{{20}}$ of {len(table['gini'])} galaxies (noiseless r band)")
    ax.legend(fontsize=7, loc="lower left", frameon=False, markerscale=2)
    return save_figure(fig, out)


def example_indices(data, n_per_class: int = 4, split: str = "test") -> dict[int, np.ndarray]:
    """Image indices of ``n_per_class`` un-augmented examples per class, spread over peak S/N.

    With a catalogue, the examples sit at evenly spaced quantiles of the class's Y10 r-band
    peak S/N; without one, they are the first images of each class.
    """
    ds = _dataset(data)
    labels = ds.labels(split)
    rows = ds.catalog(split)
    chosen: dict[int, np.ndarray] = {}
    for c in range(ds.n_classes):
        idx = np.flatnonzero(labels == c)
        if rows and "snr_r_Y10" in rows[0]:
            idx = np.array([i for i in idx if rows[i].get("augmentation", "none") == "none"], dtype=np.int64)
            snr = np.array([float(rows[i]["snr_r_Y10"]) for i in idx])
            idx = idx[np.argsort(snr, kind="stable")]
            if len(idx) > n_per_class:
                picks = np.round(np.linspace(0.15, 0.9, n_per_class) * (len(idx) - 1)).astype(int)
                idx = idx[picks]
        chosen[c] = idx[:n_per_class]
    return chosen


def plot_examples(data, out: str | Path | None = None, *, split: str = "test", band: str | None = None) -> Path:
    """Figure 2: four Y10 and the same four Y1 images per class (model input, one band: ``band``
    [default: r when the dataset has it, else its first band])."""
    ds = _dataset(data)
    if "Y1" not in ds.domains:
        raise file_error(ds.path, "no Y1 images; Figure 2 needs both depths")
    out = Path(out) if out is not None else ds.path / "figures" / "fig2_examples.png"
    band = band if band is not None else ("r" if "r" in ds.bands else ds.bands[0])
    if band not in ds.bands:
        raise file_error(ds.path, f"has no band {band!r}; its bands: {', '.join(ds.bands)}")
    b = ds.bands.index(band)
    chosen = example_indices(ds, 4, split)
    images = {d: ds.images(d, split) for d in ("Y10", "Y1")}
    if ds.normalisation_kind == "paper":
        vmin, vmax = 0.45, float((np.arcsinh(STRETCH_SCALE) + 1.0) / 2.0)  # the brightest stretched value
    else:
        shown = np.concatenate([images[d][np.concatenate(list(chosen.values())).astype(np.int64), b].ravel()
                                for d in ("Y10", "Y1")])
        vmin, vmax = (float(v) for v in np.percentile(shown, (1.0, 99.8))) if shown.size else (0.0, 1.0)
    k = ds.n_classes
    fig = plt.figure(figsize=(5 * k, 3.15))
    outer = fig.add_gridspec(1, k, wspace=0.07, left=0.005, right=0.995, bottom=0.1, top=0.84)
    for c, name in enumerate(ds.classes):
        pair = outer[c].subgridspec(1, 2, wspace=0.04)
        for k, domain in enumerate(("Y10", "Y1")):
            frame = fig.add_subplot(pair[k], frameon=False)
            frame.set_xticks([])
            frame.set_yticks([])
            frame.set_title(domain, fontsize=14)
            block = pair[k].subgridspec(2, 2, wspace=0.0, hspace=0.0)
            for j in range(4):
                ax = fig.add_subplot(block[j // 2, j % 2])
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_color("0.6")
                    spine.set_linewidth(0.4)
                if j < len(chosen[c]):
                    ax.imshow(images[domain][chosen[c][j], b], cmap="inferno", origin="lower", vmin=vmin,
                              vmax=vmax, interpolation="nearest")
        label = fig.add_subplot(outer[c], frameon=False)
        label.set_xticks([])
        label.set_yticks([])
        label.set_xlabel(name.capitalize(), fontsize=15, labelpad=4)
    fig.suptitle(f"{band}-band examples (stretched model input, {split} split): the same galaxies at Y10 "
                 "and Y1 depth", fontsize=10, y=1.0)
    return save_figure(fig, out)
