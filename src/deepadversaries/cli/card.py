"""`deepadv card`: one run's robustness card; `deepadv leaderboard`: cards side by side."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

CARD_HELP = """Make the robustness card of a model: every number with its 95 % interval and n.

Runs what the run folder lacks, with a protocol fixed per --level: evaluate (accuracy, ECE,
Brier, NLL per domain), the survey corruptions, the one-pixel attack (differential evolution)
and the corner search on the same images, and the certification when it is installed. Then
writes CARD/card.json (last; versioned schema, shipped in the package), card.html (one
self-contained page: five headline numbers, tables, figures), card.md and model_index.yaml
(a Hugging Face model-index block).

\b
  deepadv card --run runs/cnn_reg --out cards/cnn_reg
  deepadv card --run runs/cnn_mmd --baseline runs/cnn_reg --out cards/cnn_mmd
  deepadv card --run runs/adopted --data data/mine --out cards/mine     # TorchScript model, your data
  deepadv card --run runs/cnn_reg --data data/hubble --unlabelled --out cards/hubble
  deepadv card --run 'runs/cnn_reg_s{seed}' --seeds 0-2 --out cards/cnn_reg   # three seeds, pooled

--level quick: corruptions at severities 1, 3, 5; DE (quick preset) and the corner search on
150 test images; 20 images certified at 5 s each. --level full: severities 1-5; DE with the
paper's 80 generations and the corner search on 500 images (about 12 min for a quick ConvNet
on a 2-core CPU); every attacked image certified at up to 30 s each (up to hours: use a GPU).
The expected cost is printed before the card starts. --level tiny: a smoke test (CI).
--unlabelled: prediction stability (agreement with the clean prediction) instead of accuracy;
the data's labels are not read.
--seeds: the runs of several training seeds, --run naming them with '{seed}': one card per
seed in CARD/s<seed>/ (each measured with its seed's protocol seed), then their pooled row in
CARD/pooled/leaderboard.{csv,md,html}: every number the mean over seeds with a Student-t
interval over seeds, n = seeds.
"""

LEADERBOARD_HELP = """Rank robustness cards: leaderboard.csv, leaderboard.md and leaderboard.html.

One row per card, every headline number with its 95 % interval and n; the page sorts by any
column. Cards of different test data or protocols are refused (or ranked in separate groups
with --group), never mixed in one ranking.

\b
  deepadv leaderboard cards/*/ --out board
  deepadv leaderboard cards/a/card.json cards/b/card.json --sort one_pixel_flip_rate --out board
  deepadv leaderboard study1/cards/*/ study2/cards/*/ --pool-seeds --sort held_out_mce --out board
"""


def register(app: typer.Typer, plot_app: typer.Typer) -> None:
    """Add the ``card`` and ``leaderboard`` commands (no figures)."""
    app.command("card", help=CARD_HELP)(_card)
    app.command("leaderboard", help=LEADERBOARD_HELP)(_leaderboard)


def _card(
    run: Path = typer.Option(..., "--run", help="Run folder: trained by 'deepadv train', or a TorchScript model adopted with 'deepadv train --model-file'."),
    out: Path = typer.Option(..., "--out", help="Card folder to write (card.json, card.html, card.md, model_index.yaml, figures/)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset folder to measure on (simulated or imported); default: the run's own."),
    level: str = typer.Option("quick", "--level", help="quick or full: the protocol of the stages the run lacks (tiny: a smoke test, too few images for a verdict)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the corruptions and of the attacked subsample."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Training seeds of several runs, e.g. 0-2 or 0,3: --run holds '{seed}' (runs/cnn_s{seed}); one card per seed in CARD/s<seed>/ (its protocol seed = the seed), and their pooled row in CARD/pooled/ (mean over seeds, t-interval over seeds)."),
    unlabelled: bool = typer.Option(False, "--unlabelled", help="Label-free card: prediction stability instead of accuracy."),
    baseline: Optional[Path] = typer.Option(None, "--baseline", help="Regular run whose errors normalise CE and mCE (default: a regular run of the same model beside the run)."),
    device: str = typer.Option("auto", "--device", help="auto (a CUDA GPU if there is one), cpu or cuda."),
    no_run: bool = typer.Option(False, "--no-run", help="Run no stage: card only what the run folder holds."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a finished card in --out."),
) -> None:
    # deferred for start-up time (torch)
    from deepadversaries.card.build import card_run
    from deepadversaries.card.render import fmt_number, render_card
    from deepadversaries.progress import info

    if seeds is not None:
        _card_seeds(str(run), out, seeds, data=data, level=level, unlabelled=unlabelled, baseline=baseline,
                    device=device, run_missing=not no_run, overwrite=overwrite)
        return
    card = card_run(run, out, data=data, level=level, seed=seed, unlabelled=unlabelled, baseline=baseline,
                    device=device, run_missing=not no_run, overwrite=overwrite)
    paths = render_card(card, out)
    for h in card["headline"]:
        info(f"  {h['label']}: {fmt_number(h['number'])}")
    for name, why in card["absent"].items():
        info(f"  not on the card: {name}: {why}")
    typer.echo(str(paths["html"]))


def _card_seeds(run: str, out: Path, seeds: str, *, baseline: Optional[Path], **card_options: object) -> None:
    """``deepadv card --seeds``: a card per seed's run (``{seed}`` in ``--run`` and ``--baseline``), then their
    pooled leaderboard row in ``OUT/pooled/``."""
    from deepadversaries.card.build import card_run
    from deepadversaries.card.leaderboard import pooled_leaderboard
    from deepadversaries.card.render import fmt_number, render_card
    from deepadversaries.errors import OptionError
    from deepadversaries.progress import info
    from deepadversaries.workflow.study import parse_seeds

    if "{seed}" not in run:
        raise OptionError(f"--seeds needs '{{seed}}' in --run to name each seed's run (e.g. runs/cnn_s{{seed}}), "
                          f"got {run!r}")
    chosen = parse_seeds(seeds)
    folders = []
    for s in chosen:
        base = Path(str(baseline).replace("{seed}", str(s))) if baseline is not None else None
        card = card_run(run.replace("{seed}", str(s)), out / f"s{s}", seed=s, baseline=base, **card_options)
        render_card(card, out / f"s{s}")
        folders.append(out / f"s{s}")
        info(f"  seed {s}: " + "; ".join(f"{h['label']} {fmt_number(h['number'])}" for h in card["headline"]))
    result = pooled_leaderboard({out.name: folders}, out / "pooled")
    info(f"  pooled over {len(chosen)} seeds: {out / 'pooled'}")
    typer.echo(result["files"][-1])


def _leaderboard(
    cards: List[Path] = typer.Argument(..., help="card.json files or card folders."),
    out: Path = typer.Option(..., "--out", help="Folder to write leaderboard.csv, leaderboard.md and leaderboard.html."),
    group: bool = typer.Option(False, "--group", help="Rank cards of different data or protocols in separate groups instead of refusing them."),
    pool_seeds: bool = typer.Option(False, "--pool-seeds", help="One row per (architecture, method) and protocol: the cards of its training seeds pooled (mean with a Student-t interval over seeds; n counts seeds), e.g. the cards of several studies."),
    sort: Optional[str] = typer.Option(None, "--sort", help="Headline key to rank by, e.g. clean_accuracy, corruption_accuracy, one_pixel_flip_rate (default: corruption_accuracy, or corruption_stability for label-free cards)."),
) -> None:
    from deepadversaries.card.leaderboard import leaderboard  # deferred for start-up time

    result = leaderboard(cards, out, group=group, sort=sort, pool_seeds=pool_seeds)
    for g in result["groups"]:
        for r in g["rows"]:
            typer.echo(f"{r['rank']:>3}  {r['name']}")
    typer.echo(str(Path(out) / "leaderboard.html"))
