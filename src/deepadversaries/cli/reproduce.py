"""`deepadv reproduce` (the whole study, then a report) and `deepadv report` (re-render it)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from deepadversaries.devices import DEVICE_CHOICES


def register(app: typer.Typer, plot_app: typer.Typer) -> None:
    """Add the ``reproduce`` and ``report`` commands."""

    @app.command("reproduce")
    def reproduce_cmd(
        out: Path = typer.Option(..., "--out", "-o", help="Output folder: created when missing; an unfinished "
                                 "reproduction there is resumed (finished stages are skipped)."),
        preset: str = typer.Option("quick", "--preset", "-p", help="Sizes of the whole study: 'tiny' (a smoke "
                                   "test), 'quick' (the main job, sized for a laptop CPU, ConvNet only), 'paper' (the paper's sizes and both models; for a GPU)."),
        seed: int = typer.Option(0, "--seed", help="Seed of every stage (data, training, attack, analysis)."),
        device: str = typer.Option("auto", "--device", help=f"Where to train and attack: {', '.join(DEVICE_CHOICES)} "
                                   "('auto' takes a CUDA GPU when there is one)."),
        models: Optional[str] = typer.Option(None, "--models", help="Comma-separated models to run instead of the "
                                             "preset's grid, e.g. 'convnet,resnet18' (quick and tiny run ConvNet "
                                             "only; paper runs both)."),
        methods: str = typer.Option("regular,mmd", "--methods", help="Comma-separated training recipes: a method "
                                    "(regular, mmd, dann, coral, adabn, adv-1p), optionally joined to a training "
                                    "augmentation (regular+survey-mix); regular is the reference the others are "
                                    "compared with. Default: the paper's regular and mmd."),
        attacks: str = typer.Option("de", "--attacks", help="One-pixel searches on the same images: de (the "
                                    "paper's differential evolution, always), exhaustive (the corner search: every "
                                    "position x the value-cube corners, a lower bound), sparse-rs (Croce et al. "
                                    "2022). E.g. 'de,exhaustive,sparse-rs'."),
        workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Processes for simulating the "
                                              "dataset (default: the number of CPUs)."),
        data: Optional[Path] = typer.Option(None, "--data", help="Use this existing dataset folder instead of "
                                            "simulating one: a folder made by 'deepadv simulate', or the published "
                                            "data (Zenodo 10.5281/zenodo.5514180: images_Y10_*.npy, images_Y1_*.npy, "
                                            "labels_*.npy). It is checked, never modified."),
    ) -> None:
        """Run simulate -> train {model} x {method} -> evaluate -> attack -> robustness -> analyze -> report (one seed).

        Writes OUT/report.html (self-contained), OUT/report.md, OUT/findings.json and OUT/timings.json.

        Each stage is skipped when its outputs are already finished, so an interrupted run continues where it stopped; deleting one stage's outputs re-runs that stage and the ones that depend on it. A failing stage stops the run with one line naming the stage and its log in OUT/logs/.
        """
        from deepadversaries.workflow.reproduce import reproduce  # deferred for start-up time (torch, GalSim)

        chosen = [m for m in models.split(",")] if models else None
        path = reproduce(out, preset=preset, seed=seed, device=device, models=chosen, methods=methods, workers=workers,
                         data=data, attacks=attacks)
        typer.echo(str(path))

    @app.command("report")
    def report_cmd(
        out: Path = typer.Option(..., "--out", "-o", help="A reproduction folder made by 'deepadv reproduce'."),
    ) -> None:
        """Re-render OUT/report.md, OUT/report.html and OUT/findings.json from the stage files."""
        from deepadversaries.io import OutputLock  # deferred for start-up time
        from deepadversaries.workflow.layout import read_manifest
        from deepadversaries.reporting.report import write_report

        read_manifest(out)  # a clear error before taking the lock if OUT is not a reproduction
        with OutputLock(out, "report"):
            path = write_report(out)
        typer.echo(str(path))
