"""`deepadv robustness`: the survey-corruption benchmark on a run; `deepadv plot robustness-*` figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer

from deepadversaries.corruptions.registry import corruptions_help  # light: names and tables, no GalSim

#: the ``--corruptions`` help, from the registry (built-ins and corruptions registered before the CLI is built)
CORRUPTIONS_HELP = corruptions_help()


def register(app: typer.Typer, plot_app: typer.Typer) -> None:
    """Add the ``robustness`` and ``robustness-table`` commands and the ``plot robustness-grid`` /
    ``plot robustness-curves`` figures."""
    app.command("robustness")(_robustness)
    app.command("robustness-table")(_robustness_table)
    plot_app.command("robustness-grid")(_robustness_grid)
    plot_app.command("robustness-curves")(_robustness_curves)


def _robustness(
    run: Path = typer.Option(..., "--run", help="Run folder made by 'deepadv train' (config.json, checkpoints/best.pt, training.json)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset folder; default: the one recorded in the run's config.json."),
    corruptions: str = typer.Option("all", "--corruptions", help=CORRUPTIONS_HELP),
    severities: str = typer.Option("1-5", "--severities", help="Severities to apply: a range '1-5' or a list '1,3,5' (0 = clean, always evaluated)."),
    domain: str = typer.Option("Y10", "--domain", help="Test images to corrupt: Y10, Y1 or both (RUN/robustness for Y10, RUN/robustness_Y1 for Y1)."),
    stress: bool = typer.Option(False, "--stress", help="Use the stress tables (the first version's strongest levels: bad single visits, unmasked bright trails, lossy compression beyond Rubin's recipe) instead of the Rubin-grounded ones; writes RUN/robustness[_Y1]_stress."),
    defects: str = typer.Option("dithered", "--defects", help="Detector defects (hot/dead pixels, bad columns): dithered (per visit, new positions each visit; default), masked (masked and interpolated from the neighbours) or no-dither (the same sky pixel in every visit, unmasked: an assumption, the worst case)."),
    noise_check: str = typer.Option("refuse", "--noise-check", help="When the test images' border-pixel noise is not the LSST survey model's sqrt(sky) (imported data): refuse, warn or off."),
    survey: Optional[Path] = typer.Option(None, "--survey", help="JSON file of your survey's numbers per band (co-add sky in e-/pixel, exposure in s, optional zero point; visit length, read noise): the corruptions and the noise check use them instead of the LSST model's; one domain at a time. Layout: docs/robustness.md."),
    seed: int = typer.Option(0, "--seed", help="Seed of the corruptions; the same seed gives every run the same corrupted images (paired comparison)."),
    baseline: Optional[Path] = typer.Option(None, "--baseline", help="Run whose per-image outcomes give the corruption errors (ΔE, CE, mCE). Default: for a non-regular run, the regular run of the same model beside it (RUN/../MODEL_regular); a regular run has none."),
    device: str = typer.Option("auto", "--device", help="auto (a CUDA GPU if there is one), cpu or cuda."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Images per forward pass (default 64, the "
                                             "fastest measured on a CPU)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a finished result."),
) -> None:
    """Evaluate the run's kept checkpoint on a test set under survey-realistic corruptions.

    Each corruption (detector, pipeline, observing-condition and scene errors with Rubin-grounded parameters) is applied to the raw images before the stretch, at severities 1-5; every run gets the same corrupted images for one --seed. It needs raw electrons in LSST bands (your own data: imported with --bands g,r,... and not --stretch none) whose noise is the survey model's (or your own survey's numbers, --survey FILE.json). Per (corruption, severity): accuracy, flip rate, mean p(true), mean |Δ model input|, fraction of pixels changed and clipped by the stretch.

    Writes RUN/robustness[_Y1][_stress][_masked|_no-dither]/robustness.csv, outcomes.npz, accuracy.png, corruption_grid.png and summary.json (last), with ΔE against the baseline (points, paired bootstrap 95 % interval) for every corruption and CE / mCE over the corruptions that significantly degrade the baseline.
    """
    from deepadversaries.errors import check_choice  # deferred for start-up time (torch)
    from deepadversaries.corruptions.benchmark import BATCH_SIZE, robustness_dir, robustness_run
    from deepadversaries.corruptions.suite import CorruptionOptions

    check_choice(domain, ("Y10", "Y1", "both"), "domain")
    if survey is not None and domain == "both":
        from deepadversaries.errors import OptionError

        raise OptionError("--survey describes one co-add depth: run --domain Y10 or --domain Y1 with it, not both")
    for one in (("Y10", "Y1") if domain == "both" else (domain,)):
        summary = robustness_run(run, data, corruptions=corruptions, severities=severities, seed=seed,
                                 baseline=baseline, domain=one, stress=stress, defects=defects,
                                 noise_check=noise_check, device=device, overwrite=overwrite, survey=survey,
                                 batch_size=BATCH_SIZE if batch_size is None else batch_size)
        _report_summary(summary)
        typer.echo(str(robustness_dir(run, one, CorruptionOptions("stress" if stress else "rubin", defects))))


def _format(block: dict[str, Any] | None, scale: float = 1.0, digits: int = 3) -> str:
    """'v [lo, hi]' of an interval block."""
    if not block or block.get("value") is None:
        return "n/a"
    lo, hi = block.get("ci_low"), block.get("ci_high")
    text = f"{block['value'] * scale:.{digits}f}"
    return text + (f" [{lo * scale:.{digits}f}, {hi * scale:.{digits}f}]" if lo is not None and hi is not None else "")


def _report_summary(summary: dict[str, Any]) -> None:
    """Log the clean accuracy, each corruption's mean accuracy (and ΔE / CE), the mCE and the timing."""
    from deepadversaries.progress import info  # deferred for start-up time

    clean = summary["clean"]["accuracy"]
    info(f"clean accuracy {clean:.3f} on {summary['n']} {summary['domain']} test images")
    block = (summary.get("corruption_errors") or {}).get("corruptions", {})
    for name, err in summary["mean_errors"].items():
        extra = ""
        if name in block:
            entry = block[name]
            extra = f"  ΔE {_format(entry['delta_points'], digits=1)} points"
            extra += f"  CE {_format(entry['ce'])}" if entry["ce"] else "  (baseline not degraded)"
        info(f"  {name:<20} mean accuracy {1.0 - err:.3f}{extra}")
    if summary.get("corruption_errors"):
        if summary["mce"] is not None:
            info(f"mCE {_format(summary['mce'])} over {len(summary['corruption_errors']['degraded'])} degraded "
                 f"corruptions, relative mCE {_format(summary['relative_mce'])}, against {summary['baseline']['run']}")
        else:
            info("no corruption degrades the baseline significantly: no mCE")
    else:
        info(f"mean error {summary['mean_error']:.3f} (no baseline: {summary['baseline']['chosen_by']})")
    info(f"in {summary['timing']['wall_time_s']:.0f} s "
         f"(corrupting {summary['timing']['corrupt_s']:.0f} s, evaluating {summary['timing']['evaluate_s']:.0f} s)")


