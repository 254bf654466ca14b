"""What every figure shows, not only that a PNG exists.

The figures are caught as they are saved (``save_figure`` wrapped, see
tests/campaign_support.FigureRecorder) and their artists read back: the image arrays of the
church windows and the example panels, the points of the scatter plots, the bars and lines
of the histograms, the axis labels, titles and legends.
"""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from campaign_support import FigureRecorder
from matplotlib.colors import to_rgb
from PIL import Image

from deepadversaries import CLASSES, SPLITS
from deepadversaries.data.dataset import load_dataset

#: the paper's class colours (spiral, elliptical, merger), as written in its figures
COLOURS = {"spiral": "#ffa600", "elliptical": "#bc5090", "merger": "#003f5c"}
#: SPEC 3.3 boundaries
MERGER_LINE = (-0.14, 0.33)
BULGE_LINE = (0.693 / 4.95, 3.96 / 4.95)


def rgb(name: str) -> np.ndarray:
    return np.array(to_rgb(COLOURS[name]))


def window_axes(fig) -> list:
    """The church-window panels of a figure (the axes that show an image), top row first."""
    axes = [ax for ax in fig.axes if ax.images]
    return sorted(axes, key=lambda ax: (-round(ax.get_position().y0, 2), ax.get_position().x0))


def colour_at(ax, alpha: float, beta: float) -> np.ndarray:
    """The colour of a church window at grid point (alpha, beta) (the window spans [-1.1, 1.1]²)."""
    array = np.asarray(ax.images[0].get_array())
    n = array.shape[0]
    i, j = int(round((alpha + 1.1) / 2.2 * (n - 1))), int(round((beta + 1.1) / 2.2 * (n - 1)))
    return np.asarray(array[j, i, :3], dtype=float)


# ---------------------------------------------------------------------------------------------
# Figures 3-6 of the toy analysis
# ---------------------------------------------------------------------------------------------
def test_fig3_church_window_colours_labels_and_isomap(toy_analysis):
    fig = toy_analysis["figures"]["fig3_church_isomap.png"]
    example = toy_analysis["result"]["examples"][0]
    assert example["status"] == "flipped under both"
    windows = window_axes(fig)
    assert len(windows) == 2  # regular on top, mmd below
    for ax, method in zip(windows, ("regular", "mmd")):
        run = example["runs"][method]
        assert np.allclose(colour_at(ax, 0, 0), rgb(run["true"]), atol=1e-6), method  # Y10 at the origin
        assert np.allclose(colour_at(ax, 1, 0), rgb(run["predicted"]["1P"]), atol=1e-6)
        assert np.allclose(colour_at(ax, 0, 1), rgb(run["predicted"]["Y1"]), atol=1e-6)
        assert run["predicted"]["1P"] == run["target"] != run["true"]  # flipped to its target
        assert ax.get_xlabel() == "adversarial (1P) direction" and ax.get_ylabel() == "noisy (Y1) direction"
        assert ax.get_title() == f"{run['true']} → {run['target']}"
    isomaps = [ax for ax in fig.axes if ax.get_xlabel() == "isomap dimension 1"]
    assert [ax.get_title(loc="right") for ax in isomaps] == ["Regular training", "Domain adaptation (MMD)"]
    n_sample = len(toy_analysis["result"]["isomap_sample"]["test_index"])
    for ax in isomaps:
        sizes = [len(c.get_offsets()) for c in ax.collections]
        assert sizes[:2] == [n_sample, n_sample]  # the Y10 and the Y1 sample
        assert sizes[2:] == [1, 1, 1]  # the example's 1P, Y1 and Y10 markers
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert {"spiral", "elliptical", "merger", "Y10 image (×)", "Y1 image (★)", "one-pixel image (▲)"} <= set(legend)
    assert str(example["test_index"]) in fig._suptitle.get_text()


def test_fig5_every_window_has_the_true_class_at_the_origin(toy_analysis):
    fig = toy_analysis["figures"]["fig5_church_windows.png"]
    examples = toy_analysis["result"]["examples"]
    windows = window_axes(fig)
    assert len(windows) == 2 * len(examples) == 6
    for r, method in enumerate(("regular", "mmd")):
        for c, example in enumerate(examples):
            ax, run = windows[r * len(examples) + c], example["runs"][method]
            assert np.allclose(colour_at(ax, 0, 0), rgb(run["true"]), atol=1e-6)
            assert np.allclose(colour_at(ax, 1, 0), rgb(run["predicted"]["1P"]), atol=1e-6)
            assert ax.get_title().startswith(f"{run['true']} → ")
            assert ax.get_xlabel() == "adversarial (1P) direction"
            assert ax.get_ylabel() == ("noisy (Y1) direction" if c == 0 else "")
            # the class fractions of analysis.json are the window's colours
            array = np.asarray(ax.images[0].get_array())[..., :3]
            for name, fraction in run["window_fractions"].items():
                share = np.all(np.isclose(array, rgb(name), atol=1e-6), axis=-1).mean()
                assert share == pytest.approx(fraction, abs=1e-9)
    titles = [t.get_text() for t in fig.texts]
    assert "Regular training" in titles and "Domain adaptation (MMD)" in titles


