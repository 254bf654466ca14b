"""The reproduction report: ``report.md``, a self-contained ``report.html`` and ``findings.json``.

Everything in the report is read from the stages' own files (:mod:`deepadversaries.reporting.results`)
and printed as it is there: the report derives differences and ratios from those numbers
but never recomputes a metric. The findings are :mod:`deepadversaries.reporting.findings`'; the
rendering is :mod:`deepadversaries.reporting.blocks`'s.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from deepadversaries import METHOD_SHORT, MODEL_LABELS, REFERENCE_METHOD, __version__
from deepadversaries.config import AttackConfig
from deepadversaries.corruptions.error import pool_corruptions_over_seeds
from deepadversaries.data.dataset import load_dataset
from deepadversaries.reporting.blocks import (
    Bullets, Code, Document, Figure, Heading, Para, Table, render_html, render_markdown,
)
from deepadversaries.errors import DeepAdvError
from deepadversaries.reporting.findings import (
    ONE_MODEL, TESTS, Evidence, collect_evidence, compute_findings, effect_text, magnitude_text,
)
from deepadversaries.formatting import fmt_fixed, fmt_pm, fmt_seconds, fmt_sig, nan_to_none
from deepadversaries.io import write_json, write_text
from deepadversaries.workflow.layout import DROPPED_MODEL_REASON
from deepadversaries.paper import PAPER_DISTANCES, PAPER_METRICS, PAPER_SIZES
from deepadversaries.plots import dataset as dataset_plots
from deepadversaries.plots.robustness import plot_accuracy_curves
from deepadversaries.reporting.results import (
    ReportInputs, RunFiles, get_path, load_inputs, n_test_images, need_json, need_path,
)
from deepadversaries.analysis.latent import PERTURBATION_LABELS, PERTURBATIONS
from deepadversaries.analysis.stats import t_interval

METRIC_LABEL = {"accuracy": "Accuracy", "precision": "Precision", "recall": "Recall", "f1": "F1 score"}
TABLE_NUMBERS = {"resnet18": (2, 3), "convnet": (4, 5)}  # (metrics table, distances table)
#: the verdict rule in words (SPEC 10), for the reports
RULE_TEXT = ("Each of the paper's findings has one pre-stated primary endpoint, reported with its 95 % confidence "
             "interval and one word about the paper's direction: **held** when the whole interval lies on the "
             "claimed side of no effect (for (c), a non-inferiority claim, above a −3-point margin that is ours, "
             "not the paper's), **contradicted** when it lies wholly on the other side, **inconclusive** otherwise. "
             "Beside the word, the magnitude: the paper's own number (ConvNet / ResNet18) inside the interval "
             "(consistent with the paper's), further from no effect than the whole interval (smaller than the "
             "paper's) or nearer to no effect (larger than the paper's). Secondary measures are reported and never "
             "decide the word.")


# --------------------------------------------------------------------------------------
# building the document
# --------------------------------------------------------------------------------------
def _metrics_table(inp: ReportInputs, model: str) -> Table:
    number = TABLE_NUMBERS[model][0]
    header = ["Training", "Metric", "Y10 (ours)", "Y10 (paper)", "Y1 (ours)", "Y1 (paper)"]
    rows = []
    paper = PAPER_METRICS[model]
    present = (model, REFERENCE_METHOD) in inp.runs
    for method in ("regular", "mmd"):
        for k, metric in enumerate(("accuracy", "precision", "recall", "f1")):
            row = [METHOD_SHORT[method] if k == 0 else "", METRIC_LABEL[metric]]
            for dom in ("Y10", "Y1"):
                ours = fmt_fixed(inp.run(model, method).metrics[dom][metric]) if (model, method) in inp.runs else "—"
                row += [ours, f"{paper[method][dom][metric]:.2f}"]
            rows.append(row)
    if present:
        m = inp.run(model, REFERENCE_METHOD).metrics
        n = f"ours on {n_test_images(m, 'Y10')} Y10 and {n_test_images(m, 'Y1')} Y1 test images"
    else:
        n = "not trained in this run"
    return Table(header, rows, f"Table {number}. {MODEL_LABELS[model]} test metrics ({n}; weighted precision, "
                               "recall and F1). Paper numbers from its Table " f"{number}.", f"table{number}")


def _distance_table(inp: ReportInputs, model: str) -> Table:
    number = TABLE_NUMBERS[model][1]
    header = ["Perturb.", "Training", "Median (ours)", "Median (paper)", "Mean (ours)", "Mean (paper)",
              "St. Err. (ours)", "St. Err. (paper)", "n (ours)", "JS distance (ours)", "JS (paper)"]
    paper = PAPER_DISTANCES[model]
    an = inp.analyses.get((model, "mmd"))
    rows = []
    for pert in PERTURBATIONS:
        for k, tr in enumerate(("regular", "mmd")):
            p = paper[pert][tr]
            if an is not None:
                t = an["distances"]["latent"][pert]
                s = t[tr]
                ours = [fmt_sig(s["median"]), fmt_sig(s["mean"]), fmt_pm(s["stderr"]), str(s["n"]),
                        fmt_sig(t["js_distance"]) if k == 0 else ""]
            else:
                ours = ["—"] * 4 + [""]
            js_paper = (str(paper[pert]["js"]) if paper[pert]["js"] is not None else "—") if k == 0 else ""
            rows.append([PERTURBATION_LABELS[pert] if k == 0 else "", METHOD_SHORT[tr],
                         ours[0], f"{p[0]}", ours[1], f"{p[1]}", ours[2], f"±{p[2]}", ours[3], ours[4], js_paper])
    n = (f"ours on the {an['n_flipped_both']} images flipped under both runs" if an is not None
         else "not trained in this run")
    return Table(header, rows, f"Table {number}. {MODEL_LABELS[model]} latent distances d_E ({n}; paper on "
                               f"{paper['n']} images). JS distance base {an['js_base'] if an else 2}.",
                 f"table{number}")


def _sensitivity_table(inp: ReportInputs, model: str, method: str) -> Table:
    """The distances on the two scales no reparametrisation of a latent space changes."""
    an = inp.analyses[(model, method)]
    rows = []
    for scale, words in (("logit", "logit space"), ("spread", "÷ latent spread")):
        for pert in PERTURBATIONS:
            t = an["distances"][scale][pert]
            for k, tr in enumerate((REFERENCE_METHOD, method)):
                s = t[tr]
                rows.append([words if k == 0 and pert == "Y10-Y1" else "", PERTURBATION_LABELS[pert] if k == 0 else "",
                             METHOD_SHORT.get(tr, tr), fmt_sig(s["median"]), fmt_sig(s["mean"]), fmt_pm(s["stderr"]),
                             str(s["n"]), fmt_sig(t["ratio_median"]) if k == 0 else ""])
    spread = an["attack"]
    return Table(["Scale", "Perturb.", "Training", "Median", "Mean", "St. Err.", "n", "Median ratio"], rows,
                 f"{MODEL_LABELS[model]}: the distances of Table {TABLE_NUMBERS.get(model, ('', '?'))[1]} on two "
                 "scales that no shift or scale of a latent space changes: between the logits, and divided by each "
                 f"model's latent spread, median ‖z(Y10) − z̄‖ ({REFERENCE_METHOD} "
                 f"{fmt_sig(spread[REFERENCE_METHOD].get('latent_spread_Y10'))}, {method} "
                 f"{fmt_sig(spread[method].get('latent_spread_Y10'))}).", f"sensitivity_{model}_{method}")


def _attack_table(inp: ReportInputs) -> Table:
    corner = {(model, m): inp.layout.run(model, m) / "attack_exhaustive" / "summary.json"
              for model in inp.models for m in inp.methods}
    with_corner = all(p.is_file() for p in corner.values())
    rows = []
    for model in inp.models:
        for method in inp.methods:
            s = inp.run(model, method).summary
            row = [MODEL_LABELS[model], METHOD_SHORT.get(method, method), str(s.get("images_drawn", "n/a")),
                   str(s.get("correctly_classified", "n/a")), str(s.get("attacked", "n/a")),
                   str(s.get("flipped", "n/a")), fmt_fixed(s.get("success_rate"))]
            if with_corner:
                need_json(corner[(model, method)])  # the campaign finished
                row.append(fmt_fixed(_corner_rate(corner[(model, method)].parent / "results.csv")))
            row += [fmt_sig(s.get("median_p_target_flipped")), fmt_sig(s.get("mean_iterations_flipped")),
                    fmt_sig(s.get("median_iterations_flipped")), fmt_sig(s.get("mean_iterations")),
                    str(s.get("flipped_in_initial_population", "n/a"))]
            rows.append(row)
    st = inp.run(inp.models[0], REFERENCE_METHOD).summary.get("settings", {})
    paper = AttackConfig.from_preset("paper")
    header = ["Model", "Training", "Images drawn", "Correctly classified", "Attacked", "Flipped", "Flip rate (DE)"]
    header += ["Flip rate (corner search, a lower bound)"] if with_corner else []
    header += ["Median p(target) of the flips", "Mean iterations (flips)", "Median iterations (flips)",
               "Mean iterations (all, failures at the cap)", "Flipped by the initial population"]
    return Table(header, rows,
                 f"One-pixel attack: seeded random test subsample, correctly classified images attacked, "
                 f"{st.get('mode', 'targeted')}, the other two classes tried in turn, the fittest member of the "
                 f"successful generation kept ({st.get('keep', 'fittest')}); population {st.get('pop_size', 'n/a')}, "
                 f"at most {st.get('max_iter', 'n/a')} iterations (paper: {paper.n_images} images, population "
                 f"{paper.pop_size}, {paper.max_iter} iterations)."
                 + (" The corner search's rate is the share of its attacked images that some pixel set to a corner "
                    "of the value cube (or a chosen value) flips, every position tried: a lower bound on one-pixel "
                    "vulnerability, since the worst value can lie inside the cube." if with_corner else ""),
                 "table_attack")


def _corner_rate(path: Path) -> float | None:
    """The share of the corner search's images that it flipped (its ``results.csv``)."""
    with open(need_path(path), newline="", encoding="utf-8") as fh:
        flags = [r["success"] == "True" for r in csv.DictReader(fh)]
    return sum(flags) / len(flags) if flags else None


