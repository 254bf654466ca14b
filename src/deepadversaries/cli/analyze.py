"""`deepadv analyze` and `deepadv plot church-window`: the latent-space analysis (SPEC 8)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from deepadversaries import PRESETS
from deepadversaries.formatting import fmt_pm, fmt_sig

ANALYZE_HELP = (
    "Compare a regular and a domain-adapted run of the same model on the same dataset, both "
    "attacked with 'deepadv attack': latent distances d_E (Y10-Y1, Y10-1P) on the images flipped "
    "under both runs (Tables 3/5, with n), the JS distance (base 2) between their distributions, "
    "church windows and isomaps (Figures 3-6, rotating 3-D isomap GIFs). Writes distances.csv, "
    "distances.md, distances_per_image.csv, fig3..fig6 PNGs, two GIFs and analysis.json (last)."
)
CHURCH_WINDOW_HELP = (
    "Church window of one attacked image of a run: the latent plane through z(Y10) spanned by "
    "z(1P) - z(Y10) (horizontal) and z(Y1) - z(Y10) (vertical), coloured by the model's class."
)


def register(app: typer.Typer, plot_app: typer.Typer) -> None:
    """Register ``analyze`` on the app and ``church-window`` on the plot sub-app."""
    app.command("analyze", help=ANALYZE_HELP)(_analyze)
    plot_app.command("church-window", help=CHURCH_WINDOW_HELP)(_church_window)


def _analyze(
    regular: Path = typer.Option(..., "--regular", help="Run folder of the regularly trained model "
                                 "(with a finished attack: RUN/attack/summary.json)."),
    adapted: Path = typer.Option(..., "--adapted", "--da", help="Run folder of the domain-adapted (e.g. "
                                 "MMD) model: same model and dataset as --regular, with a finished attack."),
    out: Path = typer.Option(..., "--out", help="Output folder for the tables and figures."),
    n_isomap: int = typer.Option(250, "--n-isomap", min=0, help="Random test galaxies (each in Y10 "
                                 "and Y1) embedded in the isomaps; capped at the test-set size."),
    examples: int = typer.Option(4, "--examples", min=1, help="Example images in Figure 5 (the first "
                                 "is Figure 3's); taken from the images flipped under both runs."),
    seed: int = typer.Option(0, "--seed", help="Seed of the isomap sample and of the example choice."),
    preset: str = typer.Option("quick", "--preset", help=f"Size preset ({', '.join(PRESETS)}): sets the "
                               "frames and resolution of the rotating GIFs."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo an analysis already finished in --out."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda: where the models run."),
) -> None:
    """Run the analysis of two runs (help: ANALYZE_HELP) and print its headline numbers."""
    from deepadversaries.analysis.analyze import analyze_runs  # deferred for start-up time (torch)

    result = analyze_runs(regular, adapted, out, n_isomap=n_isomap, examples=examples, seed=seed,
                          preset=preset, overwrite=overwrite, device=device)
    _report_analysis(result)
    typer.echo(f"written: {out}/distances.md, figures and analysis.json")


def _report_analysis(result: dict[str, Any]) -> None:
    """Print the images flipped under both runs, the median and mean d_E per perturbation and the notes."""
    from deepadversaries.analysis.latent import PERTURBATIONS  # deferred for start-up time (torch)

    ref, ada = result["methods"]
    attack = result["attack"]
    typer.echo(f"images flipped under both runs: {result['n_flipped_both']} "
               f"({ref} {attack[ref]['n_flipped']}/{attack[ref]['n_attacked']}, "
               f"{ada} {attack[ada]['n_flipped']}/{attack[ada]['n_attacked']})")
    for pert in PERTURBATIONS:
        row = result["distances"]["latent"][pert]
        typer.echo(f"{pert}: median d_E {ref} {fmt_sig(row[ref]['median'])}, {ada} {fmt_sig(row[ada]['median'])}; "
                   f"mean {ref} {fmt_sig(row[ref]['mean'])} {fmt_pm(row[ref]['stderr'])}, "
                   f"{ada} {fmt_sig(row[ada]['mean'])} {fmt_pm(row[ada]['stderr'])}; "
                   f"JS distance (base 2) {fmt_sig(row['js_distance'])}")
    for note in result["notes"]:
        typer.echo(f"note: {note}")


def _church_window(
    run: Path = typer.Option(..., "--run", help="Run folder with a finished attack."),
    index: int = typer.Option(..., "--index", help="test_index of an attacked image (a row of "
                              "RUN/attack/results.csv)."),
    out: Path = typer.Option(None, "--out", help="PNG to write (default: RUN/attack/church_window_INDEX.png)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda: where the model runs."),
) -> None:
    """Draw the church window of one attacked image (help: CHURCH_WINDOW_HELP)."""
    from deepadversaries.analysis.analyze import analyze_single_window  # deferred for start-up time (torch)
    from deepadversaries.plots.latent import save_single_church_window

    trip = analyze_single_window(run, index, device=device)
    target = out if out is not None else run / "attack" / f"church_window_{index}.png"
    subtitle = f"{trip['model']} ({trip['method']}) · test image {index}"
    save_single_church_window(target, trip, subtitle=subtitle, classes=trip["classes"])
    typer.echo(f"written: {target}")
