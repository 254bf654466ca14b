"""`deepadv robustness`: the survey-corruption benchmark on a run; `deepadv plot robustness-*` figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer

CORRUPTIONS_HELP = (
    "'all' or a comma-separated list of: seeing (worse seeing, FWHM up to 2x the median), sky_error (+- a fraction "
    "of the sky), cosmic_rays (muon tracks surviving co-addition), hot_pixels, dead_pixels, bad_columns, "
    "saturation (a bright star with bleed trails), satellite (a LEO-satellite trail), misregistration (one band "
    "shifted), compression (fpack quantisation), depth (Y7 ... Y1 noise). Tables and sources: docs/robustness.md."
)


def register(app: typer.Typer, plot_app: typer.Typer) -> None:
    """Add the ``robustness`` command and the ``plot robustness-grid`` / ``plot robustness-curves`` figures."""
    app.command("robustness")(_robustness)
    plot_app.command("robustness-grid")(_robustness_grid)
    plot_app.command("robustness-curves")(_robustness_curves)


def _robustness(
    run: Path = typer.Option(..., "--run", help="Run folder made by 'deepadv train' (config.json, checkpoints/best.pt, training.json)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset folder; default: the one recorded in the run's config.json."),
    corruptions: str = typer.Option("all", "--corruptions", help=CORRUPTIONS_HELP),
    severities: str = typer.Option("1-5", "--severities", help="Severities to apply: a range '1-5' or a list '1,3,5' (0 = clean, always evaluated)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the corruptions; the same seed gives every run the same corrupted images (paired comparison)."),
    baseline: Optional[Path] = typer.Option(None, "--baseline", help="Run whose errors normalise the corruption errors (CE, mCE). Default: for a non-regular run, the regular run of the same model beside it (RUN/../MODEL_regular); a regular run has none."),
    device: str = typer.Option("auto", "--device", help="auto (a CUDA GPU if there is one), cpu or cuda."),
    batch_size: int = typer.Option(256, "--batch-size", help="Images per forward pass."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a finished result in RUN/robustness."),
) -> None:
    """Evaluate the run's kept checkpoint on the Y10 test set under survey-realistic corruptions.

    Each corruption (detector, pipeline and observing-condition errors with LSST parameters) is applied to the raw images before the stretch, at severities 1-5; every run gets the same corrupted images for one --seed. It needs raw electrons in LSST bands (your own data: imported with --bands g,r,... and not --stretch none). Per (corruption, severity): accuracy, flip rate against the clean prediction and mean p(true).

    Writes RUN/robustness/robustness.csv, accuracy.png, corruption_grid.png and summary.json (last), with ImageNet-C's corruption errors CE_c = sum_s E(run) / sum_s E(baseline) and their mean, mCE.
    """
    from ..robustness import robustness_dir, robustness_run  # deferred for start-up time (torch)

    summary = robustness_run(run, data, corruptions=corruptions, severities=severities, seed=seed,
                             baseline=baseline, device=device, batch_size=batch_size, overwrite=overwrite)
    _report_summary(summary)
    typer.echo(str(robustness_dir(run)))


def _report_summary(summary: dict[str, Any]) -> None:
    """Log the clean accuracy, each corruption's mean accuracy (and CE), the mCE and the timing."""
    from ..progress import info  # deferred for start-up time

    clean = summary["clean"]["accuracy"]
    info(f"clean accuracy {clean:.3f} on {summary['n']} Y10 test images")
    ce = summary["corruption_errors"] or {}
    for name, err in summary["mean_errors"].items():
        extra = f"  CE {ce[name]:.3f}" if name in ce else ""
        info(f"  {name:<16} mean accuracy {1.0 - err:.3f}{extra}")
    if summary["mce"] is not None:
        info(f"mCE {summary['mce']:.3f} relative to {summary['baseline']['run']} "
             f"(relative mCE {summary['relative_mce']:.3f})")
    else:
        info(f"mean error {summary['mean_error']:.3f} (no baseline: {summary['baseline']['chosen_by']})")
    info(f"in {summary['timing']['wall_time_s']:.0f} s "
         f"(corrupting {summary['timing']['corrupt_s']:.0f} s, evaluating {summary['timing']['evaluate_s']:.0f} s)")


def _robustness_grid(
    data: Path = typer.Option(..., "--data", help="Dataset folder."),
    index: int = typer.Option(0, "--index", help="Index of the galaxy in the test split."),
    domain: str = typer.Option("Y10", "--domain", help="Depth of the images to corrupt: Y10 or Y1."),
    corruptions: str = typer.Option("all", "--corruptions", help="'all' or a comma-separated list of corruption names (rows)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the corruptions."),
    out: Optional[Path] = typer.Option(None, "--out", help="PNG to write (default: DATA/figures/robustness_grid.png)."),
) -> None:
    """One test galaxy under every corruption (rows) and severity 0-5 (columns), stretched as a model sees it."""
    # deferred for start-up time (numpy, torch, matplotlib)
    import numpy as np

    from ..data import load_dataset
    from ..errors import OptionError, check_choice
    from ..plots.robustness import plot_corruption_grid
    from ..robustness import check_dataset, grid_normalisation, parse_corruptions

    names = parse_corruptions(corruptions)
    dataset = load_dataset(data)
    check_choice(domain, dataset.domains, "domain")
    bands = check_dataset(dataset)
    raw = dataset.images(domain, "test", stretched=False)
    if not 0 <= index < len(raw):
        raise OptionError(f"--index {index} is outside the test split (0-{len(raw) - 1})")
    lo, hi, to_input = grid_normalisation(dataset, domain)
    label = dataset.classes[int(dataset.labels("test")[index])]
    path = plot_corruption_grid(np.asarray(raw[index]), lo, hi,
                                out if out is not None else dataset.path / "figures" / "robustness_grid.png",
                                corruptions=names, seed=seed, domain=domain, bands=bands, to_input=to_input,
                                title=f"test galaxy {index} ({label}), {domain}")
    typer.echo(str(path))


def _robustness_curves(
    runs: List[Path] = typer.Option(..., "--run", help="Run folder with a finished 'deepadv robustness' result; repeat for several runs."),
    out: Path = typer.Option(..., "--out", help="PNG to write."),
) -> None:
    """Accuracy versus severity per corruption, one line per run (labelled MODEL METHOD (folder))."""
    from ..plots.robustness import plot_accuracy_curves  # deferred for start-up time (matplotlib)

    typer.echo(str(plot_accuracy_curves(_read_summaries(runs), out)))


def _read_summaries(runs: List[Path]) -> dict[str, Any]:
    """Each run's finished robustness summary, keyed by its curve label ``MODEL METHOD (folder)``."""
    # deferred for start-up time (torch)
    from ..errors import file_error
    from ..io import read_json
    from ..robustness import KIND, SUMMARY_NAME, robustness_dir

    summaries = {}
    for run in runs:
        path = robustness_dir(run) / SUMMARY_NAME
        if not path.is_file():
            raise file_error(path, "no finished robustness result; run 'deepadv robustness' first")
        summary = read_json(path)
        if not isinstance(summary, dict) or summary.get("kind") != KIND:
            raise file_error(path, f"not a robustness summary (expected \"kind\": \"{KIND}\")")
        summaries[f"{summary['model']} {summary['method']} ({Path(run).name})"] = summary
    return summaries