def _certify_table(inp: ReportInputs) -> Table | None:
    """The flip-rate sandwich of ``deepadv certify`` per run, when every run has ``RUN/certify/summary.json``."""
    paths = {(model, m): inp.layout.run(model, m) / "certify" / "summary.json"
             for model in inp.models for m in inp.methods}
    if not paths or not all(p.is_file() for p in paths.values()):
        return None

    def rate(r: dict | None) -> str:
        if not r or r.get("value") is None:
            return "n/a"
        return f"{fmt_fixed(r['value'])} [{fmt_fixed(r['ci_low'])}, {fmt_fixed(r['ci_high'])}]"

    rows = []
    for (model, method), path in paths.items():
        s = json.loads(path.read_text(encoding="utf-8"))
        de, corner = s.get("de") or {}, s.get("corner_search") or {}
        rows.append([MODEL_LABELS[model], METHOD_SHORT.get(method, method), str(s["n_images"]), str(s["flippable"]),
                     str(s["certified"]), str(s["undecided"]), rate(s["rate_lower"]), rate(s["rate_upper"]),
                     rate(de.get("rate")), rate(corner.get("rate")),
                     str(de.get("missed_flippable", "n/a")), str(corner.get("missed_flippable", "n/a"))])
    return Table(["Model", "Training", "Images", "Flippable", "Certified", "Undecided", "Flip rate ≥ (95% CI)",
                  "Flip rate ≤ (95% CI)", "DE's rate", "Corner search's rate", "Flippable, DE missed",
                  "Flippable, corner search missed"], rows,
                 "Provable one-pixel robustness (deepadv certify): flippable images have a witness pixel re-checked "
                 "by a plain forward pass, certified ones a proof from sound bounds that no pixel at any value in "
                 "the range flips them, undecided ones ran out of time. The one-pixel flip rate lies between "
                 "flippable / n and (flippable + undecided) / n (Clopper–Pearson 95% intervals). DE and the corner "
                 "search are compared only where they searched the same value range under the same success rule "
                 "(n/a otherwise).", "table_certify")


