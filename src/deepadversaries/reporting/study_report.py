"""The study's results: ``study.json`` (written last), ``report.md`` and ``report.html``.

Reads every cell's and analysis's files (:func:`deepadversaries.reporting.findings.collect_evidence`),
pools the seeds (:func:`deepadversaries.reporting.findings.compute_findings`) and writes:

- ``study.json``: ``{"kind": "deepadv-study", ..., "findings": [{id, model, method, primary,
  effect, ci_low, ci_high, ci_level, verdict, magnitude, paper_effect, bound, per_seed: [{seed,
  effect, ci_low, ci_high, n_images, ...}], n_seeds, how, ...}], "cells": [...],
  "distances": per (model, method) and seed, the median distances}``;
- the report: the findings table with intervals, verdicts and magnitudes, one forest plot per
  finding, accuracy per seed, per-seed distance medians (latent spaces of different trained
  models are never pooled into one sample), and what each cell ran and how long.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from deepadversaries import METHOD_SHORT, MODEL_LABELS, REFERENCE_METHOD, __version__
from deepadversaries.analysis.latent import PERTURBATIONS
from deepadversaries.reporting.blocks import (
    Code, Document, Figure, Heading, Para, Table, render_html, render_markdown,
)
from deepadversaries.reporting.findings import MIN_IMAGES, TESTS, Evidence, collect_evidence, compute_findings
from deepadversaries.formatting import fmt_fixed, fmt_seconds, fmt_sig, nan_to_none, utc_now
from deepadversaries.io import read_json, write_json, write_text
from deepadversaries.workflow.layout import Layout, read_manifest, read_timings
from deepadversaries.plots.study import forest_plot
from deepadversaries.reporting.report import (
    RULE_TEXT, findings_table, method_table, robustness_blocks, run_numbers,
)

STUDY_KIND = "deepadv-study"
STUDY_NAME = "study.json"


def aggregate_action(fresh: bool, *, root: Path) -> Path:
    """The study's last stage (see :func:`write_study`)."""
    return write_study(root)


def write_study(root: str | Path) -> Path:
    """Pool a finished study's seeds; write the report, then ``study.json`` (the marker).

    Returns:
        The path of ``study.json``.
    """
    root = Path(root)
    manifest = read_manifest(root)
    layout = Layout.of(root)
    seeds = [int(s) for s in manifest["seeds"]]
    methods = [m for m in manifest["methods"] if m != REFERENCE_METHOD]
    pairs = {(model, method): [collect_evidence(layout.run(model, REFERENCE_METHOD, seed),
                                                layout.run(model, method, seed), layout.analysis(model, method, seed),
                                                model=model, method=method, seed=seed, root=root) for seed in seeds]
             for model in manifest["models"] for method in methods}
    findings = compute_findings(pairs)
    timings = read_timings(root)
    cells = _cells(layout, manifest, timings)
    forests = {(f["model"], f["method"], f["id"]): forest_plot(
        f, layout.figures / f"forest_{f['model']}_{f['method']}_{f['id']}.png") for f in findings}
    doc = _document(manifest, findings, pairs, cells, forests, timings, root)
    write_text(layout.report_md, render_markdown(doc))
    write_text(layout.report_html, render_html(doc))
    record = {"kind": STUDY_KIND, "version": __version__, "preset": manifest["preset"], "seeds": seeds,
              "models": manifest["models"], "methods": manifest["methods"], "ci_level": 0.95, "tests": TESTS,
              "findings": findings, "cells": cells, "distances": _seed_distances(pairs),
              "written": utc_now()}
    path = root / STUDY_NAME
    write_json(path, nan_to_none(record))
    return path