def _robustness_grid(
    data: Path = typer.Option(..., "--data", help="Dataset folder."),
    index: int = typer.Option(0, "--index", help="Index of the galaxy in the test split."),
    domain: str = typer.Option("Y10", "--domain", help="Depth of the images to corrupt: Y10 or Y1."),
    corruptions: str = typer.Option("all", "--corruptions", help="'all' or a comma-separated list of corruption names (rows)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the corruptions (the benchmark's --seed: the panels are the images it scores)."),
    stress: bool = typer.Option(False, "--stress", help="The stress tables instead of the Rubin-grounded ones."),
    defects: str = typer.Option("dithered", "--defects", help="Detector-defect placement: dithered, masked or no-dither."),
    out: Optional[Path] = typer.Option(None, "--out", help="PNG to write (default: DATA/figures/robustness_grid.png)."),
) -> None:
    """One test galaxy under every corruption (rows) and severity 0-5 (columns), stretched as a model sees it:
    the very realisation 'deepadv robustness' scores for that --seed."""
    # deferred for start-up time (numpy, torch, matplotlib)
    import numpy as np

    from deepadversaries.corruptions.suite import CorruptionOptions
    from deepadversaries.data.dataset import load_dataset
    from deepadversaries.errors import OptionError, check_choice
    from deepadversaries.plots.robustness import plot_corruption_grid
    from deepadversaries.corruptions.benchmark import (
        CHUNK, check_dataset, corrupted_chunk, grid_normalisation, parse_corruptions,
    )

    names = parse_corruptions(corruptions)
    options = CorruptionOptions("stress" if stress else "rubin", defects)
    dataset = load_dataset(data)
    check_choice(domain, dataset.domains, "domain")
    bands = check_dataset(dataset)
    raw = dataset.images(domain, "test", stretched=False)
    if not 0 <= index < len(raw):
        raise OptionError(f"--index {index} is outside the test split (0-{len(raw) - 1})")
    chunk, position = divmod(index, CHUNK)
    panels = {(name, severity): corrupted_chunk(raw, name, severity, chunk, seed=seed, domain=domain, bands=bands,
                                                options=options)[position]
              for name in names for severity in range(1, 6)}
    lo, hi, to_input = grid_normalisation(dataset, domain)
    label = dataset.classes[int(dataset.labels("test")[index])]
    path = plot_corruption_grid(np.asarray(raw[index]), lo, hi,
                                out if out is not None else dataset.path / "figures" / "robustness_grid.png",
                                corruptions=names, seed=seed, domain=domain, bands=bands, to_input=to_input,
                                panels=panels, options=options, title=f"test galaxy {index} ({label}), {domain}")
    typer.echo(str(path))