def _add_attack_suite(doc: Document, inp: ReportInputs) -> None:
    """Success against queries per search, and where the dangerous pixels lie (when the runs have them)."""
    certified = _certify_table(inp)
    if certified is not None:
        doc.add(certified)
    for (model, method), an in inp.analyses.items():
        table, shares = an.get("success_against_queries"), an.get("dangerous_pixels")
        label = f"{MODEL_LABELS[model]}, regular vs {METHOD_SHORT.get(method, method)}"
        if table:
            rows = [[METHOD_SHORT.get(m, m), search, fmt_fixed(v["success_rate"]), fmt_sig(v["budget"]),
                     fmt_sig(v["queries_to_de_rate"]) if v["queries_to_de_rate"] is not None else "never"]
                    for m, searches in table.items() for search, v in searches.items()]
            doc.add(Table(["Run", "Search", "Success rate", "Queries per image (budget)",
                           "Queries to reach DE's success rate"], rows,
                          f"{label}: each search's success on the same images, and the queries per image it needs to "
                          "reach differential evolution's final success rate.", f"table_queries_{model}_{method}"))
            path = inp.layout.analysis(model, method) / "fig_success_queries.png"
            if path.is_file():
                doc.add(Figure(path, f"{label}: fraction of attacked images flipped against queries per image.",
                               inp.root))
        if shares:
            regions = list(next(iter(shares.values()))["shares"])
            rows = [[METHOD_SHORT.get(m, m), str(v["n_positions"])] + [fmt_fixed(v["shares"][r]) for r in regions]
                    for m, v in shares.items()]
            rows.append(["(share of the stamp's area)", ""] +
                        [fmt_fixed(next(iter(shares.values()))["area_shares"][r]) for r in regions])
            doc.add(Table(["Run", "Flipping positions"] + regions, rows,
                          f"{label}: where the pixels that flip images lie (exhaustive search), in units of each "
                          "galaxy's Petrosian radius about its light centroid.", f"table_danger_{model}_{method}"))
            path = inp.layout.analysis(model, method) / "fig_dangerous_pixels.png"
            if path.is_file():
                doc.add(Figure(path, f"{label}: probability that a pixel flips the image, stacked in galaxy-centred "
                                     "coordinates; circles at 1, 2 and 4 Petrosian radii.", inp.root))


