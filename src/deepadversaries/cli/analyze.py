"""`deepadv analyze` and `deepadv plot church-window`: the latent-space analysis (SPEC 8)."""

from __future__ import annotations

from pathlib import Path

import typer

from .. import PRESETS


def _fmt(x: float) -> str:
    return "NaN" if x != x else f"{x:.4g}"


def register(app: typer.Typer, plot_app: typer.Typer) -> None:
    """Register ``analyze`` on the app and ``church-window`` on the plot sub-app."""

    @app.command(
        "analyze",
        help=(
            "Compare a regular and a domain-adapted run of the same model on the same dataset, both "
            "attacked with 'deepadv attack': latent distances d_E (Y10-Y1, Y10-1P) on the images flipped "
            "under both runs (Tables 3/5, with n), the JS distance (base 2) between their distributions, "
            "church windows and isomaps (Figures 3-6, rotating 3-D isomap GIFs). Writes distances.csv, "
            "distances.md, distances_per_image.csv, fig3..fig6 PNGs, two GIFs and analysis.json (last)."
        ),
    )
    def analyze(
        regular: Path = typer.Option(..., "--regular", help="Run folder of the regularly trained model "
                                     "(with a finished attack: RUN/attack/summary.json)."),
        da: Path = typer.Option(..., "--da", help="Run folder of the domain-adapted (e.g. MMD) model: same "
                                "model and dataset as --regular, with a finished attack."),
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
        from ..analysis import PERTURBATIONS, analyze_runs

        result = analyze_runs(regular, da, out, n_isomap=n_isomap, examples=examples, seed=seed, preset=preset,
                              overwrite=overwrite, device=device)
        typer.echo(f"images flipped under both runs: {result['n_flipped_both']} "
                   f"(regular {result['attack']['regular']['n_flipped']}/{result['attack']['regular']['n_attacked']}, "
                   f"DA {result['attack']['da']['n_flipped']}/{result['attack']['da']['n_attacked']})")
        for pert in PERTURBATIONS:
            row = result["distances"]["latent"][pert]
            typer.echo(f"{pert}: median d_E regular {_fmt(row['regular']['median'])}, DA {_fmt(row['da']['median'])}; "
                       f"mean regular {_fmt(row['regular']['mean'])} ± {_fmt(row['regular']['stderr'])}, "
                       f"DA {_fmt(row['da']['mean'])} ± {_fmt(row['da']['stderr'])}; "
                       f"JS distance (base 2) {_fmt(row['js_distance'])}")
        for note in result["notes"]:
            typer.echo(f"note: {note}")
        typer.echo(f"written: {out}/distances.md, figures and analysis.json")

    @plot_app.command(
        "church-window",
        help=(
            "Church window of one attacked image of a run: the latent plane through z(Y10) spanned by "
            "z(1P) - z(Y10) (horizontal) and z(Y1) - z(Y10) (vertical), coloured by the model's class."
        ),
    )
    def church_window(
        run: Path = typer.Option(..., "--run", help="Run folder with a finished attack."),
        index: int = typer.Option(..., "--index", help="test_index of an attacked image (a row of "
                                  "RUN/attack/results.csv)."),
        out: Path = typer.Option(None, "--out", help="PNG to write (default: RUN/attack/church_window_INDEX.png)."),
        device: str = typer.Option("auto", "--device", help="auto, cpu or cuda: where the model runs."),
    ) -> None:
        from ..analysis import analyze_single_window
        from ..plots.latent import save_single_church_window

        trip = analyze_single_window(run, index, device=device)
        target = out if out is not None else run / "attack" / f"church_window_{index}.png"
        subtitle = f"{trip['model']} ({trip['method']}) · test image {index}"
        save_single_church_window(target, trip, subtitle=subtitle)
        typer.echo(f"written: {target}")
