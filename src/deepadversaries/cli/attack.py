"""`deepadv attack`: the one-pixel attack campaign on a trained run (SPEC 7)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from deepadversaries.attacks.searches import search_help
from deepadversaries.config import AttackConfig
from deepadversaries.errors import OptionError
from deepadversaries.models.runs import attack_dir
from deepadversaries.progress import info


def parse_values(text: str) -> tuple[tuple[float, ...], ...]:
    """``--values 'g,r,i;g,r,i'`` as value tuples, one number per band; a one-line error when malformed."""
    out = []
    for part in (p.strip() for p in text.split(";") if p.strip()):
        try:
            value = tuple(float(x) for x in part.split(","))
        except ValueError as exc:
            raise OptionError(f"--values {text!r}: expected numbers such as '0.7,0.7,0.7;0.9,0.5,0.5'") from exc
        if out and len(value) != len(out[0]):
            raise OptionError(f"--values {part!r}: every value has one number per band ({len(out[0])} here)")
        out.append(value)
    return tuple(out)


def register(app: typer.Typer, plot_app: typer.Typer) -> None:
    """Add the ``attack`` command."""

    @app.command("attack")
    def attack(
        run: Path = typer.Option(..., "--run", help="Run folder made by 'deepadv train' (config.json + checkpoints/best.pt)."),
        data: Optional[Path] = typer.Option(None, "--data", help="Dataset folder; default: the one recorded in the run's config.json."),
        preset: str = typer.Option("quick", "--preset", help="Campaign size: tiny (a smoke test: 6 images, population 40, 4 iterations), quick (150 images, population 400, 10 iterations), paper (the paper's: 150 images, population 400, 80 iterations)."),
        n_images: Optional[int] = typer.Option(None, "--n-images", help="Size of the random test subsample (paper: 150); only correctly classified images are attacked."),
        pop_size: Optional[int] = typer.Option(None, "--pop-size", help="Differential-evolution population (paper: 400; at least 4)."),
        max_iter: Optional[int] = typer.Option(None, "--max-iter", help="Iteration cap: generations evolved before giving up (paper: 80)."),
        pixels: int = typer.Option(1, "--pixels", help="Pixels changed per attack, L in ||e||_0 <= L (paper: 1)."),
        mode: str = typer.Option("targeted", "--mode", help="targeted: try the other classes in turn (two for the paper's three), success at p(target) > 0.5; untargeted: success at p(true) < 0.05."),
        success: str = typer.Option("paper", "--success", help="paper: the probability thresholds above; top-class: success when the target becomes the predicted class (untargeted: when the true class stops being predicted), for under-confident models."),
        search: str = typer.Option("de", "--search", help=search_help()),
        value_range: str = typer.Option("input", "--value-range", help="input: any stretched value in [0, 1] (the paper's); physical: what a detector pixel can hold, 0 electrons to the full well (100,000 e-), through the stretch (docs/attacks.md)."),
        values: Optional[str] = typer.Option(None, "--values", help="Exhaustive search: values tried at every position besides the corners of the range (8 for g, r, i), one number per band in model-input units, as 'g,r,i;g,r,i', e.g. '0.7,0.7,0.7' (a 2-band dataset: '0.7,0.9')."),
        max_queries: Optional[int] = typer.Option(None, "--max-queries", help="Sparse-RS: queries per target (default: DE's budget, population x (iterations + 1))."),
        keep: str = typer.Option("fittest", "--keep", help="Which candidate of a successful generation is kept: fittest (the authors' code: the generation is finished and the population's fittest member kept) or first (the first candidate over the threshold, which sits just past the decision boundary)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the subsample and of every image's search (searches are seeded by seed and test index)."),
        batch_images: Optional[int] = typer.Option(None, "--batch-images", help="Images searched at once, their candidates sharing forward passes (default: 2 on a CPU, 64 on a GPU)."),
        device: str = typer.Option("auto", "--device", help="auto (a CUDA GPU if there is one), cpu or cuda."),
        precision: str = typer.Option("fp32", "--precision", help="Arithmetic of the search: fp32 (the paper), or bf16 mixed precision (faster on GPUs and on CPUs with AMX; a different rounding, successes still verified in fp32)."),
        threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for the search (default: torch's count, normally one per core)."),
        adaptive_threads: bool = typer.Option(True, "--adaptive-threads/--fixed-threads", help="On a CPU, use fewer threads while other processes keep cores busy, so that threads do not wait for each other; the numbers do not change."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Discard a finished (or unfinished) campaign in RUN/attack and start afresh."),
        tta: str = typer.Option("none", "--tta", help="Test-time augmentation of the attacked model: none, or d4 (its predictions averaged over the eight rotations and flips of each square image; every candidate costs eight forward passes; written to RUN/attack_tta_d4/ etc.; docs/defences.md)."),
    ) -> None:
        """Attack a seeded random subsample of the Y10 test set with one-pixel attacks.

        Works on any dataset and model the run holds (your own data from 'deepadv import', timm or adopted TorchScript models). Only correctly classified images are attacked; in targeted mode the other classes are tried in turn and the first success is kept. Writes results.csv, latents.npz and summary.json (last) in the search's folder of the run (RUN/attack/ for de; see --search). An interrupted campaign resumes where it stopped when the same command is run again.
        """
        from deepadversaries.attacks.campaign import attack_run  # deferred for start-up time (torch)

        config = AttackConfig.from_preset(preset, n_images=n_images, pop_size=pop_size, max_iter=max_iter,
                                          pixels=pixels, mode=mode, success=success, seed=seed, precision=precision,
                                          keep=keep, search=search, value_range=value_range,
                                          values=parse_values(values) if values else None, max_queries=max_queries)
        summary = attack_run(run, config, data=data, batch_images=batch_images, device=device, overwrite=overwrite,
                             threads=threads, adaptive_threads=adaptive_threads, tta=tta)
        rate = summary["success_rate"]
        info(f"drew {summary['images_drawn']} test images, {summary['correctly_classified']} correctly classified; "
             f"flipped {summary['flipped']} of {summary['attacked']} attacked"
             + (f" ({rate:.0%}), mean iterations {summary['mean_iterations']:.1f}" if rate is not None else "")
             + f" in {summary['timing']['wall_time_s']:.0f} s")
        if summary.get("corner_flip_rate") is not None:
            info(f"corner search flip rate (a lower bound: only the value set was tried): "
                 f"{summary['corner_flip_rate']:.0%}")
        out = attack_dir(run, search)
        typer.echo(str(out if tta == "none" else out.with_name(f"{out.name}_tta_{tta}")))