def _departures(inp: ReportInputs) -> list[str]:
    ds = inp.dataset
    counts = ds.get("counts") or inp.run(inp.models[0], REFERENCE_METHOD).config.counts
    if "external" in ds:
        made_here = ds.get("kind") == "deepadv-dataset"
        imported = ds.get("origin") == "import"
        origin = (f" (made by deepadv import from {ds.get('source', {}).get('format', '?')} files)" if imported
                  else " (made by deepadv simulate)")
        items = [f"Data: the existing dataset folder `{ds['external']}`"
                 + (origin if made_here else " (the published layout, e.g. the paper's Zenodo data)") + "."]
        if imported:
            names = ds.get("domain_names", {})
            items.append(f"Its classes: {', '.join(ds['classes'])}; bands {', '.join(ds['bands'])}; images "
                         f"{' x '.join(str(v) for v in ds['image_shape'])}; domains Y10 = {names.get('Y10', 'Y10')}"
                         + (f", Y1 = {names['Y1']}" if "Y1" in names else "") + "; normalisation "
                         f"{ds['normalisation']['spec']}.")
        check = need_json(inp.layout.data_check) if inp.layout.data_check.is_file() else {}
        reason = check.get("robustness")
        if reason and reason != "applies":
            items.append(f"Survey corruptions: not run on this dataset ({reason}).")
    else:
        items = ["Data: parametric GalSim galaxies through an LSST-like Y10/Y1 observing model (the paper rendered "
                 "IllustrisTNG100 galaxies). Labels from the same Gini–M20 rule."]
    items.append(f"Dataset size: {_counts_text(counts)} (paper: {PAPER_SIZES['images']}); split mode "
                 f"`{get_path(ds, 'split_mode', 'config.split_mode', default='n/a')}`.")
    if _snr_text(ds):
        items.append(_snr_text(ds))
    for model in inp.models:
        reg = inp.run(model, REFERENCE_METHOD)
        others = "; ".join(f"{METHOD_SHORT.get(m, m)}: {_training_text(inp.run(model, m))}" for m in inp.adapted_methods)
        items.append(f"{MODEL_LABELS[model]} training, regular: {_training_text(reg)}; {others} "
                     f"(paper: {PAPER_SIZES['training']})."
                     + (f" Preset note: {reg.config.train.note}." if reg.config.train.note else ""))
    s = inp.run(inp.models[0], REFERENCE_METHOD).summary
    dep = s.get("departures_from_paper") or []
    paper = AttackConfig.from_preset("paper")
    items.append("Attack: " + ("; ".join(dep) if dep else "the paper's sizes") + f" (paper: {paper.n_images} "
                 f"images, population {paper.pop_size}, {paper.max_iter} iterations).")
    items.append("Seeds: one training seed per run and one attack seed; the paper also reports one run per "
                 "configuration. Differences of a few points are within seed-to-seed variation on small test sets.")
    return items


def _counts_text(counts: Any) -> str:
    if not isinstance(counts, dict) or not counts:
        return "n/a"
    parts = []
    for split in ("train", "valid", "test"):
        v = counts.get(split)
        if isinstance(v, dict):
            v = v.get("total", v.get("images"))
        if v is not None:
            parts.append(f"{split} {v}")
    text = ", ".join(parts) + " images per domain" if parts else "n/a"
    gal = counts.get("galaxies")
    if isinstance(gal, dict):
        text += f" from {sum(gal.values())} galaxies (" + ", ".join(f"{k} {v}" for k, v in gal.items()) + \
            "; mergers augmented)"
    return text


def _snr_text(ds: dict[str, Any]) -> str | None:
    snr = ds.get("peak_snr")
    try:
        y10, y1 = snr["Y10"]["r"]["median"], snr["Y1"]["r"]["median"]
    except (KeyError, TypeError):
        return None
    return (f"Signal-to-noise: median r-band peak S/N per pixel {fmt_sig(y10)} at Y10 and {fmt_sig(y1)} at Y1 "
            f"(5-95 %: {fmt_sig(snr['Y10']['r'].get('p5'))}-{fmt_sig(snr['Y10']['r'].get('p95'))} at Y10).")


def _training_text(run: RunFiles) -> str:
    """Optimiser, schedule and length of a training run, from its config.json and training.json."""
    cfg, tr = run.config.train, run.training
    parts = [f"Adam lr {cfg.lr} (betas {tuple(cfg.betas)})", f"{cfg.schedule} schedule", f"batch {cfg.batch_size}",
             f"weight decay {cfg.weight_decay}"]
    if cfg.method == "mmd":
        parts.append(f"λ {cfg.method_settings['weight']} ({cfg.method_settings['estimator']} MMD²)")
    if cfg.precision != "32-true":
        parts.append(f"{cfg.precision} precision (paper: float32)")
    epochs = f"up to {cfg.epochs} epochs"
    if "epochs" in tr:
        epochs += f", ran {tr['epochs']}, kept epoch {tr.get('best_epoch', 'n/a')}"
    parts.append(epochs)
    return ", ".join(parts)


def _figure_blocks(inp: ReportInputs, figures: dict[str, Path | str]) -> list[Any]:
    layout, root = inp.layout, inp.root
    blocks: list[Any] = [Heading("Figures", 2, "figures")]
    for key, caption in (("fig1", "Figure 1. Gini–M20 plane of the simulated galaxies (noiseless, PSF-convolved r "
                                  "band) with the merger and elliptical/spiral boundaries."),
                         ("fig2", "Figure 2. Example Y10 and Y1 images of each class (r band, model input).")):
        item = figures.get(key)
        if isinstance(item, Path):
            blocks.append(Figure(item, caption, root))
        elif item:
            blocks.append(Para(f"{caption.split('.')[0]} is not available: {item}"))
    for model in inp.models:
        label = MODEL_LABELS[model]
        blocks.append(Heading(f"{label}", 3))
        for method in inp.adapted_methods:
            blocks += _analysis_figures(inp, model, method)
        for method in inp.methods:
            for dom in ("Y10", "Y1"):
                p = layout.run(model, method) / f"confusion_{dom}.png"
                if p.is_file():
                    blocks.append(Figure(p, f"Confusion matrix, {label} {METHOD_SHORT.get(method, method)}, "
                                            f"{dom} test set.", root))
    return blocks


