"""The ``analyze`` stage: compare a regular and a domain-adapted run of one model (SPEC 8).

Reads both runs' attack results (``RUN/attack/{results.csv, latents.npz, summary.json}``),
computes the paper's Tables 3/5 and Figures 3–6 with :mod:`deepadversaries.analysis.latent` and
:mod:`deepadversaries.plots.latent`, and writes into the output folder:
``distances.csv``, ``distances.md``, ``distances_per_image.csv`` (images flipped under both:
d_E raw, in logit space, and divided by the latent spread), ``attacked_per_image.csv`` (images
attacked under both: flipped or not, and the latent distance from z(Y10) to its true class's
decision boundary), ``fig3_church_isomap.png``,
``fig4_isomap3d.png``, ``fig5_church_windows.png``, ``fig6_distances.png``,
``isomap3d_<method>.gif`` for each run and, last (the finished marker), ``analysis.json``.

Everything is keyed by method name (``regular`` and the adapted method, e.g. ``mmd``).
Class names come from the runs (the dataset's classes). The analysis needs a dataset with
two domains (the latent shift Y10 → Y1 is half of it). With a model without ``head(z)``
(an adopted TorchScript model whose latent is taken from ``--latent-layer``), the church
windows and the example panels are skipped and ``analysis.json``'s ``skipped`` says why;
the distances, isomaps and attack-suite comparison run as for any model.
The analysis is deterministic for a given seed (isomap sample and example choice) and has
nothing to resume: a re-run starts clean.
"""

from __future__ import annotations

import csv
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from deepadversaries import CLASSES, METHOD_LABELS, METHOD_SHORT, REFERENCE_METHOD
from deepadversaries.analysis.latent import (
    CHURCH_EXTENT, CHURCH_STEP, ISOMAP_NEIGHBORS, JS_BASE, PERTURBATION_LABELS, PERTURBATIONS, SCALES, ChurchWindow,
    IsomapEmbedding, PairedDistances, Triplets, attacked_under_both, boundary_distances, church_window_grid,
    dangerous_pixel_shares, light_centroid, queries_to_reach, stacked_flip_map, distance_tables,
    euclidean_distances, grid_coordinates, isomap_embedding, isomap_sample_indices, paired_distances,
)
from deepadversaries.attacks.searches import search_names
from deepadversaries.data.dataset import load_dataset
from deepadversaries.devices import resolve_device
from deepadversaries.errors import OptionError, check_preset, file_error
from deepadversaries.formatting import fmt_pm, fmt_sig
from deepadversaries.evaluation.inference import classify_latents, forward_batches
from deepadversaries.io import OutputLock, read_json, write_csv, write_json, write_text
from deepadversaries.models.networks import load_model
from deepadversaries.plots import latent as latent_plots
from deepadversaries.plots.attacks import save_dangerous_pixels, save_success_curves
from deepadversaries.progress import info, make_progress
from deepadversaries.models.runs import RunConfig, attack_dir, read_run_config
from deepadversaries.models.scripted import NO_HEAD_NOTE
from deepadversaries.analysis.stats import success_curve
from deepadversaries.simulation.survey import BANDS, PIXEL_SCALE

ANALYSIS_DONE = "analysis.json"
#: sizes that depend on the preset: only the rotating GIFs change (frames, resolution)
ANALYZE_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"gif_frames": 6, "gif_dpi": 40, "gif_fps": 6},
    "quick": {"gif_frames": 24, "gif_dpi": 80, "gif_fps": 8},
    "paper": {"gif_frames": 90, "gif_dpi": 100, "gif_fps": 15},
}
LATENT_KEYS = ("test_index", "z_y10", "z_y1", "z_1p", "success")
RESULT_COLUMNS = ("test_index", "true", "target", "success")
#: images per forward pass for the isomap sample
EMBED_BATCH = 64
#: the band whose light centres a galaxy, and the half-width (Petrosian radii) of the stacked flip maps
R_BAND = BANDS.index("r")
DANGER_EXTENT = 6.0


# --------------------------------------------------------------------------------------
# attack results of a run
# --------------------------------------------------------------------------------------
def _class_index(value: Any, source: Path, classes: Sequence[str] = CLASSES) -> int | None:
    text = str(value).strip()
    if text in ("", "-1", "None", "nan", "NaN"):
        return None
    if text in classes:
        return list(classes).index(text)
    try:
        k = int(float(text))
    except ValueError:
        raise file_error(source, f"unknown class {text!r}; expected one of {', '.join(classes)} or "
                                 f"0-{len(classes) - 1}") from None
    if not 0 <= k < len(classes):
        raise file_error(source, f"class index {k} out of range 0-{len(classes) - 1}")
    return k


@dataclass
class AttackData(Triplets):
    """A run's attack results: the latent triplets (rows in results.csv order) and per-image metadata.

    Attributes (beyond :class:`~deepadversaries.analysis.latent.Triplets`):
        run: the run folder.
        config: the run's config.
        true, target: per row, the true class and the attacked target (None untargeted).
        galaxy_id, iterations: per row, as results.csv has them.
        summary: the attack's summary.json.
    """

    run: Path = Path()
    config: RunConfig | None = None
    true: list[int] = field(default_factory=list)
    target: list[int | None] = field(default_factory=list)
    galaxy_id: list[str] = field(default_factory=list)
    iterations: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def method(self) -> str:
        """The run's recipe (method[+augmentation]): the key of its results in the analysis."""
        return self.config.recipe

    @property
    def classes(self) -> tuple[str, ...]:
        """The run's class names in label order."""
        return self.config.classes


