"""`deepadv certify`: provable one-pixel robustness of a run's attacked images."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer, plot_app: typer.Typer) -> None:
    """Add the ``certify`` command."""
    app.command("certify")(_certify)


def _certify(
    run: Path = typer.Option(..., "--run", help="Run folder made by 'deepadv train' (a ConvNet, d4-convnet or ResNet18)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset folder; default: the one recorded in the run's config.json."),
    n_images: Optional[int] = typer.Option(None, "--n-images", help="Certify the first N of the DE campaign's attacked images (or of the campaign's subsample when the run has none)."),
    all_images: bool = typer.Option(False, "--all", help="Certify all of them (the default when --n-images is not given)."),
    value_range: str = typer.Option("input", "--value-range", help="input: any stretched value in [0, 1] (the paper's); physical: 0 electrons to the full well through the stretch."),
    targets: str = typer.Option("paper", "--targets", help="paper: every other class as target (the campaign's targeted rule); all: those and the untargeted rule."),
    success: Optional[str] = typer.Option(None, "--success", help="paper (p(target) > 0.5) or top-class; default: the DE campaign's rule, else paper."),
    subsample: int = typer.Option(150, "--subsample", help="Without a DE campaign in the run: the size of the campaign's seeded test subsample to draw (the DE campaign's --n-images, so that the images are the same)."),
    seed: int = typer.Option(0, "--seed", help="Without a DE campaign: the subsample's seed (the campaign's --seed)."),
    budget: float = typer.Option(120.0, "--budget", help="Seconds per image; an image not decided by then is counted as undecided."),
    device: str = typer.Option("auto", "--device", help="Where the witness scan runs: auto, cpu or cuda (the bounds run on the CPU: float64, with float32 convolutions whose rounding is added outward)."),
    workers: int = typer.Option(1, "--workers", help="Processes certifying images at once, one torch thread each (CPU; up to the cores you have). The answers do not depend on it; a resumed run may use another number."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Discard a finished (or unfinished) result in RUN/certify."),
) -> None:
    """Prove, per image, that no single pixel at any value in the range flips it - or show the pixel that does.

    Each image ends flippable (a witness pixel, value and target, re-checked by a plain forward pass), certified (sound bounds over every position and every value in the range, refined by branch and bound) or undecided (the budget ran out; counted, never hidden). Writes RUN/certify/results.csv, certmap.npz and summary.json (last) with the flip-rate sandwich: at least flippable / n, at most (flippable + undecided) / n. An interrupted run resumes when the same command is run again.
    """
    from deepadversaries.certify.certify import CertifyConfig, certify_dir, certify_run  # deferred for start-up time (torch)
    from deepadversaries.errors import OptionError
    from deepadversaries.progress import info

    if all_images and n_images is not None:
        raise OptionError("give --n-images N or --all, not both")
    config = CertifyConfig(n_images=n_images, value_range=value_range, targets=targets, budget_s=budget,
                           success=success, subsample=subsample, seed=seed, workers=workers)
    summary = certify_run(run, config, data=data, device=device, overwrite=overwrite)
    lo, up = summary["rate_lower"], summary["rate_upper"]
    info(f"{summary['n_images']} images: {summary['flippable']} flippable, {summary['certified']} certified, "
         f"{summary['undecided']} undecided")
    if lo["value"] is not None:
        info(f"one-pixel flip rate between {lo['value']:.1%} (95% CI {lo['ci_low']:.1%}-{lo['ci_high']:.1%}) and "
             f"{up['value']:.1%} (95% CI {up['ci_low']:.1%}-{up['ci_high']:.1%}), n = {lo['n']}")
    typer.echo(str(certify_dir(run)))