def _robustness_curves(
    runs: List[Path] = typer.Option(..., "--run", help="Run folder with a finished 'deepadv robustness' result; repeat for several runs."),
    out: Path = typer.Option(..., "--out", help="PNG to write."),
) -> None:
    """Accuracy versus severity per corruption, one line per run (labelled MODEL METHOD (folder))."""
    from deepadversaries.plots.robustness import plot_accuracy_curves  # deferred for start-up time (matplotlib)

    typer.echo(str(plot_accuracy_curves(_read_summaries(runs), out)))


def _read_summaries(runs: List[Path]) -> dict[str, Any]:
    """Each run's finished robustness summary, keyed by its curve label ``MODEL METHOD (folder)``."""
    # deferred for start-up time (torch)
    from deepadversaries.errors import file_error
    from deepadversaries.io import read_json
    from deepadversaries.corruptions.benchmark import KIND, SUMMARY_NAME, robustness_dir

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


def _robustness_table(
    folders: List[Path] = typer.Option(..., "--runs", help="A folder holding run folders (a study's DIR or DIR/cells, a reproduce DIR/runs); repeat for several. Every run with a finished 'deepadv robustness' result counts as one seed of its model and method."),
    out: Optional[Path] = typer.Option(None, "--out", help="Markdown file to write (default: print it)."),
) -> None:
    """The per-corruption table, regular against each adapted method, Y10 and Y1, pooled over seeds with 95 % intervals.

    Accuracy per corruption (mean over the severities) for every method, ΔE = Σ_s (E_method − E_regular) in points per adapted method (each seed against its own regular run), mean over seeds with a Student-t interval (one seed: its paired bootstrap interval), and the mCE over the corruptions that degrade regular significantly in every seed.
    """
    # deferred for start-up time (torch)
    from deepadversaries.reporting.blocks import Document, render_markdown
    from deepadversaries.errors import OptionError
    from deepadversaries.io import read_json, write_text
    from deepadversaries.reporting.report import domain_summaries, corruption_comparison_table
    from deepadversaries.corruptions.benchmark import KIND, SUMMARY_NAME, robustness_dir

    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for folder in folders:
        for config in sorted(list(Path(folder).glob("*/config.json")) + list(Path(folder).glob("*/*/config.json"))):
            summary_path = robustness_dir(config.parent) / SUMMARY_NAME
            if not summary_path.is_file():
                continue
            summary = read_json(summary_path)
            if summary.get("kind") == KIND:
                groups.setdefault((summary["model"], summary["method"]), []).append(summary)
    if not groups:
        raise OptionError("no run with a finished robustness result under " + ", ".join(str(f) for f in folders))
    doc = Document("Survey corruptions: methods compared per corruption")
    for model in sorted({m for m, _ in groups}):
        summaries = {method: v for (m, method), v in sorted(groups.items(), key=lambda kv: kv[0][1] != "regular")
                     if m == model}
        for domain in ("Y10", "Y1"):
            per_domain = domain_summaries(summaries, domain)
            table = corruption_comparison_table(model, per_domain, domain, f"{model}_{domain}") if per_domain else None
            if table is not None:
                doc.add(table)
    text = render_markdown(doc)
    if out is not None:
        write_text(out, text)
        typer.echo(str(out))
    else:
        typer.echo(text)