def load_attack(run: str | Path) -> AttackData:
    """Read RUN/attack/{results.csv, latents.npz, summary.json}; clear errors when missing or inconsistent."""
    run = Path(run)
    config = read_run_config(run)
    folder = attack_dir(run)
    summary_path = folder / "summary.json"
    if not summary_path.is_file():
        raise file_error(summary_path, f"no finished attack for this run; run 'deepadv attack {run}' first")
    summary = read_json(summary_path)
    latents_path = folder / "latents.npz"
    results_path = folder / "results.csv"
    for p in (latents_path, results_path):
        if not p.is_file():
            raise file_error(p, "file not found (the attack folder is incomplete)")
    try:
        with np.load(latents_path, allow_pickle=False) as npz:
            missing = [k for k in LATENT_KEYS if k not in npz.files]
            if missing:
                raise file_error(latents_path, f"missing arrays {', '.join(missing)}")
            arrays = {k: np.asarray(npz[k]) for k in LATENT_KEYS}
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise file_error(latents_path, f"not a readable .npz file ({type(exc).__name__}: {exc})") from exc
    if arrays["test_index"].ndim != 1:
        raise file_error(latents_path, f"test_index has shape {arrays['test_index'].shape}; expected (n,)")
    n = len(arrays["test_index"])
    for k in ("z_y10", "z_y1", "z_1p"):
        if arrays[k].ndim != 2 or len(arrays[k]) != n or arrays[k].shape != arrays["z_y10"].shape:
            raise file_error(latents_path, f"{k} has shape {arrays[k].shape}; expected ({n}, d) like z_y10")
        if not np.isfinite(arrays[k]).all():
            raise file_error(latents_path, f"{k} has NaN or infinite values")
    if arrays["success"].shape != (n,):
        raise file_error(latents_path, f"success has shape {arrays['success'].shape}; expected ({n},)")
    try:
        with open(results_path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in RESULT_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise file_error(results_path, f"missing columns {', '.join(missing)}")
            rows = list(reader)
        if len(rows) != n:
            raise file_error(results_path, f"{len(rows)} rows but latents.npz has {n}")
        csv_index = np.array([int(float(r["test_index"])) for r in rows], dtype=np.int64)
    except (UnicodeDecodeError, csv.Error, ValueError, TypeError, OverflowError) as exc:
        raise file_error(results_path, f"not a readable results table ({type(exc).__name__}: {exc})") from exc
    test_index = arrays["test_index"].astype(np.int64)
    if not np.array_equal(csv_index, test_index):
        raise file_error(latents_path, "test_index differs from the order of results.csv")
    classes = config.classes
    true = [_class_index(r["true"], results_path, classes) for r in rows]
    if any(t is None for t in true):
        raise file_error(results_path, "a row has no true class")
    return AttackData(
        run=run, config=config, test_index=test_index,
        z_y10=arrays["z_y10"].astype(np.float32), z_y1=arrays["z_y1"].astype(np.float32),
        z_1p=arrays["z_1p"].astype(np.float32), success=arrays["success"].astype(bool),
        true=[int(t) for t in true], target=[_class_index(r["target"], results_path, classes) for r in rows],
        galaxy_id=[r.get("galaxy_id", "") for r in rows], iterations=[r.get("iterations", "") for r in rows],
        summary=summary if isinstance(summary, dict) else {},
    )


def check_comparable(reference: RunConfig, adapted: RunConfig, reference_path: Path, adapted_path: Path) -> None:
    """Refuse two runs of different models, different datasets, or the same method (two adopted
    TorchScript models may be different files: the user's own regular and adapted models)."""
    if reference.model != adapted.model and not (reference.adopted and adapted.adopted):
        raise OptionError(
            f"{adapted_path}: model {adapted.model!r} differs from the regular run's {reference.model!r} "
            f"({reference_path}); compare two runs of the same model")
    if Path(reference.data).expanduser().resolve() != Path(adapted.data).expanduser().resolve():
        raise OptionError(
            f"{adapted_path}: dataset {adapted.data} differs from the regular run's {reference.data} "
            f"({reference_path}); compare two runs on the same dataset")
    if (reference.method, reference.train.augment) == (adapted.method, adapted.train.augment):
        raise OptionError(f"{adapted_path}: both runs were trained with method {adapted.method!r} and augmentation "
                          f"{adapted.train.augment!r}; compare a regular run with a domain-adapted (or otherwise "
                          "defended) one")




def distances_markdown(tables: dict[str, Any], header: dict[str, Any], notes: Sequence[str]) -> str:
    """Tables 3/5 layout as Markdown, with n, the JS distance and its base."""
    ref, ada = header["methods"]
    lines = ["# Latent-space distances d_E (Tables 3/5 layout)", ""]
    lines.append(f"Model: {header['model']} · dataset: `{header['data']}` · "
                 f"{ref} run: `{header['runs'][ref]}` · {ada} run: `{header['runs'][ada]}`")
    lines.append("")
    lines.append(f"Images flipped by the one-pixel attack under both runs: **n = {header['n_both']}** "
                 f"(attacked by both: {header['n_attacked_both']}; flipped under {ref}: "
                 f"{header['n_flipped'][ref]} of {header['n_attacked'][ref]}, under {ada}: "
                 f"{header['n_flipped'][ada]} of {header['n_attacked'][ada]}).")
    lines.append("")
    titles = {
        "latent": "## d_E in each model's latent space (the paper's quantity)",
        "logit": "## The same distances between the logits, ‖head(z') − head(z(Y10))‖ (no reparametrisation of "
                 "the latent space changes them)",
        "spread": "## d_E divided by each model's latent spread, median ‖z(Y10) − z̄‖ over the images attacked "
                  f"under both ({ref} {fmt_sig(header['spread'][ref])}, {ada} {fmt_sig(header['spread'][ada])})",
    }
    for scale in SCALES:
        lines += [titles[scale], "", "| Perturb. | Training | Median | Mean | St. Err. | n | JS distance (base 2) |",
                  "|---|---|---|---|---|---|---|"]
        for pert in PERTURBATIONS:
            row = tables[scale][pert]
            for k, tr in enumerate((ref, ada)):
                s = row[tr]
                lines.append(f"| {PERTURBATION_LABELS[pert] if k == 0 else ''} | {METHOD_SHORT.get(tr, tr)} | "
                             f"{fmt_sig(s['median'])} | {fmt_sig(s['mean'])} | {fmt_pm(s['stderr'])} | {s['n']} | "
                             f"{fmt_sig(row['js_distance']) if k == 0 else ''} |")
        lines.append("")
    lines.append("Standard error = std/√n (population std, ddof = 0, as the authors' code). "
                 "JS distance = √(JS divergence), `scipy.spatial.distance.jensenshannon` with base 2 "
                 "(range 0–1), between the two runs' histograms on common bins (numpy's 'auto' rule "
                 "on the pooled sample), each normalised to sum 1.")
    if notes:
        lines += ["", "**Notes**", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"




@dataclass
class Example:
    """One test image shown in the church-window figures, with its row in each run (or None)."""

    test_index: int
    rows: dict[str, int | None]  # method -> row in that run's attack results
    status: str  # "flipped under both", "flipped under regular only", ...

    @property
    def flipped_under_both(self) -> bool:
        return self.status == "flipped under both"


def choose_examples(regular: AttackData, da: AttackData, k: int, seed: int = 0) -> list[Example]:
    """Up to ``k`` images, preferring those flipped under both runs, then under one, then any.

    Within the best tier, images are taken in turn from each true class (seeded order), so
    the examples show different classes as the paper's Figure 5.
    """
    rng = np.random.default_rng(seed)
    attacked = sorted(set(regular.test_index.tolist()) | set(da.test_index.tolist()))

    def status(t: int) -> tuple[int, str]:
        rr, rd = regular.row(t), da.row(t)
        sr = rr is not None and bool(regular.success[rr])
        sd = rd is not None and bool(da.success[rd])
        in_both = rr is not None and rd is not None
        if sr and sd:
            return 0, "flipped under both"
        if in_both and (sr or sd):
            return 1, f"flipped under {regular.method if sr else da.method} only"
        if in_both:
            return 2, "attacked under both, flipped under neither"
        if sr or sd:
            return 3, f"attacked under {regular.method if rr is not None else da.method} only (flipped there)"
        return 4, f"attacked under {regular.method if rr is not None else da.method} only (not flipped)"

    tiers: dict[int, list[tuple[int, str]]] = {}
    for t in attacked:
        rank, text = status(t)
        tiers.setdefault(rank, []).append((t, text))
    chosen: list[Example] = []
    for rank in sorted(tiers):
        members = tiers[rank]
        order = rng.permutation(len(members))
        by_class: dict[int, list[tuple[int, str]]] = {}
        for i in order:
            t, text = members[int(i)]
            data, row = (regular, regular.row(t)) if regular.row(t) is not None else (da, da.row(t))
            by_class.setdefault(data.true[row], []).append((t, text))
        queues = [by_class[c] for c in sorted(by_class)]
        while any(queues) and len(chosen) < k:
            for q in queues:
                if q and len(chosen) < k:
                    t, text = q.pop(0)
                    chosen.append(Example(int(t), {regular.method: regular.row(t), da.method: da.row(t)}, text))
        if len(chosen) >= k:
            break
    return chosen




# --------------------------------------------------------------------------------------
# the whole analysis of two runs
# --------------------------------------------------------------------------------------
def analyze_runs(regular: str | Path, adapted: str | Path, out: str | Path, *, n_isomap: int = 250,
                 examples: int = 4, seed: int = 0, preset: str = "quick", overwrite: bool = False,
                 device: str = "auto", figures: bool = True) -> dict[str, Any]:
    """Compare a regular and a domain-adapted run of one model: tables, figures and ``analysis.json``.

    Steps: distances on the images flipped under both runs (Tables 3/5); example images and
    their church windows; isomaps of a seeded test sample in both domains; Figures 3–6 and
    the rotating GIFs; ``analysis.json`` last.

    Args:
        regular: the run folder of the regularly trained model (with a finished attack).
        adapted: the run folder of the domain-adapted model: same model and dataset.
        out: the output folder.
        n_isomap: random test galaxies (each in Y10 and Y1) in the isomaps, capped at the
            test-set size [default: 250].
        examples: example images of Figure 5 (the first is Figure 3's) [default: 4].
        seed: seed of the isomap sample and the example choice [default: 0].
        preset: sets the GIFs' frames and resolution [default: "quick"].
        overwrite: redo a finished analysis in ``out`` [default: False].
        device: where the models run [default: "auto"].
        figures: draw the examples, isomaps and Figures 3–6 (False: the distance tables only,
            as a study does for all but its first seed) [default: True].

    Returns:
        The content of ``analysis.json``.
    """
    started = time.perf_counter()
    sizes = check_preset(preset, ANALYZE_PRESETS)
    _check_analyze_options(n_isomap, examples)
    out = Path(out)
    runs = _load_pair(Path(regular), Path(adapted))
    if (out / ANALYSIS_DONE).is_file() and not overwrite:
        raise file_error(out / ANALYSIS_DONE, "a finished analysis is already here; pass --overwrite to redo it")
    device_t = resolve_device(device)
    notes = _pair_notes(runs)
    skipped: list[dict[str, str]] = []
    with OutputLock(out, "analyze"), make_progress() as progress:
        lap = _StageClock(progress, progress.add_task("analyze", total=7))
        paired, tables = _distances(out, runs, notes, _heads(runs, device_t))
        suite = _attack_suite(out, runs, notes, figures)
        lap("distances")
        if figures:
            panels, sample_index, sample_stats, drawn = _draw(out, runs, paired, tables, sizes, device_t, examples,
                                                              n_isomap, seed, notes, skipped, lap)
        else:
            panels, sample_index, sample_stats, drawn = [], np.zeros(0, np.int64), {}, {}
            notes.append("figures, examples and isomaps were not drawn for this analysis (distance tables only)")
            lap.complete()
        result = _record(runs, paired, tables, panels, sample_index, sample_stats, drawn, notes)
        result.update(suite)
        result["skipped"] = skipped
        result.update({"seed": seed, "preset": preset, "n_isomap_requested": n_isomap, "examples_requested": examples,
                       "seconds": round(time.perf_counter() - started, 2), "seconds_per_stage": lap.timings})
        write_json(out / ANALYSIS_DONE, result)
    info(f"analysis written to {out} ({len(paired.test_index)} images flipped under both runs)")
    return result


def _check_analyze_options(n_isomap: int, examples: int) -> None:
    """Refuse a negative isomap sample or fewer than one example."""
    if n_isomap < 0:
        raise OptionError(f"--n-isomap must be 0 or more, got {n_isomap}")
    if examples < 1:
        raise OptionError(f"--examples must be 1 or more, got {examples}")


def _pair_notes(runs: dict[str, AttackData]) -> list[str]:
    """The first notes of the analysis: a reference run that is not regular, two adopted models."""
    notes: list[str] = []
    ref = next(iter(runs))
    if ref != REFERENCE_METHOD:
        notes.append(f"the reference run {runs[ref].run} has method {ref!r}, not {REFERENCE_METHOD!r}")
    if runs[ref].config.adopted and runs[ref].config.model != list(runs.values())[1].config.model:
        notes.append("two adopted TorchScript models (different files) are compared: " +
                     " and ".join(f"{d.config.model} ({m})" for m, d in runs.items()))
    return notes


class _StageClock:
    """Seconds per stage of the analysis: each call ends a stage and advances the progress bar."""

    def __init__(self, progress: Any, task: Any) -> None:
        self.progress, self.task = progress, task
        self.timings: dict[str, float] = {}
        self.last = time.perf_counter()

    def __call__(self, name: str) -> None:
        """End the stage ``name``: record its seconds and advance the bar by one."""
        now = time.perf_counter()
        self.timings[name] = round(now - self.last, 3)
        self.last = now
        self.progress.advance(self.task)

    def complete(self) -> None:
        """Fill the bar (the stages not run)."""
        self.progress.update(self.task, completed=7)


def _draw(out: Path, runs: dict[str, AttackData], paired: PairedDistances, tables: dict[str, Any],
          sizes: dict[str, Any], device: torch.device, examples: int, n_isomap: int, seed: int, notes: list[str],
          skipped: list[dict[str, str]], lap: _StageClock) -> tuple[list[dict[str, Any]], np.ndarray,
                                                                    dict[str, Any], dict[str, dict[str, Any]]]:
    """Steps 2-4: example panels with church windows, isomaps, Figures 3-6 and the GIFs.

    Returns (panels, isomap sample indices, sample statistics, drawn files); appends to
    ``notes`` and ``skipped`` when a model has no ``head(z)``."""
    ref = next(iter(runs))
    models = {m: load_model(d.run, device=device) for m, d in runs.items()}
    headless = [m for m, model in models.items() if not getattr(model, "has_head", True)]
    if headless:
        skipped.append({"part": "church windows (Figures 3 and 5) and the example panels",
                        "runs": ", ".join(headless), "why": NO_HEAD_NOTE})
        notes.append(f"church windows skipped ({', '.join(headless)}): {NO_HEAD_NOTE}")
        panels: list[dict[str, Any]] = []
    else:
        panels = _example_panels(runs, models, examples, seed, notes)
    lap("church_windows")
    y1_models = {m: load_model(d.run, device=device, domain="Y1") for m, d in runs.items()}
    isomaps, sample_index, sample_stats = _isomaps(runs[ref].config.data, models, panels, n_isomap, seed,
                                                   runs[ref].z_y10.shape[1], notes, y1_models)
    lap("isomaps")
    drawn = _figures(out, runs, paired, tables, panels, isomaps, sizes, lap,
                     no_window=NO_HEAD_NOTE if headless else None)
    return panels, sample_index, sample_stats, drawn


def _record(runs: dict[str, AttackData], paired: PairedDistances, tables: dict[str, Any], panels: list[dict[str, Any]],
            sample_index: np.ndarray, sample_stats: dict[str, Any], figures: dict[str, Any],
            notes: list[str]) -> dict[str, Any]:
    """The content of ``analysis.json`` (seed, preset and timings added by the caller)."""
    ref = next(iter(runs))
    return {
        "kind": "deepadv-analysis",
        "model": runs[ref].config.model, "methods": list(runs), "runs": {m: str(d.run) for m, d in runs.items()},
        "models": {m: d.config.model for m, d in runs.items()},
        "data": runs[ref].config.data, "classes": list(runs[ref].classes), "n_isomap": len(sample_index),
        "attack": {m: {"n_attacked": len(d.test_index), "n_flipped": int(d.success.sum()),
                       "flip_rate": float(np.mean(d.success)) if len(d.success) else float("nan"),
                       "latent_spread_Y10": paired.spread[m]} for m, d in runs.items()},
        "n_attacked_both": _attacked_both(runs),
        "n_flipped_both": len(paired.test_index),
        "flipped_both_test_index": paired.test_index.tolist(),
        "distances": tables,
        "js_base": JS_BASE,
        "stderr_definition": "std/sqrt(n), population std (ddof=0)",
        "scales": {"latent": "d_E in each model's latent space (the paper's quantity)",
                   "logit": "the same distances between the head's logits",
                   "spread": "d_E divided by each model's latent spread, the median ||z(Y10) - mean z(Y10)|| over "
                             "the images attacked under both runs (one image set for both models)"},
        "examples": [_example_json(p, runs[ref].classes) for p in panels],
        "isomap_sample": {"test_index": sample_index.tolist(), "n_neighbors": ISOMAP_NEIGHBORS,
                          "eigen_solver": "dense", **sample_stats},
        "church_window": {"extent": CHURCH_EXTENT, "step": CHURCH_STEP, "size": len(grid_coordinates())},
        "figures": figures,
        "notes": notes,
    }


def _load_pair(regular: Path, adapted: Path) -> dict[str, AttackData]:
    """Both runs' attack results keyed by method (reference first), checked to be comparable; the
    dataset must hold both domains (the analysis compares Y10 with Y1)."""
    config_r = read_run_config(regular)
    check_comparable(config_r, read_run_config(adapted), regular, adapted)
    if "Y1" not in config_r.domains:
        dataset = load_dataset(config_r.data)
        if not dataset.has_domain("Y1"):
            raise file_error(dataset.path, "has one domain only: the analysis compares the latent shift between "
                                           "two domains (Y10 -> Y1) with the one-pixel shift; import a second "
                                           "domain to analyse (evaluate, attack and robustness run on one)")
    data_r, data_a = load_attack(regular), load_attack(adapted)
    if data_r.z_y10.shape[1:] != data_a.z_y10.shape[1:] and len(data_r.z_y10) and len(data_a.z_y10):
        raise file_error(adapted, f"latent size {data_a.z_y10.shape[1]} differs from the regular run's "
                                  f"{data_r.z_y10.shape[1]}")
    return {data_r.method: data_r, data_a.method: data_a}


def _attacked_both(runs: dict[str, AttackData]) -> int:
    return len(attacked_under_both(*runs.values())[0])


@dataclass
class _Head:
    """A model's latent-to-logits map on numpy arrays, and its weights when it is linear."""

    model: torch.nn.Module

    def __call__(self, z: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            device = next(self.model.parameters()).device
            return self.model.head(torch.as_tensor(np.asarray(z, np.float32), device=device)).float().cpu().numpy()

    @property
    def linear(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(weight (K, d), bias (K,)) of a linear head, else None."""
        layer = getattr(self.model, "output", None)
        if not isinstance(layer, torch.nn.Linear) or layer.bias is None:
            return None
        return layer.weight.detach().cpu().double().numpy(), layer.bias.detach().cpu().double().numpy()


def _heads(runs: dict[str, AttackData], device: torch.device) -> dict[str, _Head | None]:
    """Each run's head (None for a model without ``head(z)``)."""
    heads: dict[str, _Head | None] = {}
    for method, data in runs.items():
        model = load_model(data.run, device=device)
        heads[method] = _Head(model) if getattr(model, "has_head", True) else None
    return heads


def _distances(out: Path, runs: dict[str, AttackData], notes: list[str],
               heads: dict[str, _Head | None] | None = None) -> tuple[PairedDistances, dict[str, Any]]:
    """Step 1: d_E on the images flipped under both runs; writes the distance files."""
    heads = heads or {}
    paired = paired_distances(runs, heads)
    headless = [m for m in runs if heads.get(m) is None]
    if headless:
        notes.append(f"no head(z) for {', '.join(headless)}: the logit-space distances and the distances to the "
                     "decision boundary are not measured (NaN)")
    tables = distance_tables(paired)
    n_both = len(paired.test_index)
    if n_both == 0:
        notes.append("no image was flipped under both runs: the distance tables hold n = 0 and NaN, "
                     "and Figure 6 has no histograms")
    elif n_both < 10:
        notes.append(f"only {n_both} images were flipped under both runs: medians, means and the "
                     "JS distance are very uncertain")
    ref = next(iter(runs.values()))
    header = {"model": ref.config.model, "data": ref.config.data, "methods": list(runs),
              "runs": {m: str(d.run) for m, d in runs.items()}, "n_both": n_both,
              "n_attacked_both": _attacked_both(runs),
              "n_attacked": {m: len(d.test_index) for m, d in runs.items()},
              "n_flipped": {m: int(d.success.sum()) for m, d in runs.items()}, "spread": paired.spread}
    _write_distance_files(out, paired, tables, header, runs, notes)
    _write_attacked_file(out, runs, heads)
    return paired, tables


def _write_attacked_file(out: Path, runs: dict[str, AttackData], heads: dict[str, _Head | None]) -> None:
    """``attacked_per_image.csv``: every image attacked under both runs, whether each flipped it and
    the latent distance from its z(Y10) to its true class's decision boundary (NaN without a linear head)."""
    index, *rows = attacked_under_both(*runs.values())
    columns: dict[str, Any] = {"test_index": index}
    for (method, data), r in zip(runs.items(), rows):
        head = heads.get(method)
        linear = head.linear if head is not None else None
        columns[f"flipped_{method}"] = data.success[r]
        columns[f"boundary_{method}"] = (boundary_distances(data.z_y10[r], np.asarray(data.true)[r], *linear)
                                         if linear is not None and len(r) else np.full(len(r), np.nan))
    write_csv(out / "attacked_per_image.csv",
              [{k: (bool(v[i]) if k.startswith("flipped_") else int(v[i]) if k == "test_index" else float(v[i]))
                for k, v in columns.items()} for i in range(len(index))], list(columns))


def _attack_suite(out: Path, runs: dict[str, AttackData], notes: list[str], figures: bool) -> dict[str, Any]:
    """The attack suite's comparison when both runs ran more than DE: success against queries
    (and the queries each search needs to reach DE's success rate) and, with the exhaustive
    search, where the dangerous pixels lie (``dangerous_pixels.csv``)."""
    found = {m: [s for s in search_names() if (attack_dir(d.run, s) / "summary.json").is_file()]
             for m, d in runs.items()}
    common = [s for s in search_names() if all(s in v for v in found.values())]
    result: dict[str, Any] = {}
    if len(common) > 1:
        curves, table = {}, {}
        for method, data in runs.items():
            de_rate = read_json(attack_dir(data.run, "de") / "summary.json").get("success_rate") or 0.0
            curves[method], table[method] = {}, {}
            for search in common:
                times, flipped = _queries_and_flips(attack_dir(data.run, search))
                t, fraction = success_curve(times, flipped)
                budget = float(times.max()) if len(times) else 1.0
                curves[method][search] = {"t": t.tolist(), "fraction": fraction.tolist(), "budget": budget}
                table[method][search] = {"success_rate": float(flipped.mean()) if len(flipped) else None,
                                         "queries_to_de_rate": queries_to_reach(times, flipped, de_rate),
                                         "budget": budget, "de_rate": de_rate}
        result["success_against_queries"] = table
        if figures:
            save_success_curves(out / "fig_success_queries.png", curves)
    if "exhaustive" in common:
        result["dangerous_pixels"] = _dangerous_pixels(out, runs, notes, figures)
    return result


def _queries_and_flips(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Per attacked image: queries until the flip (or spent in vain), and whether it flipped."""
    with open(folder / "results.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return (np.array([float(r["evaluations"]) for r in rows]), np.array([r["success"] == "True" for r in rows]))


def _dangerous_pixels(out: Path, runs: dict[str, AttackData], notes: list[str], figures: bool) -> dict[str, Any]:
    """Flip maps in units of each galaxy's Petrosian radius about its light centroid."""
    ref = next(iter(runs.values()))
    dataset = load_dataset(ref.config.data)
    catalog = dataset.catalog("test")
    if not catalog or "rpetro_arcsec" not in catalog[0]:
        notes.append("no catalogue with Petrosian radii: the dangerous pixels are not located")
        return {}
    raw = dataset.images("Y10", "test", stretched=False)
    shares, stacks, rows = {}, {}, []
    for method, data in runs.items():
        with np.load(attack_dir(data.run, "exhaustive") / "flipmap.npz", allow_pickle=False) as npz:
            index, flips = np.asarray(npz["test_index"]), np.asarray(npz["flips"]).any(axis=1)
        centres = np.array([light_centroid(np.asarray(raw[int(t)][R_BAND])) for t in index]).reshape(-1, 2)
        scales = np.array([float(catalog[int(t)]["rpetro_arcsec"]) / PIXEL_SCALE for t in index])
        shares[method] = dangerous_pixel_shares(flips, centres, scales)
        stacks[method] = stacked_flip_map(flips, centres, scales, extent=DANGER_EXTENT)
        rows += [{"method": method, "region": k, "share_of_flipping_positions": v,
                  "share_of_area": shares[method]["area_shares"][k], "n_positions": shares[method]["n_positions"]}
                 for k, v in shares[method]["shares"].items()]
    write_csv(out / "dangerous_pixels.csv", rows, ["method", "region", "share_of_flipping_positions",
                                                   "share_of_area", "n_positions"])
    if figures:
        save_dangerous_pixels(out / "fig_dangerous_pixels.png", stacks, DANGER_EXTENT, shares)
    return shares


def _example_panels(runs: dict[str, AttackData], models: dict[str, torch.nn.Module], examples: int, seed: int,
                    notes: list[str]) -> list[dict[str, Any]]:
    """Step 2: the example images and, per run, their triplet and church window."""
    data_r, data_a = runs.values()
    chosen = choose_examples(data_r, data_a, examples, seed)
    if chosen and not chosen[0].flipped_under_both:
        notes.append(f"no image was flipped under both runs; the example figures show the best available "
                     f"image(s): test image {chosen[0].test_index} ({chosen[0].status})")
    elif len(chosen) < examples:
        notes.append(f"only {len(chosen)} attacked image(s) available for {examples} requested examples")
    if any(not e.flipped_under_both for e in chosen) and chosen and chosen[0].flipped_under_both:
        notes.append("fewer images flipped under both runs than examples requested; the extra examples "
                     "are the best available images (status given in analysis.json)")
    return [{"example": ex, "runs": {m: _windowed_triplet(runs[m], models[m], ex.rows[m]) for m in runs}}
            for ex in chosen]


def _figures(out: Path, runs: dict[str, AttackData], paired: PairedDistances, tables: dict[str, Any],
             panels: list[dict[str, Any]], isomaps: dict[str, IsomapEmbedding | None], sizes: dict[str, Any],
             lap: Any, no_window: str | None = None) -> dict[str, dict[str, Any]]:
    """Step 4: Figures 3–6 and the rotating isomap GIFs; returns each file's size and resolution.
    With ``no_window`` (a model without ``head(z)``) Figure 3 shows why in place of the church
    windows and Figure 5 is not drawn."""
    figures: dict[str, dict[str, Any]] = {}
    classes = next(iter(runs.values())).classes
    first = panels[0]["example"] if panels else None
    note = None if (first is None or first.flipped_under_both) else \
        f"No image was flipped under both runs; shown: test image {first.test_index} ({first.status})."
    figures["fig3"] = _png_info(latent_plots.save_church_isomap_figure(
        out / "fig3_church_isomap.png", panels[0] if panels else None, isomaps, example_number=0, note=note,
        classes=classes, no_window="church window skipped: the model has no head(z)" if no_window else None))
    if no_window is None:
        figures["fig5"] = _png_info(latent_plots.save_church_windows_figure(out / "fig5_church_windows.png", panels,
                                                                            classes=classes))
    lap("fig3_fig5")
    figures["fig4"] = _png_info(latent_plots.save_isomap3d_figure(out / "fig4_isomap3d.png", isomaps,
                                                                  example_number=0, classes=classes))
    lap("fig4")
    for method in runs:
        path = latent_plots.save_isomap_gif(out / f"isomap3d_{method}.gif", isomaps[method],
                                            title=METHOD_LABELS.get(method, method), frames=sizes["gif_frames"],
                                            dpi=sizes["gif_dpi"], fps=sizes["gif_fps"], example_number=0)
        figures[f"gif_{method}"] = _png_info(path)
    lap("gifs")
    figures["fig6"] = _png_info(latent_plots.save_distances_figure(out / "fig6_distances.png", paired, tables))
    lap("fig6")
    return figures


def _triplet(data: AttackData, model: torch.nn.Module, row: int) -> dict[str, Any]:
    z = {"z_y10": data.z_y10[row], "z_y1": data.z_y1[row], "z_1p": data.z_1p[row]}
    preds = classify_latents(model, np.stack([z["z_y10"], z["z_y1"], z["z_1p"]]))
    return {**z, "pred_y10": int(preds[0]), "pred_y1": int(preds[1]), "pred_1p": int(preds[2]),
            "true": data.true[row], "target": data.target[row], "success": bool(data.success[row]),
            "iterations": data.iterations[row], "galaxy_id": data.galaxy_id[row]}


def _png_info(path: Path) -> dict[str, Any]:
    with Image.open(path) as im:
        dpi = im.info.get("dpi", (None, None))[0]
        frames = getattr(im, "n_frames", 1)
        return {"file": path.name, "width_px": im.width, "height_px": im.height,
                "dpi": round(float(dpi)) if dpi else None, "frames": int(frames),
                "bytes": path.stat().st_size}


def _windowed_triplet(data: AttackData, model: torch.nn.Module, row: int | None) -> dict[str, Any] | None:
    """A run's triplet of one image with its church window (None when the run did not attack it)."""
    if row is None:
        return None
    trip = _triplet(data, model, row)
    trip["window"] = church_window_grid(model.head, trip["z_y10"], trip["z_y1"], trip["z_1p"])
    trip["classes"] = data.classes
    return trip


def _isomaps(data_path: str, models: dict[str, torch.nn.Module], panels: list[dict[str, Any]], n_isomap: int,
             seed: int, latent_dim: int, notes: list[str],
             y1_models: dict[str, torch.nn.Module] | None = None) -> tuple[dict[str, IsomapEmbedding | None],
                                                                          np.ndarray, dict[str, Any]]:
    """Step 3: 3-D isomaps (first two axes = the 2-D isomap) of each run: a seeded test sample in Y10
    and Y1 (Y1 through each run's Y1 model: an AdaBN run's adapted statistics), plus the example triplets."""
    y1_models = y1_models or {}
    dataset = load_dataset(data_path)
    if not dataset.has_domain("Y1"):
        raise file_error(dataset.path, "dataset has no Y1 images; the isomaps need both domains")
    n_test = len(dataset.labels("test"))
    if n_test < n_isomap:
        notes.append(f"the test set has only {n_test} images: the isomaps use {n_test}, not {n_isomap}")
    sample_index = isomap_sample_indices(n_test, n_isomap, seed)
    labels = dataset.labels("test")[sample_index]
    images = {d: dataset.model_input(np.asarray(dataset.images(d, "test", stretched=False)[sample_index]), d)
              for d in ("Y10", "Y1")}
    n_classes = dataset.n_classes
    isomaps: dict[str, IsomapEmbedding | None] = {}
    stats: dict[str, Any] = {}
    for method, model in models.items():
        y10 = forward_batches(model, images["Y10"], batch_size=EMBED_BATCH)
        y1 = forward_batches(y1_models.get(method, model), images["Y1"], batch_size=EMBED_BATCH)
        z10, p10, z1, p1 = y10.latents, y10.predicted, y1.latents, y1.predicted
        if not len(sample_index):
            z10 = z1 = np.zeros((0, latent_dim), np.float32)
        triplets = [p["runs"][method] for p in panels]
        total = len(z10) + len(z1) + 3 * sum(t is not None for t in triplets)
        if total >= 5:
            isomaps[method] = isomap_embedding(z10, z1, p10, p1, triplets, n_components=3)
        else:
            isomaps[method] = None
            notes.append(f"too few latents ({total}) for an isomap of the {method} run")
        stats[method] = {**_sample_stats(z10, p10, labels, "Y10", n_classes),
                         **_sample_stats(z1, p1, labels, "Y1", n_classes)}
    return isomaps, sample_index, stats


def _sample_stats(z: np.ndarray, pred: np.ndarray, labels: np.ndarray, domain: str,
                  n_classes: int = len(CLASSES)) -> dict[str, Any]:
    n = len(pred)
    if n == 0:
        return {f"accuracy_{domain}": float("nan"), f"predicted_fractions_{domain}": [float("nan")] * n_classes,
                f"median_latent_norm_{domain}": float("nan")}
    return {f"accuracy_{domain}": float(np.mean(pred == labels)),
            f"predicted_fractions_{domain}": (np.bincount(pred, minlength=n_classes) / n).tolist(),
            f"median_latent_norm_{domain}": float(np.median(np.linalg.norm(z, axis=1)))}


def _example_json(panel: dict[str, Any], classes: Sequence[str] = CLASSES) -> dict[str, Any]:
    ex: Example = panel["example"]
    runs = {}
    for method, t in panel["runs"].items():
        if t is None:
            runs[method] = None
            continue
        w: ChurchWindow = t["window"]
        runs[method] = {
            "true": classes[t["true"]], "target": classes[t["target"]] if t["target"] is not None else None,
            "success": t["success"], "iterations": t["iterations"],
            "predicted": {"Y10": classes[t["pred_y10"]], "Y1": classes[t["pred_y1"]], "1P": classes[t["pred_1p"]]},
            "d_E": {"Y10-Y1": float(euclidean_distances(t["z_y10"][None], t["z_y1"][None])[0]),
                    "Y10-1P": float(euclidean_distances(t["z_y10"][None], t["z_1p"][None])[0])},
            "window_fractions": dict(zip(classes, w.fractions(len(classes)))),
        }
    return {"test_index": ex.test_index, "status": ex.status, "runs": runs}


def _write_distance_files(out: Path, paired: PairedDistances, tables: dict[str, Any], header: dict[str, Any],
                          runs: dict[str, AttackData], notes: list[str]) -> None:
    ref, ada = paired.methods
    classes = runs[ref].classes
    rows = []
    for scale in SCALES:
        for pert in PERTURBATIONS:
            for method in paired.methods:
                s = tables[scale][pert][method]
                rows.append({"perturbation": pert, "method": method, "scale": scale, "n": s["n"],
                             "median": s["median"], "mean": s["mean"], "std": s["std"], "stderr": s["stderr"],
                             "js_distance_base2": tables[scale][pert]["js_distance"]})
    write_csv(out / "distances.csv", rows, ["perturbation", "method", "scale", "n", "median", "mean", "std",
                                            "stderr", "js_distance_base2"])
    per_image = []
    for k, t in enumerate(paired.test_index):
        rr, ra = int(paired.rows[ref][k]), int(paired.rows[ada][k])
        row = {"test_index": int(t), "galaxy_id": runs[ref].galaxy_id[rr], "true": classes[runs[ref].true[rr]],
               f"target_{ref}": _name(runs[ref].target[rr], classes), f"target_{ada}": _name(runs[ada].target[ra],
                                                                                          classes),
               f"iterations_{ref}": runs[ref].iterations[rr], f"iterations_{ada}": runs[ada].iterations[ra]}
        for method in paired.methods:
            for pert in PERTURBATIONS:
                key = pert.lower().replace("-", "_")
                row[f"d_{key}_{method}"] = float(paired.distances[method][pert][k])
                row[f"d_{key}_{method}_logit"] = float(paired.logit[method][pert][k])
        per_image.append(row)
    fields = ["test_index", "galaxy_id", "true", f"target_{ref}", f"target_{ada}", f"iterations_{ref}",
              f"iterations_{ada}"] + [f"d_{p.lower().replace('-', '_')}_{m}{suf}" for suf in ("", "_logit")
                                      for m in paired.methods for p in PERTURBATIONS]
    write_csv(out / "distances_per_image.csv", per_image, fields)
    write_text(out / "distances.md", distances_markdown(tables, header, notes))


def _name(k: int | None, classes: Sequence[str] = CLASSES) -> str:
    return classes[k] if k is not None else ""


def analyze_single_window(run: str | Path, test_index: int, *, device: str = "auto") -> dict[str, Any]:
    """The church window of one attacked image of one run (for ``deepadv plot church-window``).

    Returns:
        The image's triplet (latents, predictions, true class, target) with its ``window``
        (:class:`~deepadversaries.analysis.latent.ChurchWindow`), ``test_index``, ``method`` and ``model``.
    """
    data = load_attack(run)
    row = data.row(int(test_index))
    if row is None:
        avail = data.test_index.tolist()
        shown = ", ".join(str(i) for i in avail[:20]) + (" ..." if len(avail) > 20 else "")
        raise file_error(attack_dir(run) / "results.csv",
                         f"test image {test_index} was not attacked in this run; attacked: {shown or 'none'}")
    model = load_model(run, device=resolve_device(device))
    if not getattr(model, "has_head", True):
        raise OptionError(f"{run}: no church window: {NO_HEAD_NOTE}")
    trip = _windowed_triplet(data, model, row)
    trip.update(test_index=int(test_index), method=data.config.method, model=data.config.model)
    return trip