def _cells(layout: Layout, manifest: dict[str, Any], timings: dict[str, Any]) -> list[dict[str, Any]]:
    """What each cell ran (training and attack settings) and how long each of its stages took."""
    stages = timings.get("stages", {})
    out = []
    for seed in manifest["seeds"]:
        for model in manifest["models"]:
            for method in manifest["methods"]:
                tag = layout.name(model, method, seed)
                run = layout.run(model, method, seed)
                metrics = read_json(run / "metrics.json")
                summary = read_json(run / "attack" / "summary.json")
                training = read_json(run / "training.json")
                out.append({
                    "cell": tag, "model": model, "method": method, "seed": int(seed),
                    "accuracy": {d: metrics[d]["accuracy"] for d in metrics},
                    "epochs": training.get("epochs"), "best_epoch": training.get("best_epoch"),
                    "attacked": summary.get("attacked"), "flipped": summary.get("flipped"),
                    "attack": {k: summary.get("settings", {}).get(k) for k in ("n_images", "pop_size", "max_iter",
                                                                              "keep")},
                    "seconds": {kind: stages.get(f"{kind}:{tag}", {}).get("wall_s")
                                for kind in ("train", "evaluate", "attack")},
                })
    return out


def _median(values: np.ndarray) -> float:
    return float(np.median(values)) if len(values) else float("nan")


def _seed_distances(pairs: dict[tuple[str, str], list[Evidence]]) -> dict[str, Any]:
    """Per (model, method) and seed: the median d_E (raw and in logit space) of the images flipped
    under both runs, and their number. Each trained model has its own latent scale: seeds are never
    concatenated into one sample."""
    out: dict[str, Any] = {}
    for (model, method), evidence in pairs.items():
        out[f"{model}_{method}"] = [
            {"seed": ev.seed, "n_flipped_both": ev.n_flipped_both,
             **{f"{scale}_{pert}": {m: _median(ev.distances[scale][pert][m]) for m in (REFERENCE_METHOD, method)}
                for scale in ("latent", "logit") for pert in PERTURBATIONS}} for ev in evidence]
    return out


def _document(manifest: dict[str, Any], findings: list[dict[str, Any]],
              pairs: dict[tuple[str, str], list[Evidence]], cells: list[dict[str, Any]],
              forests: dict[tuple[str, str, str], Path], timings: dict[str, Any], root: Path) -> Document:
    doc = Document("DeepAdversaries study report")
    seeds = manifest["seeds"]
    total = sum((r.get("wall_s") or 0.0) for r in timings.get("stages", {}).values())
    env = timings.get("environment", {})
    doc.add(Para(f"Preset **{manifest['preset']}**, seeds **{', '.join(map(str, seeds))}**, models "
                 f"{', '.join(MODEL_LABELS.get(m, m) for m in manifest['models'])} × methods "
                 f"{', '.join(METHOD_SHORT.get(m, m) for m in manifest['methods'])}; "
                 f"{'one dataset per seed' if manifest.get('vary_data') else 'one simulated dataset'}; device "
                 f"`{env.get('device', 'n/a')}`; stage wall time in total {fmt_seconds(total)} (stages run in "
                 f"parallel on Dask, so the elapsed time was shorter). deepadversaries {__version__}."))
    doc.add(Heading("Findings", 2, "findings"))
    doc.add(Para(RULE_TEXT + " Pooled over the seeds, the unit that varies: (a)–(c) and (e) by a t-interval of "
                 "the per-seed differences, (d) by a t-interval of the per-seed log ratios (seeds with fewer than "
                 f"{MIN_IMAGES} images flipped under both are listed and left out). Rules: "
                 + "; ".join(f"({k}) {v}" for k, v in TESTS.items()) + "."))
    doc.add(findings_table(findings, "table_findings"))
    doc.add(Heading("Training methods compared", 2, "methods"))
    layout = Layout.of(root)
    for model in manifest["models"]:
        numbers = {m: [run_numbers(layout.run(model, m, seed)) for seed in seeds] for m in manifest["methods"]}
        doc.add(method_table(model, numbers, findings, f"table_methods_{model}"))
    doc.add(Heading("Forest plots", 2, "forest"))
    for f in findings:
        doc.add(Figure(forests[(f["model"], f["method"], f["id"])],
                       f"Finding ({f['id']}), {MODEL_LABELS[f['model']]}, {METHOD_SHORT.get(f['method'], f['method'])}:"
                       f" each seed's effect with its 95 % interval, the pooled interval (diamond, coloured by the "
                       f"verdict: {f['verdict']}), no effect (grey) and the paper's number (dotted).", root))
    doc.add(Heading("Accuracy per seed", 2, "accuracy"))
    doc.add(_accuracy_table(cells))
    if all((layout.run(m, method, seed) / "robustness" / "summary.json").is_file()
           for m in manifest["models"] for method in manifest["methods"] for seed in seeds):
        doc.add(Heading("Survey corruptions", 2, "robustness"))
        for model in manifest["models"]:
            summaries = {m: [read_json(layout.run(model, m, seed) / "robustness" / "summary.json") for seed in seeds]
                         for m in manifest["methods"]}
            rates = {m: [read_json(layout.run(model, m, seed) / "attack" / "summary.json").get("success_rate")
                         for seed in seeds] for m in manifest["methods"]}
            doc.add(*robustness_blocks(model, summaries, rates, layout.figures / f"robustness_{model}.png", root,
                                       f"table_robustness_{model}"))
    doc.add(Heading("Latent distances per seed", 2, "distances"))
    for (model, method), evidence in pairs.items():
        doc.add(_distance_table(model, method, evidence))
    doc.add(Heading("Cells", 2, "cells"))
    doc.add(_cells_table(cells))
    doc.add(Code(json.dumps(manifest, indent=2), "study-manifest.json (the grid)"))
    return doc