def test_fig4_four_views_of_both_runs(toy_analysis):
    fig = toy_analysis["figures"]["fig4_isomap3d.png"]
    axes3d = [ax for ax in fig.axes if ax.name == "3d"]
    assert len(axes3d) == 8
    views = ((20, -60), (20, 30), (20, 120), (60, 210))
    assert [ax.get_title() for ax in axes3d] == [f"elevation {e:g}°, azimuth {a:g}°" for e, a in views] * 2
    assert [(ax.elev, ax.azim) for ax in axes3d] == [(float(e), float(a)) for e, a in views] * 2
    n_sample = len(toy_analysis["result"]["isomap_sample"]["test_index"])
    for ax in axes3d:
        points = [c for c in ax.collections if hasattr(c, "_offsets3d")]
        assert [len(c._offsets3d[0]) for c in points][:2] == [n_sample, n_sample]
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "Y10 surface" in legend and "Y1 surface" in legend


def test_fig6_histograms_are_fractions_with_median_lines_and_the_js_distance(toy_analysis):
    fig = toy_analysis["figures"]["fig6_distances.png"]
    tables = toy_analysis["result"]["distances"]
    n = toy_analysis["result"]["n_flipped_both"]
    axes = fig.axes
    assert len(axes) == 4
    expected = [("latent", "Y10-Y1", "d_E = ‖z(Y10) − z(Y1)‖₂"), ("latent", "Y10-1P", "d_E = ‖z(Y10) − z(1P)‖₂"),
                ("spread", "Y10-Y1", "‖z(Y10) − z(Y1)‖₂ / median ‖z(Y10) − z̄‖"),
                ("spread", "Y10-1P", "‖z(Y10) − z(1P)‖₂ / median ‖z(Y10) − z̄‖")]
    for ax, (scale, pert, xlabel) in zip(axes, expected):
        row = tables[scale][pert]
        assert ax.get_xlabel() == xlabel and ax.get_ylabel() == "fraction of images"
        heights = [p.get_height() for p in ax.patches]
        half = len(heights) // 2
        assert len(heights) == 2 * row["js_bins"]
        assert sum(heights[:half]) == pytest.approx(1.0) and sum(heights[half:]) == pytest.approx(1.0)
        lines = sorted(round(line.get_xdata()[0], 9) for line in ax.lines)
        wanted = sorted(round(row[m][k], 9) for m in ("regular", "mmd") for k in ("median", "mean"))
        assert lines == pytest.approx(wanted, rel=1e-6)
        text = " ".join(t.get_text() for t in ax.texts)
        assert f"JS distance = {row['js_distance']:.3f} (base 2)" in text and f"n = {n}" in text
    assert fig._suptitle.get_text() == f"Latent distances d_E of the {n} images flipped under both runs"


def test_isomap_gifs_rotate(toy_analysis):
    for method in ("regular", "mmd"):
        with Image.open(toy_analysis["out"] / f"isomap3d_{method}.gif") as im:
            assert im.n_frames == 6
            first = np.asarray(im.convert("RGB"), dtype=float)
            im.seek(3)
            half = np.asarray(im.convert("RGB"), dtype=float)
        assert np.abs(first - half).mean() > 1.0, "the frames of a rotating isomap must differ"


# ---------------------------------------------------------------------------------------------
# Figures 1 and 2 of the dataset
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dataset_figures(tiny_dataset, tmp_path_factory):
    from deepadversaries.plots import dataset

    recorder = FigureRecorder()
    out = tmp_path_factory.mktemp("dataset_figures")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dataset, "save_figure", recorder.wrap(dataset.save_figure))
        dataset.plot_gm20(tiny_dataset, out / "fig1.png")
        dataset.plot_examples(tiny_dataset, out / "fig2.png")
    return recorder.figures


def _galaxies(data) -> list[dict[str, str]]:
    """One catalogue row per galaxy (augmented merger copies dropped)."""
    rows = {}
    for split in SPLITS:
        with open(data / f"catalog_{split}.csv", newline="") as fh:
            for r in csv.DictReader(fh):
                if r["augmentation"] == "none":
                    rows.setdefault(int(r["galaxy_id"]), r)
    return [rows[k] for k in sorted(rows)]