def _analysis_figures(inp: ReportInputs, model: str, method: str) -> list[Any]:
    """Figures 3–6 of one regular-vs-method analysis (or a line naming each missing one)."""
    a, root = inp.layout.analysis(model, method), inp.root
    label, m = MODEL_LABELS[model], METHOD_SHORT.get(method, method)
    blocks: list[Any] = []
    for name, cap in (
        ("fig3_church_isomap.png", f"Figure 3 ({label}). Church window (left) and 2-D isomap (right) of one "
                                   f"example triplet: regular training on top, {m} below. × Y10, ▲ 1P, ★ Y1."),
        ("fig4_isomap3d.png", f"Figure 4 ({label}). 3-D isomaps of Y10 (orange surface) and Y1 (blue surface) "
                              f"test latents from four view angles; regular on top, {m} below."),
        (f"isomap3d_{REFERENCE_METHOD}.gif", f"Figure 4, animated ({label}, regular training)."),
        (f"isomap3d_{method}.gif", f"Figure 4, animated ({label}, {m})."),
        ("fig5_church_windows.png", f"Figure 5 ({label}). Church windows of several attacked images; "
                                    f"regular on top, {m} below; titles 'true → target'."),
        ("fig6_distances.png", f"Figure 6 ({label}). Distributions of d_E(Y10–Y1) and d_E(Y10–1P), regular vs "
                               f"{m}, with mean and median lines and the JS distance."),
    ):
        path = a / name
        if path.is_file():
            blocks.append(Figure(path, cap, root))
        else:
            blocks.append(Para(f"Missing figure: `{path.relative_to(root).as_posix()}`."))
    return blocks


def _timings_table(inp: ReportInputs) -> Table:
    rows = []
    total = 0.0
    for name, rec in inp.timings.get("stages", {}).items():
        wall = rec.get("wall_s")
        total += wall or 0.0
        rows.append([name, rec.get("status", "n/a"), fmt_seconds(wall), str(rec.get("device", "n/a")),
                     str(rec.get("finished", "n/a"))])
    rows.append(["total", "", fmt_seconds(total), "", ""])
    return Table(["Stage", "Status (last invocation)", "Wall time", "Device", "Finished"], rows,
                 "Wall time of each stage, from timings.json (the run that produced its outputs).", "table_timings")


def build_document(inp: ReportInputs, findings: list[dict[str, Any]], figures: dict[str, Path | str]) -> Document:
    """The whole report as blocks (rendered to Markdown and HTML alike)."""
    doc = Document("DeepAdversaries reproduction report")
    _add_overview(doc, inp)
    doc.add(Heading("Findings", 2, "findings"))
    doc.add(Para(RULE_TEXT + f" One run is {ONE_MODEL}: its intervals are bootstraps over the test images of one "
                 "trained model, which leave out the seed-to-seed variation a new training meets. Rules: "
                 + "; ".join(f"({k}) {v}" for k, v in TESTS.items()) + "."))
    doc.add(findings_table(findings, "table_findings"))
    if len(inp.methods) > 2:
        doc.add(Heading("Training methods compared", 2, "methods"))
        for model in inp.models:
            doc.add(method_table(model, {m: [run_numbers(inp.layout.run(model, m))] for m in inp.methods}, findings,
                                 f"table_methods_{model}"))
    doc.add(Heading("Where this run departs from the paper", 2, "departures"))
    doc.add(Bullets(_departures(inp)))
    doc.add(Heading("Classification metrics (Tables 2 and 4)", 2, "metrics"))
    doc.add(_metrics_table(inp, "resnet18"), _metrics_table(inp, "convnet"))
    doc.add(Heading("Latent-space distances (Tables 3 and 5)", 2, "distances"))
    doc.add(_distance_table(inp, "resnet18"), _distance_table(inp, "convnet"))
    for (model, method), an in inp.analyses.items():
        doc.add(_sensitivity_table(inp, model, method))
        for note in an.get("notes", []):
            doc.add(Para(f"Note ({MODEL_LABELS[model]}, regular vs {method} analysis): {note}"))
    doc.add(Heading("One-pixel attack", 2, "attack"))
    doc.add(_attack_table(inp))
    _add_attack_suite(doc, inp)
    _add_robustness(doc, inp)
    doc.add(*_figure_blocks(inp, figures))
    _add_run_record(doc, inp)
    return doc


def evidence_of(inp: ReportInputs) -> dict[tuple[str, str], list[Evidence]]:
    """The per-image evidence of every (model, adapted method) of a reproduction (one seed)."""
    seed = int(inp.manifest["seed"])
    return {(model, method): [collect_evidence(inp.layout.run(model, REFERENCE_METHOD), inp.layout.run(model, method),
                                               inp.layout.analysis(model, method), model=model, method=method,
                                               seed=seed, root=inp.root)]
            for model in inp.models for method in inp.adapted_methods}


def findings_table(findings: list[dict[str, Any]], name: str) -> Table:
    """One row per finding: effect with its 95 % CI, verdict, what it rests on, and the statement."""
    rows = []
    for f in findings:
        fid = f["id"]
        ci = (f"{effect_text(fid, f['effect'])} [{effect_text(fid, f['ci_low'], sign=False)}, "
              f"{effect_text(fid, f['ci_high'], sign=False)}]")
        n = f.get("n_images") or sum(p.get("n_images", 0) for p in f["per_seed"])
        rests = f"{f['n_seeds']} seed{'s' if f['n_seeds'] != 1 else ''}, {n} images"
        rows.append([f"({fid})", f"{MODEL_LABELS.get(f['model'], f['model'])}, "
                                 f"{METHOD_SHORT.get(f['method'], f['method'])}",
                     f["claim"], f["primary"], ci, f.get("label", f["verdict"]),
                     magnitude_text(fid, f["model"], f["method"], f.get("magnitude")), rests, f["statement"]])
    return Table(["Finding", "Model, method", "Claim", "Primary endpoint", "Effect [95 % CI]", "Verdict",
                  "Magnitude", "Rests on", "Our numbers"], rows, None, name)


