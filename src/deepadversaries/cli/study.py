"""`deepadv study`: the experiment grid over seeds on Dask, every finding with a confidence interval."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from deepadversaries.devices import DEVICE_CHOICES


def register(app: typer.Typer, plot_app: typer.Typer) -> None:
    """Add the ``study`` command."""

    @app.command("study")
    def study_cmd(
        out: Path = typer.Option(..., "--out", "-o", help="Study folder: created when missing; an unfinished study "
                                 "there is resumed (finished stages are skipped). A folder holding a study of "
                                 "another grid is refused."),
        preset: str = typer.Option("quick", "--preset", "-p", help="Sizes of every cell: tiny (a smoke test), "
                                   "quick (sized for a laptop CPU, ConvNet) or paper (the paper's; for GPUs)."),
        seeds: str = typer.Option("0-4", "--seeds", help="Training and attack seeds: a range '0-4', a list "
                                  "'0,2,5' or both '0-2,7'. One cell per (model, method, seed)."),
        models: Optional[str] = typer.Option(None, "--models", help="Comma-separated models (default: the "
                                             "preset's: convnet; paper: convnet,resnet18)."),
        methods: str = typer.Option("regular,mmd", "--methods", help="Comma-separated training recipes: a method "
                                    "(regular, mmd, dann, coral, adabn, adv-1p), optionally joined to a training "
                                    "augmentation (regular+survey-mix, mmd+survey-mix); regular is the reference "
                                    "every other recipe is compared with."),
        attacks: str = typer.Option("de", "--attacks", help="One-pixel searches on the same images: de (the "
                                    "paper's differential evolution, always), exhaustive (the corner search: every "
                                    "position x the value-cube corners, a lower bound), sparse-rs (Croce et al. "
                                    "2022). E.g. 'de,exhaustive,sparse-rs'."),
        attack_images: Optional[int] = typer.Option(None, "--attack-images", help="Y10 test images drawn for the "
                                                    "one-pixel attack of every cell (default: the preset's study "
                                                    "size: quick 500, tiny 6, paper 150). Finding (d) rests on the "
                                                    "images flipped under both runs of a seed: more images, more "
                                                    "power, proportionally longer attacks."),
        data: Optional[Path] = typer.Option(None, "--data", help="Use this existing dataset folder instead of "
                                            "simulating one (ours, or the published Zenodo files)."),
        data_seeds: bool = typer.Option(False, "--data-seeds", help="Simulate one dataset per seed (with that "
                                        "seed), so that the intervals include the dataset's variation too."),
        scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Address of an existing Dask scheduler, "
                                                "e.g. tcp://10.0.0.5:8786 (its workers must see --out at the same "
                                                "path). Default: a LocalCluster on this machine."),
        workers: Optional[int] = typer.Option(None, "--workers", help="LocalCluster worker processes (default: "
                                              "one per CPU); each task gets CPUs / workers torch threads."),
        device: str = typer.Option("auto", "--device", help=f"Where to train and attack: {', '.join(DEVICE_CHOICES)}."),
    ) -> None:
        """Train, evaluate and attack every (model, method, seed) cell on Dask, then pool the seeds.

        Writes DIR/cells/<model>_<method>_s<seed>/ (run folders), DIR/analysis/, DIR/report.html, DIR/report.md and, last, DIR/study.json: each of the paper's findings with its primary endpoint's effect, 95 % confidence interval over the seeds, per-seed effects, a verdict on the paper's direction (held, contradicted, inconclusive) and a magnitude statement against the paper's number. A killed study resumes when the same command is run again.
        """
        from deepadversaries.workflow.study import study  # deferred for start-up time (torch, Dask)

        path = study(out, preset, seeds=seeds, models=models.split(",") if models else None, methods=methods,
                     data=data, vary_data=data_seeds, scheduler=scheduler, workers=workers, device=device,
                     attacks=attacks, attack_images=attack_images)
        typer.echo(str(path))