def _accuracy_table(cells: list[dict[str, Any]]) -> Table:
    rows = [[MODEL_LABELS[c["model"]], METHOD_SHORT.get(c["method"], c["method"]), str(c["seed"]),
             fmt_fixed(c["accuracy"].get("Y10")), fmt_fixed(c["accuracy"].get("Y1")),
             f"{c['flipped']} / {c['attacked']}"] for c in cells]
    return Table(["Model", "Method", "Seed", "Y10 accuracy", "Y1 accuracy", "Flipped / attacked"], rows,
                 "Test accuracy and one-pixel flips of every cell.", "table_accuracy_per_seed")


def _distance_table(model: str, method: str, evidence: list[Evidence]) -> Table:
    rows = []
    for ev in evidence:
        for scale in ("latent", "logit"):
            d = ev.distances[scale]["Y10-1P"]
            rows.append([str(ev.seed), scale, str(ev.n_flipped_both), fmt_sig(_median(d[REFERENCE_METHOD])),
                         fmt_sig(_median(d[method])),
                         fmt_sig(_median(d[method]) / _median(d[REFERENCE_METHOD]) if len(d[method]) else None)])
    return Table(["Seed", "Scale", "n", "Median d_E(Y10–1P), regular", f"Median, {METHOD_SHORT.get(method, method)}",
                  "Ratio"], rows,
                 f"{MODEL_LABELS[model]}, regular vs {METHOD_SHORT.get(method, method)}: median distance of the images "
                 "flipped under both runs, seed by seed (each trained model has its own latent scale, so seeds are "
                 "not pooled into one sample; `logit` is the same distance between the logits).",
                 f"table_distances_{model}_{method}")


def _cells_table(cells: list[dict[str, Any]]) -> Table:
    rows = [[c["cell"], str(c["epochs"]), str(c["best_epoch"]),
             f"{c['attack']['n_images']} images, population {c['attack']['pop_size']}, "
             f"{c['attack']['max_iter']} generations, keep {c['attack']['keep']}",
             fmt_seconds(c["seconds"]["train"]), fmt_seconds(c["seconds"]["evaluate"]),
             fmt_seconds(c["seconds"]["attack"])] for c in cells]
    return Table(["Cell", "Epochs", "Kept epoch", "Attack", "Train", "Evaluate", "Attack time"], rows,
                 "What each cell ran and how long each stage took (wall time on its worker).", "table_cells")