def run_numbers(run: Path) -> dict[str, float | None]:
    """A run's accuracy on Y10 and Y1, Y1 expected calibration error and one-pixel flip rate."""
    metrics = need_json(run / "metrics.json")
    summary = need_json(run / "attack" / "summary.json")
    return {"Y10 accuracy": metrics["Y10"]["accuracy"], "Y1 accuracy": metrics.get("Y1", {}).get("accuracy"),
            "Y1 ECE": metrics.get("Y1", {}).get("ece"), "flip rate": summary.get("success_rate")}


def method_table(model: str, numbers: dict[str, list[dict[str, float | None]]],
                 findings: list[dict[str, Any]], name: str) -> Table:
    """Every method of one model side by side: accuracies, Y1 ECE, flip rate (a mean ± 95 % t-interval
    over seeds when there are several, cut to [0, 1], the range of all four) and the finding-(d)
    ratio with its interval.

    Args:
        model: the model.
        numbers: method → one :func:`run_numbers` dict per seed.
        findings: the findings (the (d) entries give the d_E ratios).
        name: the HTML table's id.
    """
    ratio = {f["method"]: f for f in findings if f["id"] == "d" and f["model"] == model}
    rows = []
    for method, per_seed in numbers.items():
        row = [METHOD_SHORT.get(method, method)]
        for key in ("Y10 accuracy", "Y1 accuracy", "Y1 ECE", "flip rate"):
            values = [v[key] for v in per_seed if v[key] is not None]
            if len(values) > 1:
                iv = t_interval(values)
                # all four are shares in [0, 1]; a t-interval over few seeds can overshoot the range
                low, high = max(iv.low, 0.0), min(iv.high, 1.0)
                row.append(f"{fmt_fixed(iv.estimate)} [{fmt_fixed(low)}, {fmt_fixed(high)}]")
            else:
                row.append(fmt_fixed(values[0]) if values else "n/a")
        d = ratio.get(method)
        row.append("—" if d is None else f"{fmt_sig(d['effect'])} [{fmt_sig(d['ci_low'])}, {fmt_sig(d['ci_high'])}]"
                   f" ({d.get('label', d['verdict'])})")
        rows.append(row)
    n = max(len(v) for v in numbers.values())
    how = f"mean over {n} seeds [95 % t-interval, cut to the range 0–1]" if n > 1 else "one seed"
    return Table(["Method", "Y10 accuracy", "Y1 accuracy", "Y1 ECE (15 bins)", "One-pixel flip rate",
                  "d_E(Y10–1P) ratio vs regular [95 % CI]"], rows,
                 f"{MODEL_LABELS[model]}: every training method on the same data and attack ({how}). The d_E ratio "
                 "is finding (d)'s: adapted over regular median raw distance of the images flipped under both.", name)


def _interval_text(block: Any, scale: float = 1.0, digits: int = 3) -> str:
    """'v [lo, hi]' of a {value, ci_low, ci_high, n} block; a bare number as itself; n/a for None."""
    if isinstance(block, dict):
        if block.get("value") is None:
            return "n/a"
        text = fmt_fixed(block["value"] * scale, digits)
        if block.get("ci_low") is not None and block.get("ci_high") is not None:
            text += f" [{fmt_fixed(block['ci_low'] * scale, digits)}, {fmt_fixed(block['ci_high'] * scale, digits)}]"
        return text
    return "n/a" if block is None else fmt_fixed(float(block), digits)


def domain_summaries(summaries: dict[str, list[dict[str, Any]]], domain: str) -> dict[str, list[dict[str, Any]]] | None:
    """Each method's per-seed summaries of ``domain`` (Y1: read from ``RUN/robustness_Y1`` beside the Y10
    result); None when a seed lacks one."""
    if domain == "Y10":
        return summaries
    out: dict[str, list[dict[str, Any]]] = {}
    for method, per_seed in summaries.items():
        out[method] = []
        for s in per_seed:
            path = Path(s["run"]) / f"robustness_{domain}" / "summary.json" if s.get("run") else None
            if path is None or not path.is_file():
                return None
            out[method].append(json.loads(path.read_text()))
    return out


