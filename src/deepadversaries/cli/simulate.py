"""`deepadv simulate` (the Y10/Y1 mock dataset) and the dataset figures `deepadv plot gm20|examples`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from deepadversaries import CLASSES, SPLITS
from deepadversaries.config import SimulateConfig
from deepadversaries.errors import check_choice
from deepadversaries.io import read_json


def register(app: typer.Typer, plot_app: typer.Typer) -> None:
    """Add the ``simulate`` command and the ``plot gm20`` / ``plot examples`` figures."""
    app.command("simulate")(_simulate)
    plot_app.command("gm20")(_plot_gm20)
    plot_app.command("examples")(_plot_examples)


def _simulate(
    out: Path = typer.Option(..., "--out", help="Dataset folder to write (created; must be empty unless "
                             "it holds an unfinished run of the same configuration, which is resumed)."),
    preset: str = typer.Option("quick", "--preset", help="Size: tiny (60 galaxies, a smoke test), quick "
                               "(2,500) or paper (25,005 = 14312/8151/2542)."),
    n_galaxies: Optional[int] = typer.Option(None, "--n-galaxies", help="Galaxies before merger "
                                             "augmentation (overrides the preset); split 57/33/10 % into "
                                             "spiral/elliptical/merger."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed gives bit-identical arrays."),
    workers: int = typer.Option(1, "--workers", help="Worker processes (the result does not depend on it)."),
    split_mode: str = typer.Option("galaxy", "--split-mode", help="galaxy: 70:10:20 split by galaxy, "
                                   "then merger augmentation (no leaks); paper: augment first, then split "
                                   "images at random as the paper did (flipped copies leak across splits)."),
    brightness: float = typer.Option(1.0, "--brightness", help="Multiplies every galaxy's flux; 1 gives "
                                     "a median Y10 r-band peak S/N per pixel near 20 (Y1 near 6), and "
                                     "the S/N scales about linearly with it."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a finished or different dataset "
                                   "in --out (only its dataset files are removed)."),
) -> None:
    """Simulate LSST-like Y10 and Y1 images of spiral, elliptical and merging galaxies.

    Renders parametric galaxies with GalSim through the LSST survey model (zero points, sky,
    exposure per year, Kolmogorov x Airy PSF, Poisson noise), labels them by their
    Gini-M20 class on the noiseless r band with the paper's class quotas, augments the
    mergers x5, splits 70:10:20 and writes the dataset folder (images_*, labels_*,
    catalog_*.csv, dataset.json written last). An interrupted run resumes when the same
    command is run again.
    """
    from deepadversaries.simulation.simulate import simulate_dataset  # deferred for start-up time (GalSim)

    config = SimulateConfig.from_preset(preset, n_galaxies=n_galaxies, seed=seed, split_mode=split_mode,
                                        brightness=brightness)
    path = simulate_dataset(out, config, workers=workers, overwrite=overwrite)
    _report_dataset(path)


def _report_dataset(path: Path) -> None:
    """Print the dataset folder, its galaxy and split counts and its median peak S/N per band."""
    meta = read_json(path / "dataset.json")
    counts = meta["counts"]
    typer.echo(f"dataset: {path}  ({meta['seconds']:.0f} s, acceptance {meta['acceptance']['rate']:.2f})")
    typer.echo("galaxies: " + ", ".join(f"{c} {counts['galaxies'][c]}" for c in CLASSES))
    for split in SPLITS:
        typer.echo(f"{split:>5}: {counts[split]['total']:5d} images (" +
                   ", ".join(f"{c} {counts[split][c]}" for c in CLASSES) + ")")
    for domain, bands in meta["peak_snr"].items():
        typer.echo(f"median peak S/N {domain:>3}: " + ", ".join(
            f"{b} {s['median']:.1f}" for b, s in bands.items()) +
            f"  (r band 5-95%: {bands['r']['p5']:.1f}-{bands['r']['p95']:.1f})")


def _plot_gm20(
    data: Path = typer.Option(..., "--data", help="Dataset folder written by 'deepadv simulate'."),
    out: Optional[Path] = typer.Option(None, "--out", help="PNG file (default: DATA/figures/fig1_gm20.png)."),
) -> None:
    """Figure 1: the galaxies in the Gini-M20 plane with the merger and bulge boundaries."""
    from deepadversaries.plots.dataset import plot_gm20 as plot_gm20_figure  # deferred for start-up time

    typer.echo(str(plot_gm20_figure(data, out)))


def _plot_examples(
    data: Path = typer.Option(..., "--data", help="Dataset folder (ours or the published layout)."),
    out: Optional[Path] = typer.Option(None, "--out",
                                       help="PNG file (default: DATA/figures/fig2_examples.png)."),
    split: str = typer.Option("test", "--split", help="Split to take the examples from."),
) -> None:
    """Figure 2: four Y10 images per class and the same galaxies at Y1 depth."""
    from deepadversaries.plots.dataset import plot_examples as plot_examples_figure  # deferred for start-up time

    typer.echo(str(plot_examples_figure(data, out, split=check_choice(split, SPLITS, "split"))))