def test_fig1_every_galaxy_in_the_gini_m20_plane_with_both_boundaries(dataset_figures, tiny_dataset):
    fig = dataset_figures["fig1.png"]
    (ax,) = fig.axes
    galaxies = _galaxies(tiny_dataset)
    for c, name in enumerate(CLASSES):
        mine = [(float(r["m20"]), float(r["gini"])) for r in galaxies if r["label"] == name]
        offsets = np.asarray(ax.collections[c].get_offsets())
        np.testing.assert_allclose(offsets, mine, rtol=1e-12)
        assert np.allclose(ax.collections[c].get_facecolor()[0][:3], rgb(name))
    merger, bulge = ax.lines[0], ax.lines[1]
    m = np.asarray(merger.get_xdata())
    np.testing.assert_allclose(merger.get_ydata(), MERGER_LINE[0] * m + MERGER_LINE[1], atol=1e-12)
    m = np.asarray(bulge.get_xdata())
    np.testing.assert_allclose(bulge.get_ydata(), BULGE_LINE[0] * m + BULGE_LINE[1], atol=1e-12)
    assert m.max() == pytest.approx(-1.679, abs=0.01)  # the bulge line stops where the boundaries meet
    left, right = ax.get_xlim()
    assert left > right  # M20 decreases to the right (Lotz et al. 2004)
    assert ax.get_xlabel() == "$M_{20}$" and ax.get_ylabel() == "Gini"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    for name in CLASSES:
        assert f"{name} ({sum(r['label'] == name for r in galaxies)})" in legend
    assert f"of {len(galaxies)} galaxies" in ax.get_title()


def test_fig2_shows_the_same_galaxies_at_y10_and_y1_by_class(dataset_figures, tiny_dataset):
    fig = dataset_figures["fig2.png"]
    ds = load_dataset(tiny_dataset)
    labels = ds.labels("test")
    with open(tiny_dataset / "catalog_test.csv", newline="") as fh:
        augmentation = [r["augmentation"] for r in csv.DictReader(fh)]
    r_band = {d: np.asarray(ds.images(d, "test"))[:, 1] for d in ("Y10", "Y1")}
    panels = [ax for ax in fig.axes if ax.images]
    # up to four un-augmented examples per class (the tiny test set has fewer mergers)
    per_class = [min(4, sum(1 for i in range(len(labels)) if labels[i] == c and augmentation[i] == "none"))
                 for c in range(3)]
    assert per_class[0] == per_class[1] == 4 and per_class[2] >= 1
    assert len(panels) == 2 * sum(per_class)
    # panels in drawing order: per class, its Y10 images, then the same galaxies at Y1
    start = 0
    for c in range(3):
        shown = {}
        for domain in ("Y10", "Y1"):
            for j in range(per_class[c]):
                array = np.asarray(panels[start].images[0].get_array())
                start += 1
                matches = [i for i in range(len(labels)) if np.array_equal(r_band[domain][i], array)]
                assert len(matches) == 1, (c, domain, j)
                shown.setdefault(domain, []).append(matches[0])
        assert shown["Y10"] == shown["Y1"]  # the same galaxies at both depths
        assert all(labels[i] == c and augmentation[i] == "none" for i in shown["Y10"])
    names = [ax.get_xlabel() for ax in fig.axes if ax.get_xlabel()]
    assert names == ["Spiral", "Elliptical", "Merger"]
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == ["Y10", "Y1"] * 3


# ---------------------------------------------------------------------------------------------
# the confusion matrix of a run
# ---------------------------------------------------------------------------------------------
def test_confusion_matrix_shows_counts_and_row_fractions(tmp_path, monkeypatch):
    from deepadversaries.plots import training

    recorder = FigureRecorder()
    monkeypatch.setattr(training, "save_figure", recorder.wrap(training.save_figure))
    confusion = [[8, 2, 0], [1, 3, 0], [0, 0, 0]]
    training.plot_confusion_matrix(confusion, tmp_path / "cm.png", title="toy")
    ax = recorder.figures["cm.png"].axes[0]
    np.testing.assert_allclose(ax.images[0].get_array(), [[0.8, 0.2, 0], [0.25, 0.75, 0], [0, 0, 0]])
    texts = [t.get_text() for t in ax.texts]
    assert texts == ["8\n80%", "2\n20%", "0\n0%", "1\n25%", "3\n75%", "0\n0%", "0\n0%", "0\n0%", "0\n0%"]
    assert ax.get_xlabel() == "predicted class" and ax.get_ylabel() == "true class"
    assert [t.get_text() for t in ax.get_xticklabels()] == list(CLASSES)
    assert ax.get_title() == f"toy\naccuracy {11 / 14:.3f} (n = 14)"
    assert not math.isnan(float(ax.images[0].get_array().sum()))