def corruption_comparison_table(model: str, summaries: dict[str, list[dict[str, Any]]], domain: str,
                                name: str) -> Table | None:
    """Per corruption: each method's mean accuracy over the severities and each adapted method's ΔE against
    regular in points, pooled over seeds with 95 % intervals (:func:`pool_corruptions_over_seeds`); the
    last row the mCE over the corruptions that degrade regular in every seed. None without ΔE results."""
    pooled = {m: pool_corruptions_over_seeds(v) for m, v in summaries.items()}
    adapted = [m for m in summaries if m != REFERENCE_METHOD and pooled[m]["mce_corruptions"] is not None
               and any("delta_points" in e for e in pooled[m]["corruptions"].values())]
    if not adapted:
        return None
    names = list(next(iter(pooled.values()))["corruptions"])
    header = ["Corruption"] + [f"{METHOD_SHORT.get(m, m)} accuracy" for m in summaries] + \
             [f"ΔE {METHOD_SHORT.get(m, m)} − regular (points; seeds degraded)" for m in adapted]
    rows = [["clean"] + [_interval_text(pooled[m]["clean_accuracy"]) for m in summaries] + ["" for _ in adapted]]
    for c in names:
        row = [c.replace("_", " ")] + [_interval_text(pooled[m]["corruptions"][c]["accuracy"]) for m in summaries]
        for m in adapted:
            e = pooled[m]["corruptions"][c]
            row.append(f"{_interval_text(e.get('delta_points'), digits=1)} ({e.get('seeds_degraded', 0)}/"
                       f"{pooled[m]['n_seeds']})")
        rows.append(row)
    rows.append(["mCE vs regular (degraded in every seed)"] + ["" for _ in summaries]
                + [_interval_text(pooled[m]["mce"]) for m in adapted])
    n = pooled[adapted[0]]["n_seeds"]
    return Table(header, rows, f"{MODEL_LABELS[model]}, {domain} test set: accuracy (mean over severities) and ΔE = "
                               "Σ_s (E_method − E_regular) in points, mean over "
                               f"{n} seed{'s' if n != 1 else ''} with a 95 % {'t' if n > 1 else 'paired bootstrap'} "
                               "interval; (k/n) = seeds whose regular run is significantly degraded by the "
                               "corruption (one-sided sign test, p < 0.05). CE and mCE only over corruptions "
                               "degraded in every seed; a corruption that does not degrade regular has no CE.", name)


def robustness_blocks(model: str, summaries: dict[str, list[dict[str, Any]]], flip_rates: dict[str, list[float]],
                      figure: Path, root: Path, name: str) -> list[Any]:
    """The survey-corruption benchmark of one model's methods: a table, the per-corruption comparison with
    intervals (both domains when Y1 results exist), the curves, and whether the one-pixel flip rate ranks
    the methods as the natural corruptions do.

    Args:
        model: the model.
        summaries: method → each seed's ``robustness/summary.json`` (Y10).
        flip_rates: method → each seed's one-pixel flip rate.
        figure: where to draw the accuracy-versus-severity curves (first seed).
        root: the report's folder (figures are embedded relative to it).
        name: the HTML table's id.
    """
    rows, mean_error, rate = [], {}, {}
    n_seeds = min(len(v) for v in summaries.values())
    for method, per_seed in summaries.items():
        mean_error[method] = float(np.mean([s["mean_error"] for s in per_seed if s.get("mean_error") is not None]))
        rate[method] = float(np.mean([r for r in flip_rates[method] if r is not None]))
        clean = float(np.mean([s["clean"]["accuracy"] for s in per_seed]))
        if method == REFERENCE_METHOD:
            mce = "reference"
        elif all(isinstance(s.get("corruption_errors"), dict) for s in per_seed):
            mce = _interval_text(pool_corruptions_over_seeds(per_seed)["mce"])
        else:
            values = [s["mce"] for s in per_seed if isinstance(s.get("mce"), (int, float))]
            mce = fmt_fixed(float(np.mean(values))) if values else "n/a"
        rows.append([METHOD_SHORT.get(method, method), fmt_fixed(clean), fmt_fixed(1 - mean_error[method]), mce,
                     fmt_fixed(rate[method])])
    blocks: list[Any] = [Table(["Method", "Clean Y10 accuracy", "Mean accuracy under the corruptions",
                                "mCE vs regular [95 % CI]", "One-pixel flip rate"], rows,
                               f"{MODEL_LABELS[model]}: the corruption benchmark (every corruption of "
                               "docs/robustness.md at the pipeline's severities, Rubin-grounded tables, Y10 test "
                               "set; mCE: summed errors over severities relative to the regular run, averaged over "
                               "the corruptions that significantly degrade the regular run; below 1 = more robust "
                               f"than regular; {n_seeds} seed{'s' if n_seeds != 1 else ''}).", name)]
    for domain in ("Y10", "Y1"):
        per_domain = domain_summaries(summaries, domain)
        table = corruption_comparison_table(model, per_domain, domain, f"{name}_{domain}") if per_domain else None
        if table is not None:
            blocks.append(table)
    plot_accuracy_curves({METHOD_SHORT.get(m, m): v[0] for m, v in summaries.items()}, figure,
                         title=f"{MODEL_LABELS[model]}: accuracy under survey corruptions")
    blocks.append(Figure(figure, f"{MODEL_LABELS[model]}: accuracy against severity per corruption and method "
                                 "(first seed).", root))
    if len(summaries) > 1:
        by_error = sorted(summaries, key=lambda m: mean_error[m])
        by_rate = sorted(summaries, key=lambda m: rate[m])
        same = by_error == by_rate
        blocks.append(Para(
            f"Does the one-pixel attack rank the methods as the natural corruptions do ({n_seeds} "
            f"seed{'s' if n_seeds != 1 else ''}, point estimates; the intervals are in the tables above)? From most "
            f"to least robust, by mean corruption error: {', '.join(METHOD_SHORT.get(m, m) for m in by_error)}; "
            f"by one-pixel flip rate: {', '.join(METHOD_SHORT.get(m, m) for m in by_rate)} — "
            + ("the same order." if same else "**a different order**: the one-pixel flip rate is not a proxy for "
                                               "these survey defects here.")))
    return blocks


