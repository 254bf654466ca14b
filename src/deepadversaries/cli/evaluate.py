"""`deepadv evaluate`: accuracy, weighted precision/recall/F1 and confusion matrices on Y10 and Y1."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer, plot_app: typer.Typer) -> None:
    """Add the ``evaluate`` command."""

    @app.command("evaluate")
    def evaluate(
        run: Path = typer.Option(..., "--run", help="Run folder written by 'deepadv train'."),
        data: Optional[Path] = typer.Option(None, "--data", help="Dataset folder (default: the one the run was trained on)."),
        device: str = typer.Option("auto", "--device", help="auto (a GPU when there is one), cpu or cuda."),
        tta: str = typer.Option("none", "--tta", help="Test-time augmentation: none, or d4 (average the predictions over the eight rotations and flips of each square image: mean softmax, mean latent; written to RUN/tta_d4/, docs/defences.md)."),
    ) -> None:
        """Evaluate the run's kept checkpoint on the Y10 and Y1 test sets (the paper's Tables 2 and 4).

        Works on any run: trained here (ConvNet, ResNet18, timm) or adopted from a TorchScript file, on the simulated data or your own (its classes and both domains, or the one it has). Writes RUN/metrics.json, RUN/confusion_Y10.png and RUN/confusion_Y1.png, and prints a summary.
        """
        from deepadversaries.evaluation.evaluate import evaluate_run

        metrics = evaluate_run(run, data, device=device, tta=tta)
        for domain, m in metrics.items():
            typer.echo(f"{domain:>4}: accuracy {m['accuracy']:.3f}  precision {m['precision']:.3f}  "
                       f"recall {m['recall']:.3f}  F1 {m['f1']:.3f}  (n = {m['n']})")