def _add_overview(doc: Document, inp: ReportInputs) -> None:
    m = inp.manifest
    env = inp.timings.get("environment", {})
    grid = ", ".join(MODEL_LABELS.get(x, x) for x in inp.models)
    methods = ", ".join(METHOD_SHORT.get(x, x) for x in inp.methods)
    total = sum((r.get("wall_s") or 0.0) for r in inp.timings.get("stages", {}).values())
    doc.add(Para(f"Preset **{m['preset']}**, seed **{m['seed']}**, models: {grid} × {{{methods}}}; device "
                 f"`{env.get('device', 'n/a')}` ({env.get('device_name', '')}); stage wall time in total "
                 f"{fmt_seconds(total)}. deepadversaries {m.get('version', __version__)}; paper: Ćiprijanović et al. "
                 "2022, *DeepAdversaries: examining the robustness of deep learning models for galaxy morphology "
                 "classification*."))
    if "resnet18" not in inp.models:
        doc.add(Para(DROPPED_MODEL_REASON.get(m["preset"], "ResNet18 was not part of this run's grid.")
                     + " Tables 2 and 3 show the paper's numbers only."))


def _add_robustness(doc: Document, inp: ReportInputs) -> None:
    """The corruption benchmark's section, when the runs have one."""
    have = {m: inp.layout.run(model, m) / "robustness" / "summary.json" for model in inp.models for m in inp.methods}
    if not all(p.is_file() for p in have.values()):
        return
    doc.add(Heading("Survey corruptions", 2, "robustness"))
    for model in inp.models:
        summaries = {m: [need_json(inp.layout.run(model, m) / "robustness" / "summary.json")] for m in inp.methods}
        rates = {m: [inp.run(model, m).summary.get("success_rate")] for m in inp.methods}
        doc.add(*robustness_blocks(model, summaries, rates, inp.layout.figures / f"robustness_{model}.png", inp.root,
                                   f"table_robustness_{model}"))


def _add_run_record(doc: Document, inp: ReportInputs) -> None:
    env = inp.timings.get("environment", {})
    doc.add(Heading("Run record", 2, "record"))
    doc.add(_timings_table(inp))
    versions = env.get("versions", {})
    doc.add(Table(["Package", "Version"], [[k, str(v)] for k, v in versions.items()],
                  f"Package versions; device {env.get('device', 'n/a')} ({env.get('device_name', '')}), "
                  f"{env.get('cpu_count', 'n/a')} CPUs, {env.get('platform', '')}.", "table_versions"))
    seeds = [[f"{MODEL_LABELS[k[0]]} {METHOD_SHORT.get(k[1], k[1])}", str(r.config.seed), str(r.attack_seed)]
             for k, r in inp.runs.items()]
    doc.add(Table(["Run", "Training seed", "Attack seed"], seeds, f"Seeds (dataset seed "
                  f"{get_path(inp.dataset, 'seed', 'config.seed', default='n/a')}).", "table_seeds"))
    doc.add(Code(json.dumps(inp.manifest, indent=2), "reproduce.json (the grid)"))
    doc.add(Code(json.dumps(get_path(inp.dataset, "config", default=inp.dataset), indent=2, default=str),
                 "Dataset config (dataset.json)"))
    for (model, method), r in inp.runs.items():
        doc.add(Code(json.dumps(r.config.to_json(), indent=2, default=str),
                     f"Run config: {model}_{method} (config.json)"))
        doc.add(Code(json.dumps(r.summary.get("settings", {}), indent=2, default=str),
                     f"Attack settings: {model}_{method}"))


def _dataset_figures(inp: ReportInputs) -> dict[str, Path | str]:
    """Figures 1 and 2 of the dataset, made into OUT/figures; a reason instead when impossible.

    (Figure 1 needs the G–M20 catalogue, which only folders made by ``deepadv simulate`` have.)
    """
    ds = load_dataset(inp.layout.data())
    out: dict[str, Path | str] = {}
    for key, name, plot in (("fig1", "fig1_gini_m20.png", dataset_plots.plot_gm20),
                            ("fig2", "fig2_examples.png", dataset_plots.plot_examples)):
        try:
            out[key] = plot(ds, inp.layout.figures / name)
        except DeepAdvError as exc:
            out[key] = str(exc)
    return out


def write_report(out_dir: str | Path, *, make_dataset_figures: bool = True) -> Path:
    """Write findings.json, report.md and (last) report.html into a reproduction folder.

    Args:
        out_dir: a reproduction folder whose stages are finished.
        make_dataset_figures: draw Figures 1–2 into ``OUT/figures`` [default: True].

    Returns:
        The path of report.html. Every number comes from the stages' JSON files.
    """
    inp = load_inputs(out_dir)
    figures = _dataset_figures(inp) if make_dataset_figures else {}
    findings = compute_findings(evidence_of(inp))
    doc = build_document(inp, findings, figures)
    write_json(inp.layout.findings, nan_to_none({
        "kind": "deepadv-findings", "version": __version__, "preset": inp.manifest["preset"],
        "seed": inp.manifest["seed"], "models": list(inp.models), "methods": list(inp.methods),
        "ci_level": 0.95, "tests": TESTS, "findings": findings,
    }))
    write_text(inp.layout.report_md, render_markdown(doc))
    write_text(inp.layout.report_html, render_html(doc))
    return inp.layout.report_html
